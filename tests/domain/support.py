"""Given events / when command / then events or error: the vocabulary of the decider tests.

A history is a sequence of events, each by the plan's owner unless given as `(actor, event)`.
`given(*history)` folds it into a plan; `when(plan, command, actor)` asks the decider.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest

from domain.action_items import ActionItemAdded
from domain.base import Context, Event, Recorded
from domain.decider import PlanCommand, decide, evolve, fold
from domain.errors import DomainError, MapstreamError
from domain.members import MemberAdded
from domain.milestones import MilestoneAdded
from domain.model import Plan, Side
from domain.plans import PlanClosed, PlanCreated
from domain.stakeholders import StakeholderAdded

NOW = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
PLAN_ID = "plan-1"
DUE = date(2025, 4, 1)

OWNER = "olivia@seller.example"  # created the plan: the seller side's owner
SELLER = "sam@seller.example"  # seller-side editor
EDITOR = "bob@buyer.example"  # buyer-side editor
COMMENTER = "carla@buyer.example"  # buyer-side commenter
VIEWER = "victor@buyer.example"  # buyer-side viewer
STRANGER = "eve@elsewhere.example"  # not a member

History = Event | tuple[str, Event]

CREATED: tuple[Event, ...] = (
    PlanCreated(title="Acme evaluates Mapstream", buyer_org="Acme", seller_org="Mapstream"),
    MemberAdded(email=OWNER, side="seller", role="owner", name="Olivia"),
)
TEAM: tuple[Event, ...] = (
    MemberAdded(email=SELLER, side="seller", role="editor", name="Sam"),
    MemberAdded(email=EDITOR, side="buyer", role="editor", name="Bob"),
    MemberAdded(email=COMMENTER, side="buyer", role="commenter", name="Carla"),
    MemberAdded(email=VIEWER, side="buyer", role="viewer", name="Victor"),
)
PEOPLE: tuple[Event, ...] = (
    StakeholderAdded(
        id="ana", name="Ana Ruiz", side="buyer", persona="champion", email="ana@buyer.example"
    ),
    StakeholderAdded(
        id="sid",
        name="Sid Park",
        side="seller",
        persona="account executive",
        email="sid@seller.example",
    ),
)
# A draft plan with its team (owner, seller editor, buyer editor, commenter, viewer) and two
# stakeholders: Ana on the buyer side, Sid on the seller side.
PLAN: tuple[Event, ...] = (*CREATED, *TEAM, *PEOPLE)


def milestone(item_id: str, **fields: Any) -> MilestoneAdded:
    return MilestoneAdded(id=item_id, title=f"Milestone {item_id}", **fields)


def action_item(item_id: str, milestone_id: str = "m1", **fields: Any) -> ActionItemAdded:
    return ActionItemAdded(id=item_id, milestone_id=milestone_id, title=f"Do {item_id}", **fields)


def internal_item(item_id: str, side: Side = "seller", milestone_id: str = "m1") -> ActionItemAdded:
    """An action item only `side` may see."""
    return action_item(item_id, milestone_id, visibility="internal", internal_to=side)


def closed(outcome: str = "won") -> PlanClosed:
    return PlanClosed(outcome="won" if outcome == "won" else "lost", reason="signed")


def records(history: tuple[History, ...], start: int = 1) -> list[Recorded]:
    out = []
    for version, entry in enumerate(history, start=start):
        actor, event = entry if isinstance(entry, tuple) else (OWNER, entry)
        out.append(Recorded(version=version, actor=actor, at=NOW, event=event))
    return out


def given(*history: History) -> Plan:
    """The plan after `history` (an empty history is a plan not created yet)."""
    return fold(records(history), plan_id=PLAN_ID)


def context(plan: Plan, actor: str = OWNER) -> Context:
    return Context(actor=actor, now=NOW, member=plan.member(actor))


def when(plan: Plan, command: PlanCommand, actor: str = OWNER) -> list[Event]:
    """The events `actor` causes with `command` (an error propagates)."""
    return decide(plan, command, context(plan, actor))


def apply(plan: Plan, command: PlanCommand, actor: str = OWNER) -> Plan:
    """The plan after `command` is decided and its events are recorded."""
    for event in when(plan, command, actor):
        plan = evolve(plan, Recorded(version=plan.version + 1, actor=actor, at=NOW, event=event))
    return plan


def refusal(plan: Plan, command: PlanCommand, actor: str = OWNER) -> MapstreamError:
    """The error the decider answers `command` with (the test fails if it accepts it)."""
    with pytest.raises(MapstreamError) as info:
        when(plan, command, actor)
    return info.value


def broken_rule(plan: Plan, command: PlanCommand, actor: str = OWNER) -> str:
    """The `rule` of the DomainError the decider answers `command` with."""
    error = refusal(plan, command, actor)
    assert isinstance(error, DomainError), f"expected a rule violation, got {error!r}"
    return error.rule
