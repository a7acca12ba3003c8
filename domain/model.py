"""The state of one mutual action plan: the fold of its events.

Every struct is frozen; `evolve` returns new values with `msgspec.structs.replace`.
Collections are dicts keyed by item id (insertion-ordered, JSON-friendly); an evolve step
copies the one dict it changes and shares the rest.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

import msgspec

from domain.errors import NotFound

Side = Literal["buyer", "seller"]
Role = Literal["owner", "editor", "commenter", "viewer"]
Visibility = Literal["shared", "internal"]
PlanKind = Literal["sales", "onboarding"]
PlanStatus = Literal["draft", "active", "closed_won", "closed_lost"]
ItemStatus = Literal["not_started", "in_progress", "blocked", "done"]
DeadlineKind = Literal["hard", "soft"]
Influence = Literal["decision_maker", "influencer", "approver"]
Level = Literal["low", "medium", "high"]
RiskStatus = Literal["open", "closed"]
UpdateStatus = Literal["on_track", "at_risk", "off_track"]

SIDES: tuple[Side, ...] = ("buyer", "seller")
ROLES: tuple[Role, ...] = ("owner", "editor", "commenter", "viewer")


class Member(msgspec.Struct, frozen=True):
    """A person with access to the plan (membership is itself part of the stream)."""

    email: str
    side: Side
    role: Role
    name: str = ""
    active: bool = True


class CompellingEvent(msgspec.Struct, frozen=True):
    name: str
    date: date


class Stakeholder(msgspec.Struct, frozen=True):
    id: str
    name: str
    side: Side
    title: str = ""
    persona: str = ""
    influence: Influence | None = None
    email: str = ""
    phone: str = ""
    calendar_link: str = ""
    active: bool = True


class Objective(msgspec.Struct, frozen=True):
    id: str
    title: str
    metric: str = ""
    baseline: str = ""
    target: str = ""
    by: date | None = None
    projected_outcome: str = ""


class Slip(msgspec.Struct, frozen=True):
    """One reschedule: history that auditors and forecasts need, never an overwrite."""

    from_due: date | None
    to_due: date
    reason: str
    contingency: str = ""
    at: datetime | None = None


class Milestone(msgspec.Struct, frozen=True):
    id: str
    title: str
    outcome: str = ""
    owner: str | None = None
    backup: str | None = None
    approver: str | None = None
    due: date | None = None
    deadline: DeadlineKind = "soft"
    status: ItemStatus = "not_started"
    completed_at: datetime | None = None
    slips: tuple[Slip, ...] = ()


class ActionItem(msgspec.Struct, frozen=True):
    id: str
    milestone_id: str
    title: str
    owner: str | None = None
    due: date | None = None
    status: ItemStatus = "not_started"
    links: tuple[str, ...] = ()
    notes: str = ""
    visibility: Visibility = "shared"
    internal_to: Side | None = None
    completed_at: datetime | None = None
    slips: tuple[Slip, ...] = ()


class Dependency(msgspec.Struct, frozen=True):
    """`to_id` waits on `from_id`: the prerequisite must be done first."""

    id: str
    from_id: str
    to_id: str
    critical: bool = False
    contingency: str = ""
    escalation_contact: str | None = None


class Risk(msgspec.Struct, frozen=True):
    id: str
    title: str
    likelihood: Level = "medium"
    impact: Level = "medium"
    mitigation: str = ""
    owner: str | None = None
    status: RiskStatus = "open"


class Cadence(msgspec.Struct, frozen=True):
    kind: str
    channel: str = ""
    reporter: str | None = None
    next_review: date | None = None


class Comment(msgspec.Struct, frozen=True):
    id: str
    item_id: str
    text: str
    author: str
    at: datetime
    mentions: tuple[str, ...] = ()


class StatusUpdate(msgspec.Struct, frozen=True):
    """What a meeting concluded: posted after each meeting, kept in order."""

    id: str
    status: UpdateStatus
    progress: str = ""
    blockers: str = ""
    next_actions: str = ""
    owner: str | None = None
    at: datetime | None = None
    author: str = ""


class Endorsement(msgspec.Struct, frozen=True):
    """A buyer decision maker's (or champion's) soft commitment to the plan as of `version`."""

    by: str
    version: int
    at: datetime
    stakeholder: str = ""


class ParentLink(msgspec.Struct, frozen=True):
    """The parent plan's event a fork starts from: its version and stored hash."""

    plan_id: str
    version: int
    hash: str


class ChildLink(msgspec.Struct, frozen=True):
    """A plan forked from this one; `version` is this plan's event that records the fork."""

    plan_id: str
    version: int
    title: str
    kind: PlanKind
    by: str
    at: datetime


class Plan(msgspec.Struct, frozen=True):
    """A plan at one version. `Plan()` with `version == 0` is the state before creation."""

    id: str = ""
    version: int = 0
    title: str = ""
    buyer_org: str = ""
    seller_org: str = ""
    kind: PlanKind = "sales"
    status: PlanStatus = "draft"
    value_statement: str = ""
    compelling_event: CompellingEvent | None = None
    created_by: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    closed_at: datetime | None = None
    close_reason: str = ""
    members: dict[str, Member] = {}
    stakeholders: dict[str, Stakeholder] = {}
    objectives: dict[str, Objective] = {}
    milestones: dict[str, Milestone] = {}
    milestone_order: tuple[str, ...] = ()
    action_items: dict[str, ActionItem] = {}
    dependencies: dict[str, Dependency] = {}
    risks: dict[str, Risk] = {}
    cadence: Cadence | None = None
    comments: dict[str, Comment] = {}
    status_updates: tuple[StatusUpdate, ...] = ()
    endorsements: tuple[Endorsement, ...] = ()
    tags: dict[str, int] = {}
    parent: ParentLink | None = None
    children: tuple[ChildLink, ...] = ()
    last_activity: dict[str, datetime] = {}

    @property
    def exists(self) -> bool:
        return self.version > 0

    @property
    def is_closed(self) -> bool:
        return self.status in ("closed_won", "closed_lost")

    def member(self, email: str) -> Member | None:
        m = self.members.get(email)
        return m if m is not None and m.active else None

    def milestone(self, item_id: str) -> Milestone:
        m = self.milestones.get(item_id)
        if m is None:
            raise NotFound(f"no milestone {item_id!r} in this plan", item_id=item_id)
        return m

    def action_item(self, item_id: str) -> ActionItem:
        a = self.action_items.get(item_id)
        if a is None:
            raise NotFound(f"no action item {item_id!r} in this plan", item_id=item_id)
        return a

    def objective(self, item_id: str) -> Objective:
        o = self.objectives.get(item_id)
        if o is None:
            raise NotFound(f"no objective {item_id!r} in this plan", item_id=item_id)
        return o

    def risk(self, item_id: str) -> Risk:
        r = self.risks.get(item_id)
        if r is None:
            raise NotFound(f"no risk {item_id!r} in this plan", item_id=item_id)
        return r

    def stakeholder(self, item_id: str) -> Stakeholder:
        s = self.stakeholders.get(item_id)
        if s is None or not s.active:
            raise NotFound(f"no stakeholder {item_id!r} in this plan", item_id=item_id)
        return s

    def has_item(self, item_id: str) -> bool:
        return any(
            item_id in coll
            for coll in (
                self.milestones,
                self.action_items,
                self.stakeholders,
                self.objectives,
                self.risks,
                self.dependencies,
                self.comments,
            )
        ) or any(u.id == item_id for u in self.status_updates)

    def item_title(self, item_id: str) -> str:
        for coll in (self.milestones, self.action_items, self.objectives, self.risks):
            item = coll.get(item_id)
            if item is not None:
                return str(item.title)
        s = self.stakeholders.get(item_id)
        if s is not None:
            return s.name
        return item_id
