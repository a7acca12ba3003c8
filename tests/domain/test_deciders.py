"""The plan decider, command by command: given events / when command / then events or error."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pytest

from domain.action_items import (
    ActionItemAdded,
    ActionItemRescheduled,
    ActionItemStatusChanged,
    ActionItemUpdated,
    AddActionItem,
    RescheduleActionItem,
    SetActionItemStatus,
    UpdateActionItem,
)
from domain.base import Context, Event
from domain.cadence import CadenceSet, SetCadence
from domain.comments import AddComment, CommentAdded
from domain.decider import ALL_COMMAND_TYPES, COMMAND_TYPES, PlanCommand, decide
from domain.dependencies import AddDependency, DependencyAdded, DependencyRemoved, RemoveDependency
from domain.endorsements import EndorsePlan, PlanEndorsed
from domain.errors import DomainError, Forbidden, Malformed, NotFound
from domain.forks import ChildPlanForked, ForkPlan, RecordFork
from domain.members import (
    AddMember,
    ChangeMemberRole,
    JoinPlan,
    MemberAdded,
    MemberRevoked,
    MemberRoleChanged,
    RevokeMember,
)
from domain.milestones import (
    AddMilestone,
    CompleteMilestone,
    MilestoneAdded,
    MilestoneCompleted,
    MilestoneRescheduled,
    MilestonesReordered,
    MilestoneUpdated,
    ReorderMilestones,
    RescheduleMilestone,
    UpdateMilestone,
)
from domain.model import Cadence, CompellingEvent, Plan, Slip
from domain.objectives import AddObjective, ObjectiveAdded, ObjectiveUpdated, UpdateObjective
from domain.plans import (
    ActivatePlan,
    ClosePlan,
    CompellingEventSet,
    CreatePlan,
    PlanActivated,
    PlanClosed,
    PlanCreated,
    PlanForked,
    PlanUpdated,
    SetCompellingEvent,
    UpdatePlan,
)
from domain.risks import AddRisk, RiskAdded, RiskUpdated, UpdateRisk
from domain.stakeholders import (
    AddStakeholder,
    RemoveStakeholder,
    StakeholderAdded,
    StakeholderRemoved,
    StakeholderUpdated,
    UpdateStakeholder,
)
from domain.status_updates import PostStatusUpdate, StatusUpdatePosted
from domain.versions import TagVersion, VersionTagged
from domain.visibility import audience, view_for
from tests.domain.support import (
    COMMENTER,
    DUE,
    EDITOR,
    NOW,
    OWNER,
    PLAN,
    PLAN_ID,
    SELLER,
    STRANGER,
    VIEWER,
    History,
    action_item,
    apply,
    broken_rule,
    closed,
    given,
    internal_item,
    milestone,
    refusal,
    when,
)

LATER = date(2025, 4, 15)
HASH = "ab" * 32
# Bob, the buyer-side editor, is also a stakeholder who decides: he may endorse the plan.
BOB = StakeholderAdded(
    id="bob", name="Bob Buyer", side="buyer", influence="decision_maker", email=EDITOR
)
OBJECTIVE = ObjectiveAdded(id="o1", title="Faster forecasts", metric="forecast cycle")
RISK = RiskAdded(id="r1", title="CISO on leave", owner="ana")


@dataclass(frozen=True)
class Case:
    """One command against a history, by an actor, with the events it must cause."""

    name: str
    history: tuple[History, ...]
    command: PlanCommand
    then: list[Event] = field(default_factory=list)
    actor: str = OWNER

    @property
    def tag(self) -> str:
        return str(type(self.command).__struct_config__.tag)


HAPPY_PATHS = [
    Case(
        "create_plan records the plan and makes its creator owner on their side",
        (),
        CreatePlan(
            title=" Acme evaluates Mapstream ",
            buyer_org="Acme",
            seller_org="Mapstream",
            side="seller",
            name="Olivia",
        ),
        [
            PlanCreated(title="Acme evaluates Mapstream", buyer_org="Acme", seller_org="Mapstream"),
            MemberAdded(email=OWNER, side="seller", role="owner", name="Olivia"),
        ],
    ),
    Case(
        "update_plan records the changed fields and what they replace",
        PLAN,
        UpdatePlan(title="Acme rolls out Mapstream", buyer_org="Acme"),
        [
            PlanUpdated(
                changes={"title": "Acme rolls out Mapstream"},
                previous={"title": "Acme evaluates Mapstream"},
            )
        ],
    ),
    Case(
        "set_compelling_event names the date the plan works back from",
        PLAN,
        SetCompellingEvent(name="Go-live", date=date(2025, 6, 30)),
        [CompellingEventSet(name="Go-live", date=date(2025, 6, 30), previous=None)],
    ),
    Case("activate_plan moves a draft to active", PLAN, ActivatePlan(), [PlanActivated()]),
    Case(
        "close_plan records the outcome and the reason",
        PLAN,
        ClosePlan(outcome="lost", reason=" budget frozen "),
        [PlanClosed(outcome="lost", reason="budget frozen")],
    ),
    Case(
        "add_member gives a normalised email access on a side with a role",
        PLAN,
        AddMember(email=" Dana@Buyer.example ", side="buyer", role="commenter", name=" Dana "),
        [MemberAdded(email="dana@buyer.example", side="buyer", role="commenter", name="Dana")],
    ),
    Case(
        "join_plan adds whoever accepted an invite, with the invite's side and role",
        PLAN,
        JoinPlan(side="buyer", role="commenter", invite="inv-1", name=" Dana "),
        [
            MemberAdded(
                email="dana@buyer.example",
                side="buyer",
                role="commenter",
                name="Dana",
                invite="inv-1",
            )
        ],
        actor="dana@buyer.example",
    ),
    Case(
        "change_member_role records the new and the previous role",
        PLAN,
        ChangeMemberRole(email=EDITOR, role="owner"),
        [MemberRoleChanged(email=EDITOR, role="owner", previous="editor")],
    ),
    Case(
        "revoke_member takes access away",
        PLAN,
        RevokeMember(email=VIEWER),
        [MemberRevoked(email=VIEWER)],
    ),
    Case(
        "add_stakeholder records the person with a lower-case email",
        PLAN,
        AddStakeholder(
            id="cfo",
            name=" Chris Fo ",
            side="buyer",
            title="CFO",
            influence="decision_maker",
            email="CFO@Buyer.example",
        ),
        [
            StakeholderAdded(
                id="cfo",
                name="Chris Fo",
                side="buyer",
                title="CFO",
                influence="decision_maker",
                email="cfo@buyer.example",
            )
        ],
    ),
    Case(
        "update_stakeholder records only the fields that change",
        PLAN,
        UpdateStakeholder(id="ana", title="VP Operations", persona="champion"),
        [StakeholderUpdated(id="ana", changes={"title": "VP Operations"}, previous={"title": ""})],
    ),
    Case(
        "remove_stakeholder removes a person who owns nothing open",
        PLAN,
        RemoveStakeholder(id="sid"),
        [StakeholderRemoved(id="sid")],
    ),
    Case(
        "add_milestone records an owned, dated milestone",
        PLAN,
        AddMilestone(
            id="m1",
            title=" Security review passed ",
            owner="ana",
            backup="sid",
            due=DUE,
            deadline="hard",
        ),
        [
            MilestoneAdded(
                id="m1",
                title="Security review passed",
                owner="ana",
                backup="sid",
                due=DUE,
                deadline="hard",
            )
        ],
    ),
    Case(
        "update_milestone records the changed fields and what they replace",
        (*PLAN, milestone("m1")),
        UpdateMilestone(id="m1", owner="ana", approver=None, status="in_progress"),
        [
            MilestoneUpdated(
                id="m1",
                changes={"owner": "ana", "status": "in_progress"},
                previous={"owner": None, "status": "not_started"},
            )
        ],
    ),
    Case(
        "reschedule_milestone keeps the old date, the reason and the contingency",
        (*PLAN, milestone("m1", due=DUE)),
        RescheduleMilestone(
            id="m1", due=LATER, reason=" CISO on leave ", contingency=" deputy signs "
        ),
        [
            MilestoneRescheduled(
                id="m1",
                from_due=DUE,
                to_due=LATER,
                reason="CISO on leave",
                contingency="deputy signs",
            )
        ],
    ),
    Case(
        "complete_milestone marks it done",
        (*PLAN, milestone("m1")),
        CompleteMilestone(id="m1"),
        [MilestoneCompleted(id="m1")],
    ),
    Case(
        "reorder_milestones records the new and the previous order",
        (*PLAN, milestone("m1"), milestone("m2"), milestone("m3")),
        ReorderMilestones(order=["m3", "m1", "m2"]),
        [MilestonesReordered(order=["m3", "m1", "m2"], previous=["m1", "m2", "m3"])],
    ),
    Case(
        "add_action_item records a trimmed item under its milestone",
        (*PLAN, milestone("m1")),
        AddActionItem(
            milestone_id="m1",
            id="a1",
            title="Send the security questionnaire",
            owner="sid",
            due=DUE,
            links=[" https://docs.example/q ", "  "],
            notes=" by Friday ",
        ),
        [
            ActionItemAdded(
                id="a1",
                milestone_id="m1",
                title="Send the security questionnaire",
                owner="sid",
                due=DUE,
                links=["https://docs.example/q"],
                notes="by Friday",
            )
        ],
    ),
    Case(
        "update_action_item records the changed fields and what they replace",
        (*PLAN, milestone("m1"), action_item("a1")),
        UpdateActionItem(id="a1", links=["https://docs.example/q2"], notes="second round"),
        [
            ActionItemUpdated(
                id="a1",
                changes={"links": ["https://docs.example/q2"], "notes": "second round"},
                previous={"links": [], "notes": ""},
            )
        ],
    ),
    Case(
        "set_action_item_status records the new and the previous status",
        (*PLAN, milestone("m1"), action_item("a1")),
        SetActionItemStatus(id="a1", status="blocked"),
        [ActionItemStatusChanged(id="a1", status="blocked", previous="not_started")],
    ),
    Case(
        "reschedule_action_item keeps the old date and the reason",
        (*PLAN, milestone("m1"), action_item("a1")),
        RescheduleActionItem(id="a1", due=LATER, reason="waiting on legal"),
        [ActionItemRescheduled(id="a1", from_due=None, to_due=LATER, reason="waiting on legal")],
    ),
    Case(
        "add_dependency records what waits on what",
        (*PLAN, milestone("m1"), milestone("m2")),
        AddDependency(
            id="d1",
            from_id="m1",
            to_id="m2",
            critical=True,
            contingency=" escalate to the CFO ",
            escalation_contact="ana",
        ),
        [
            DependencyAdded(
                id="d1",
                from_id="m1",
                to_id="m2",
                critical=True,
                contingency="escalate to the CFO",
                escalation_contact="ana",
            )
        ],
    ),
    Case(
        "remove_dependency drops the edge",
        (
            *PLAN,
            milestone("m1"),
            milestone("m2"),
            DependencyAdded(id="d1", from_id="m1", to_id="m2"),
        ),
        RemoveDependency(id="d1"),
        [DependencyRemoved(id="d1")],
    ),
    Case(
        "add_comment records the trimmed text on the item",
        (*PLAN, milestone("m1")),
        AddComment(id="c1", item_id="m1", text=" Looks right to me "),
        [CommentAdded(id="c1", item_id="m1", text="Looks right to me", mentions=[])],
        actor=COMMENTER,
    ),
    Case(
        "tag_version names the current version by a slug",
        PLAN,
        TagVersion(name="Sent to Procurement!"),
        [VersionTagged(name="sent-to-procurement", version=len(PLAN))],
    ),
    Case(
        "add_objective records a measurable outcome, trimmed",
        PLAN,
        AddObjective(
            id="o1",
            title=" Faster forecasts ",
            metric="forecast cycle",
            baseline="10 days",
            target=" 2 days ",
            by=LATER,
            projected_outcome="8 analyst days a month saved",
        ),
        [
            ObjectiveAdded(
                id="o1",
                title="Faster forecasts",
                metric="forecast cycle",
                baseline="10 days",
                target="2 days",
                by=LATER,
                projected_outcome="8 analyst days a month saved",
            )
        ],
    ),
    Case(
        "update_objective records the changed fields and what they replace",
        (*PLAN, OBJECTIVE),
        UpdateObjective(id="o1", target="1 day", by=LATER),
        [
            ObjectiveUpdated(
                id="o1",
                changes={"target": "1 day", "by": "2025-04-15"},
                previous={"target": "", "by": None},
            )
        ],
    ),
    Case(
        "add_risk records likelihood, impact, mitigation and an owner",
        PLAN,
        AddRisk(
            id="r1",
            title="CISO on leave",
            likelihood="high",
            impact="high",
            mitigation=" Deputy can sign ",
            owner="ana",
        ),
        [
            RiskAdded(
                id="r1",
                title="CISO on leave",
                likelihood="high",
                impact="high",
                mitigation="Deputy can sign",
                owner="ana",
            )
        ],
    ),
    Case(
        "update_risk records the changed fields and what they replace",
        (*PLAN, RISK),
        UpdateRisk(id="r1", likelihood="low", status="closed"),
        [
            RiskUpdated(
                id="r1",
                changes={"likelihood": "low", "status": "closed"},
                previous={"likelihood": "medium", "status": "open"},
            )
        ],
    ),
    Case(
        "set_cadence records the communication plan and the one it replaces",
        PLAN,
        SetCadence(kind=" weekly operational ", channel="Teams", reporter="sid", next_review=DUE),
        [CadenceSet(kind="weekly operational", channel="Teams", reporter="sid", next_review=DUE)],
    ),
    Case(
        "post_status_update records what the meeting concluded, numbered when unnamed",
        PLAN,
        PostStatusUpdate(
            status="at_risk",
            progress=" PoC data loaded ",
            blockers="SOC 2 report late",
            next_actions="Send the report",
            owner="sid",
        ),
        [
            StatusUpdatePosted(
                id="update-1",
                status="at_risk",
                progress="PoC data loaded",
                blockers="SOC 2 report late",
                next_actions="Send the report",
                owner="sid",
            )
        ],
    ),
    Case(
        "endorse_plan by a buyer decision maker endorses a version, naming their stakeholder",
        (*PLAN, BOB),
        EndorsePlan(version=len(PLAN)),
        [PlanEndorsed(version=len(PLAN), stakeholder_id="bob")],
        actor=EDITOR,
    ),
    Case(
        "fork_plan starts a plan from a parent event and decides what it carries",
        (),
        ForkPlan(
            parent_plan_id="parent",
            parent_version=7,
            parent_hash=HASH,
            title=" Acme onboarding ",
            buyer_org="Acme",
            seller_org="Mapstream",
            side="seller",
            name="Olivia",
            seeds=[
                AddStakeholder(id="ana", name="Ana Ruiz", side="buyer", persona="champion"),
                AddMilestone(id="m1", title="Kickoff", owner="ana", due=DUE),
            ],
        ),
        [
            PlanForked(
                parent_plan_id="parent",
                parent_version=7,
                parent_hash=HASH,
                title="Acme onboarding",
                buyer_org="Acme",
                seller_org="Mapstream",
            ),
            MemberAdded(email=OWNER, side="seller", role="owner", name="Olivia"),
            StakeholderAdded(id="ana", name="Ana Ruiz", side="buyer", persona="champion"),
            MilestoneAdded(id="m1", title="Kickoff", owner="ana", due=DUE),
        ],
    ),
    Case(
        "record_fork on a closed-won plan records the child",
        (*PLAN, closed("won")),
        RecordFork(child_plan_id="child-1", title="Acme onboarding"),
        [ChildPlanForked(child_plan_id="child-1", title="Acme onboarding")],
    ),
]

NO_OPS = [
    Case(
        "update_plan with the same text, spaces aside",
        PLAN,
        UpdatePlan(title=" Acme evaluates Mapstream ", seller_org="Mapstream"),
    ),
    Case(
        "set_compelling_event with the same name and date",
        (*PLAN, (OWNER, CompellingEventSet(name="Go-live", date=DUE))),
        SetCompellingEvent(name="Go-live", date=DUE),
    ),
    Case("activate_plan on an active plan", (*PLAN, PlanActivated()), ActivatePlan()),
    Case(
        "add_member for a member with that side and role",
        PLAN,
        AddMember(email=EDITOR, side="buyer", role="editor"),
    ),
    Case(
        "join_plan by a member of that side",
        PLAN,
        JoinPlan(side="buyer", role="editor", invite="inv-1"),
        actor=VIEWER,
    ),
    Case(
        "change_member_role to the role they have",
        PLAN,
        ChangeMemberRole(email=EDITOR, role="editor"),
    ),
    Case(
        "update_stakeholder with the values they have",
        PLAN,
        UpdateStakeholder(id="ana", name=" Ana Ruiz ", email="ANA@buyer.example"),
    ),
    Case(
        "update_milestone with the values it has",
        (*PLAN, milestone("m1", owner="ana")),
        UpdateMilestone(id="m1", title="Milestone m1 ", owner="ana", status="not_started"),
    ),
    Case(
        "reschedule_milestone to the date it has",
        (*PLAN, milestone("m1", due=DUE)),
        RescheduleMilestone(id="m1", due=DUE, reason="no change"),
    ),
    Case(
        "complete_milestone on a done milestone",
        (*PLAN, milestone("m1"), MilestoneCompleted(id="m1")),
        CompleteMilestone(id="m1"),
    ),
    Case(
        "reorder_milestones in the order they have",
        (*PLAN, milestone("m1"), milestone("m2")),
        ReorderMilestones(order=["m1", "m2"]),
    ),
    Case(
        "update_action_item with the links and title it has",
        (*PLAN, milestone("m1"), action_item("a1", links=["https://docs.example/q"])),
        UpdateActionItem(id="a1", title="Do a1", links=["https://docs.example/q"]),
    ),
    Case(
        "set_action_item_status to the status it has",
        (*PLAN, milestone("m1"), action_item("a1")),
        SetActionItemStatus(id="a1", status="not_started"),
    ),
    Case(
        "reschedule_action_item to the date it has",
        (*PLAN, milestone("m1"), action_item("a1", due=DUE)),
        RescheduleActionItem(id="a1", due=DUE, reason=""),
    ),
    Case(
        "update_objective with the values it has, spaces aside",
        (*PLAN, OBJECTIVE),
        UpdateObjective(id="o1", title=" Faster forecasts ", metric="forecast cycle", by=None),
    ),
    Case(
        "update_risk with the values it has",
        (*PLAN, RISK),
        UpdateRisk(id="r1", title="CISO on leave", owner="ana", status="open"),
    ),
    Case(
        "set_cadence with the cadence the plan has",
        (*PLAN, CadenceSet(kind="weekly", channel="Teams", reporter="sid")),
        SetCadence(kind=" weekly ", channel="Teams", reporter="sid"),
    ),
    Case(
        "endorse_plan again for the version already endorsed",
        (*PLAN, BOB, (EDITOR, PlanEndorsed(version=3, stakeholder_id="bob"))),
        EndorsePlan(version=3),
        actor=EDITOR,
    ),
    Case(
        "add_dependency for an edge that exists (under another id)",
        (
            *PLAN,
            milestone("m1"),
            milestone("m2"),
            DependencyAdded(id="d1", from_id="m1", to_id="m2"),
        ),
        AddDependency(id="d2", from_id="m1", to_id="m2"),
    ),
]


@dataclass(frozen=True)
class Repeat:
    """A command with no no-op: deciding it again after it applied is an error."""

    name: str
    history: tuple[History, ...]
    command: PlanCommand
    code: str
    rule: str | None = None

    @property
    def tag(self) -> str:
        return str(type(self.command).__struct_config__.tag)


REPEATS = [
    Repeat(
        "create_plan twice",
        (),
        CreatePlan(title="t", buyer_org="b", seller_org="s", side="buyer"),
        "rule_violation",
        "plan_exists",
    ),
    Repeat(
        "close_plan twice",
        PLAN,
        ClosePlan(outcome="won", reason="signed"),
        "rule_violation",
        "already_closed",
    ),
    Repeat("revoke_member twice", PLAN, RevokeMember(email=VIEWER), "not_found"),
    Repeat(
        "add_stakeholder twice",
        PLAN,
        AddStakeholder(id="cfo", name="Chris", side="buyer"),
        "rule_violation",
        "duplicate_id",
    ),
    Repeat("remove_stakeholder twice", PLAN, RemoveStakeholder(id="ana"), "not_found"),
    Repeat(
        "add_milestone twice",
        PLAN,
        AddMilestone(id="m1", title="Kickoff"),
        "rule_violation",
        "duplicate_id",
    ),
    Repeat(
        "add_action_item twice",
        (*PLAN, milestone("m1")),
        AddActionItem(id="a1", milestone_id="m1", title="Book the room"),
        "rule_violation",
        "duplicate_id",
    ),
    Repeat(
        "remove_dependency twice",
        (
            *PLAN,
            milestone("m1"),
            milestone("m2"),
            DependencyAdded(id="d1", from_id="m1", to_id="m2"),
        ),
        RemoveDependency(id="d1"),
        "not_found",
    ),
    Repeat(
        "add_comment twice",
        PLAN,
        AddComment(id="c1", item_id="plan", text="hello"),
        "rule_violation",
        "duplicate_id",
    ),
    Repeat(
        "add_objective twice",
        PLAN,
        AddObjective(id="o1", title="Faster forecasts"),
        "rule_violation",
        "duplicate_id",
    ),
    Repeat(
        "add_risk twice",
        PLAN,
        AddRisk(id="r1", title="CISO on leave"),
        "rule_violation",
        "duplicate_id",
    ),
    Repeat(
        "post_status_update twice under one id",
        PLAN,
        PostStatusUpdate(id="u1", status="on_track"),
        "rule_violation",
        "duplicate_id",
    ),
    Repeat(
        "fork_plan twice",
        (),
        ForkPlan(
            parent_plan_id="parent",
            parent_version=1,
            parent_hash=HASH,
            title="t",
            buyer_org="b",
            seller_org="s",
            side="seller",
        ),
        "rule_violation",
        "plan_exists",
    ),
    Repeat(
        "record_fork twice for one child",
        (*PLAN, closed("won")),
        RecordFork(child_plan_id="child-1", title="Acme onboarding"),
        "rule_violation",
        "duplicate_id",
    ),
    Repeat(
        "tag_version twice",
        PLAN,
        TagVersion(name="sent to procurement"),
        "rule_violation",
        "tag_exists",
    ),
]


def _names(cases: list[Case]) -> list[str]:
    return [c.name for c in cases]


# create_plan and fork_plan make a plan; every other command needs one
EXISTING = [c for c in HAPPY_PATHS if c.tag not in ("create_plan", "fork_plan")]
# join_plan is authorised by the invite the server checked, not by a role in the plan
AUTHORIZED = [c for c in EXISTING if c.tag != "join_plan"]
# endorse_plan's event names the endorser's own stakeholder: who may endorse is tested below
BY_ROLE = [c for c in AUTHORIZED if c.tag != "endorse_plan"]


# -- every command: happy path, no-op or repeat ---------------------------------------------


def test_every_command_type_has_a_happy_path_and_a_no_op_or_repeat_case():
    assert {c.tag for c in HAPPY_PATHS} == set(ALL_COMMAND_TYPES)
    assert {c.tag for c in NO_OPS} | {r.tag for r in REPEATS} == set(ALL_COMMAND_TYPES)
    assert not {c.tag for c in NO_OPS} & {r.tag for r in REPEATS}


@pytest.mark.parametrize("case", HAPPY_PATHS, ids=_names(HAPPY_PATHS))
def test_happy_path(case: Case):
    assert when(given(*case.history), case.command, case.actor) == case.then


@pytest.mark.parametrize("case", NO_OPS, ids=_names(NO_OPS))
def test_nothing_changes_so_no_events(case: Case):
    assert when(given(*case.history), case.command, case.actor) == []


@pytest.mark.parametrize("case", REPEATS, ids=[r.name for r in REPEATS])
def test_repeating_a_command_without_a_no_op_is_refused(case: Repeat):
    plan = apply(given(*case.history), case.command)
    error = refusal(plan, case.command)
    assert error.code == case.code
    if case.rule is not None:
        assert isinstance(error, DomainError)
        assert error.rule == case.rule


# -- a plan that does not exist, or exists already -------------------------------------------


@pytest.mark.parametrize("case", EXISTING, ids=_names(EXISTING))
def test_a_command_on_a_plan_that_does_not_exist_is_not_found(case: Case):
    assert isinstance(refusal(Plan(id=PLAN_ID), case.command, OWNER), NotFound)


def test_creating_a_plan_that_exists_is_refused_with_plan_exists():
    command = CreatePlan(title="Again", buyer_org="Acme", seller_org="Mapstream", side="buyer")
    assert broken_rule(given(*PLAN), command, STRANGER) == "plan_exists"


def test_creating_a_plan_without_a_title_is_malformed():
    command = CreatePlan(title="  ", buyer_org="Acme", seller_org="Mapstream", side="buyer")
    error = refusal(given(), command)
    assert isinstance(error, Malformed)
    assert error.extra == {"field": "title"}


# -- permissions -----------------------------------------------------------------------------

PERMISSIONS = {
    "create_plan": "edit",
    "activate_plan": "manage",
    "close_plan": "manage",
    "add_member": "manage",
    "join_plan": "read",
    "change_member_role": "manage",
    "revoke_member": "manage",
    "add_comment": "comment",
    "tag_version": "comment",
    "endorse_plan": "comment",
    "record_fork": "manage",
}


@pytest.mark.parametrize("name", sorted(ALL_COMMAND_TYPES))
def test_each_command_needs_the_permission_its_kind_implies(name: str):
    assert ALL_COMMAND_TYPES[name].permission == PERMISSIONS.get(name, "edit")


def test_clients_may_send_every_command_but_those_the_server_issues():
    server_only = {n for n, t in ALL_COMMAND_TYPES.items() if t.server_only}
    assert server_only == {"create_plan", "join_plan", "fork_plan", "record_fork"}
    assert set(COMMAND_TYPES) == set(ALL_COMMAND_TYPES) - server_only


@pytest.mark.parametrize("case", AUTHORIZED, ids=_names(AUTHORIZED))
def test_a_viewer_cannot_change_anything(case: Case):
    error = refusal(given(*case.history), case.command, VIEWER)
    assert isinstance(error, Forbidden)
    assert error.extra == {"role": "viewer"}


@pytest.mark.parametrize("case", BY_ROLE, ids=_names(BY_ROLE))
def test_a_commenter_may_only_comment_and_tag(case: Case):
    plan = given(*case.history)
    if ALL_COMMAND_TYPES[case.tag].permission == "comment":
        assert when(plan, case.command, COMMENTER) == case.then
    else:
        assert isinstance(refusal(plan, case.command, COMMENTER), Forbidden)


@pytest.mark.parametrize("case", BY_ROLE, ids=_names(BY_ROLE))
def test_an_editor_may_do_everything_but_manage_the_plan(case: Case):
    plan = given(*case.history)
    if ALL_COMMAND_TYPES[case.tag].permission == "manage":
        assert isinstance(refusal(plan, case.command, EDITOR), Forbidden)
    else:
        assert when(plan, case.command, EDITOR) == case.then


@pytest.mark.parametrize("case", AUTHORIZED, ids=_names(AUTHORIZED))
def test_to_someone_who_is_not_a_member_the_plan_is_not_there(case: Case):
    error = refusal(given(*case.history), case.command, STRANGER)
    assert isinstance(error, NotFound)
    assert error.message == f"no plan {PLAN_ID!r} that you can see"


def test_a_revoked_member_may_do_nothing():
    plan = given(*PLAN, MemberRevoked(email=EDITOR))
    assert isinstance(refusal(plan, AddMilestone(id="m1", title="Kickoff"), EDITOR), NotFound)
    comment = AddComment(id="c1", item_id="plan", text="hi")
    assert isinstance(refusal(plan, comment, EDITOR), NotFound)


def test_a_promoted_member_may_manage_the_plan():
    plan = given(*PLAN, MemberRoleChanged(email=EDITOR, role="owner", previous="editor"))
    assert when(plan, ActivatePlan(), EDITOR) == [PlanActivated()]


def test_joining_on_the_other_side_is_refused_with_already_member():
    command = JoinPlan(side="seller", role="editor", invite="inv-1")
    assert broken_rule(given(*PLAN), command, EDITOR) == "already_member"


def test_a_revoked_member_can_be_added_again():
    plan = given(*PLAN, MemberRevoked(email=VIEWER))
    assert when(plan, AddMember(email=VIEWER, side="buyer", role="viewer")) == [
        MemberAdded(email=VIEWER, side="buyer", role="viewer")
    ]


def test_adding_a_member_who_has_another_role_is_refused_with_already_member():
    assert broken_rule(given(*PLAN), AddMember(email=EDITOR, side="buyer", role="viewer")) == (
        "already_member"
    )


def test_adding_a_member_without_an_email_address_is_malformed():
    error = refusal(given(*PLAN), AddMember(email="bob", side="buyer", role="viewer"))
    assert isinstance(error, Malformed)


def test_changing_the_role_of_someone_who_is_not_a_member_is_not_found():
    assert isinstance(
        refusal(given(*PLAN), ChangeMemberRole(email=STRANGER, role="viewer")), NotFound
    )


# -- last_owner ------------------------------------------------------------------------------


def test_revoking_the_last_owner_is_refused_with_last_owner():
    assert broken_rule(given(*PLAN), RevokeMember(email=OWNER)) == "last_owner"


def test_demoting_the_last_owner_is_refused_with_last_owner():
    assert broken_rule(given(*PLAN), ChangeMemberRole(email=OWNER, role="editor")) == "last_owner"


def test_an_owner_may_step_down_once_someone_else_is_owner():
    plan = given(*PLAN, MemberRoleChanged(email=EDITOR, role="owner", previous="editor"))
    assert when(plan, RevokeMember(email=OWNER)) == [MemberRevoked(email=OWNER)]
    assert when(plan, ChangeMemberRole(email=OWNER, role="viewer")) == [
        MemberRoleChanged(email=OWNER, role="viewer", previous="owner")
    ]


def test_a_revoked_owner_does_not_count_as_an_owner():
    plan = given(
        *PLAN,
        MemberRoleChanged(email=EDITOR, role="owner", previous="editor"),
        MemberRevoked(email=EDITOR),
    )
    assert broken_rule(plan, RevokeMember(email=OWNER)) == "last_owner"


# -- plan lifecycle --------------------------------------------------------------------------


def test_closing_a_closed_plan_is_refused_with_already_closed():
    plan = given(*PLAN, closed("lost"))
    assert broken_rule(plan, ClosePlan(outcome="won", reason="they came back")) == "already_closed"


def test_closing_a_plan_without_a_reason_is_malformed():
    error = refusal(given(*PLAN), ClosePlan(outcome="won", reason="  "))
    assert isinstance(error, Malformed)
    assert error.extra == {"field": "reason"}


def test_a_closed_plan_reads_as_won_or_lost_with_its_reason_and_time():
    won = given(*PLAN, PlanActivated(), closed("won"))
    lost = given(*PLAN, closed("lost"))
    assert (won.status, won.close_reason, won.closed_at) == ("closed_won", "signed", NOW)
    assert lost.status == "closed_lost"
    assert won.is_closed and lost.is_closed


EDITS_OF_CONTENT = [
    c
    for c in AUTHORIZED
    if ALL_COMMAND_TYPES[c.tag].permission == "edit" or c.tag in ("activate_plan", "endorse_plan")
]


@pytest.mark.parametrize("case", EDITS_OF_CONTENT, ids=_names(EDITS_OF_CONTENT))
def test_a_closed_plan_refuses_every_edit_with_closed_plan_is_read_only(case: Case):
    plan = given(*case.history, closed())
    assert broken_rule(plan, case.command, case.actor) == "closed_plan_is_read_only"


def test_a_closed_plan_still_takes_comments():
    plan = given(*PLAN, milestone("m1"), closed())
    command = AddComment(id="c1", item_id="m1", text="Great working with you")
    assert when(plan, command, COMMENTER) == [
        CommentAdded(id="c1", item_id="m1", text="Great working with you")
    ]


def test_a_closed_plan_can_still_be_tagged():
    plan = given(*PLAN, closed())
    assert when(plan, TagVersion(name="final")) == [
        VersionTagged(name="final", version=len(PLAN) + 1)
    ]


def test_access_to_a_closed_plan_can_still_be_revoked():
    plan = given(*PLAN, closed())
    assert when(plan, RevokeMember(email=EDITOR)) == [MemberRevoked(email=EDITOR)]


# -- headline fields -------------------------------------------------------------------------


def test_an_update_that_blanks_the_title_is_malformed():
    error = refusal(given(*PLAN), UpdatePlan(title=" "))
    assert isinstance(error, Malformed)
    assert error.extra == {"field": "title"}


def test_an_updated_title_is_stored_trimmed():
    plan = apply(given(*PLAN), UpdatePlan(title="  Acme rolls out  ", value_statement=" Help "))
    assert (plan.title, plan.value_statement) == ("Acme rolls out", "Help")


def test_moving_the_compelling_event_keeps_the_previous_one_in_the_event():
    plan = given(*PLAN, CompellingEventSet(name="Go-live", date=DUE))
    assert when(plan, SetCompellingEvent(name="Go-live", date=LATER)) == [
        CompellingEventSet(
            name="Go-live", date=LATER, previous=CompellingEvent(name="Go-live", date=DUE)
        )
    ]
    assert apply(plan, SetCompellingEvent(name="Go-live", date=LATER)).compelling_event == (
        CompellingEvent(name="Go-live", date=LATER)
    )


# -- stakeholders and owners -----------------------------------------------------------------


def test_a_milestone_owner_who_is_not_a_stakeholder_is_refused_with_owner_must_be_stakeholder():
    command = AddMilestone(id="m1", title="Kickoff", owner="nobody")
    assert broken_rule(given(*PLAN), command) == "owner_must_be_stakeholder"


@pytest.mark.parametrize(
    ("role", "command"),
    [
        ("owner", UpdateMilestone(id="m1", owner="sid")),
        ("backup", UpdateMilestone(id="m1", backup="sid")),
        ("approver", UpdateMilestone(id="m1", approver="sid")),
    ],
)
def test_a_removed_stakeholder_cannot_be_made_owner_backup_or_approver(role, command):
    plan = given(*PLAN, milestone("m1"), StakeholderRemoved(id="sid"))
    error = refusal(plan, command)
    assert isinstance(error, DomainError)
    assert (error.rule, error.extra["field"]) == ("owner_must_be_stakeholder", role)


def test_an_action_item_owner_must_be_a_stakeholder():
    plan = given(*PLAN, milestone("m1"), action_item("a1"))
    add = AddActionItem(id="a2", milestone_id="m1", title="Sign", owner="ghost")
    update = UpdateActionItem(id="a1", owner="ghost")
    assert broken_rule(plan, add) == "owner_must_be_stakeholder"
    assert broken_rule(plan, update) == "owner_must_be_stakeholder"


def test_an_escalation_contact_must_be_a_current_stakeholder():
    plan = given(*PLAN, milestone("m1"), milestone("m2"), StakeholderRemoved(id="sid"))
    unknown = AddDependency(id="d1", from_id="m1", to_id="m2", escalation_contact="ghost")
    removed = AddDependency(id="d1", from_id="m1", to_id="m2", escalation_contact="sid")
    assert broken_rule(plan, unknown) == "owner_must_be_stakeholder"
    assert broken_rule(plan, removed) == "owner_must_be_stakeholder"


def test_an_owner_can_be_unassigned():
    plan = given(*PLAN, milestone("m1", owner="ana"))
    assert when(plan, UpdateMilestone(id="m1", owner=None)) == [
        MilestoneUpdated(id="m1", changes={"owner": None}, previous={"owner": "ana"})
    ]


@pytest.mark.parametrize(
    "owned",
    [
        milestone("m2", owner="ana"),
        milestone("m2", backup="ana"),
        action_item("a1", owner="ana"),
    ],
    ids=["milestone owner", "milestone backup", "action item owner"],
)
def test_removing_a_stakeholder_who_owns_open_items_is_refused(owned: Event):
    plan = given(*PLAN, milestone("m1"), owned)
    assert broken_rule(plan, RemoveStakeholder(id="ana")) == "stakeholder_owns_open_items"


def test_a_stakeholder_whose_items_are_done_can_be_removed():
    plan = given(
        *PLAN,
        milestone("m1", owner="ana"),
        action_item("a1", owner="ana"),
        MilestoneCompleted(id="m1"),
        ActionItemStatusChanged(id="a1", status="done", previous="not_started"),
    )
    assert when(plan, RemoveStakeholder(id="ana")) == [StakeholderRemoved(id="ana")]


def test_a_removed_stakeholder_stays_in_the_history_but_not_in_the_plan():
    plan = given(*PLAN, StakeholderRemoved(id="sid"))
    assert plan.stakeholders["sid"].active is False
    assert isinstance(refusal(plan, UpdateStakeholder(id="sid", title="AE")), NotFound)
    assert isinstance(refusal(plan, RemoveStakeholder(id="sid")), NotFound)


def test_a_stakeholder_update_is_applied_to_the_stakeholder():
    plan = apply(given(*PLAN), UpdateStakeholder(id="ana", influence="decision_maker"))
    assert plan.stakeholders["ana"].influence == "decision_maker"


# -- ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        AddMilestone(id="a1", title="Clash"),
        AddActionItem(id="m1", milestone_id="m1", title="Clash"),
        AddStakeholder(id="m1", name="Clash", side="buyer"),
        AddDependency(id="ana", from_id="m1", to_id="a1"),
        AddComment(id="a1", item_id="m1", text="Clash"),
    ],
    ids=lambda c: type(c).__struct_config__.tag,
)
def test_a_new_item_with_the_id_of_any_existing_item_is_refused_with_duplicate_id(command):
    plan = given(*PLAN, milestone("m1"), action_item("a1"))
    assert broken_rule(plan, command) == "duplicate_id"


def test_no_item_may_take_the_id_plan_that_comments_use_for_the_plan_itself():
    plan = given(*PLAN)
    assert broken_rule(plan, AddComment(id="plan", item_id="plan", text="hi")) == "duplicate_id"
    assert broken_rule(plan, AddMilestone(id="plan", title="Kickoff")) == "duplicate_id"


# -- milestones ------------------------------------------------------------------------------


def test_rescheduling_a_done_milestone_is_refused_with_done_is_final():
    plan = given(*PLAN, milestone("m1", due=DUE), MilestoneCompleted(id="m1"))
    command = RescheduleMilestone(id="m1", due=LATER, reason="late")
    assert broken_rule(plan, command) == "done_is_final"


def test_reopening_a_done_milestone_is_refused_with_done_is_final():
    plan = given(*PLAN, milestone("m1"), MilestoneCompleted(id="m1"))
    assert broken_rule(plan, UpdateMilestone(id="m1", status="in_progress")) == "done_is_final"


def test_a_done_milestone_can_still_be_retitled():
    plan = given(*PLAN, milestone("m1"), MilestoneCompleted(id="m1"))
    assert when(plan, UpdateMilestone(id="m1", title="Signed")) == [
        MilestoneUpdated(id="m1", changes={"title": "Signed"}, previous={"title": "Milestone m1"})
    ]


def test_marking_a_milestone_done_by_update_is_refused_with_complete_via_complete_milestone():
    plan = given(*PLAN, milestone("m1"))
    rule = broken_rule(plan, UpdateMilestone(id="m1", status="done"))
    assert rule == "complete_via_complete_milestone"


def test_a_reschedule_needs_a_reason():
    plan = given(*PLAN, milestone("m1", due=DUE))
    error = refusal(plan, RescheduleMilestone(id="m1", due=LATER, reason=" "))
    assert isinstance(error, Malformed)
    assert error.extra == {"field": "reason"}


def test_a_slip_is_history_not_an_overwrite():
    plan = given(*PLAN, milestone("m1", due=DUE))
    plan = apply(plan, RescheduleMilestone(id="m1", due=LATER, reason="CISO away"))
    plan = apply(plan, RescheduleMilestone(id="m1", due=date(2025, 5, 1), reason="pen test"))
    m1 = plan.milestones["m1"]
    assert m1.due == date(2025, 5, 1)
    assert m1.slips == (
        Slip(from_due=DUE, to_due=LATER, reason="CISO away", at=NOW),
        Slip(from_due=LATER, to_due=date(2025, 5, 1), reason="pen test", at=NOW),
    )


def test_completing_a_milestone_records_when():
    plan = apply(given(*PLAN, milestone("m1")), CompleteMilestone(id="m1"))
    assert (plan.milestones["m1"].status, plan.milestones["m1"].completed_at) == ("done", NOW)


@pytest.mark.parametrize(
    "command",
    [
        UpdateMilestone(id="m9", title="x"),
        RescheduleMilestone(id="m9", due=DUE, reason="x"),
        CompleteMilestone(id="m9"),
        AddActionItem(id="a1", milestone_id="m9", title="x"),
    ],
    ids=lambda c: type(c).__struct_config__.tag,
)
def test_a_milestone_that_does_not_exist_is_not_found(command):
    error = refusal(given(*PLAN, milestone("m1")), command)
    assert isinstance(error, NotFound)
    assert error.extra == {"item_id": "m9"}


def test_a_milestone_added_at_a_position_is_placed_there():
    plan = given(*PLAN, milestone("m1"), milestone("m2"))
    plan = apply(plan, AddMilestone(id="m0", title="Discovery", position=0))
    plan = apply(plan, AddMilestone(id="m15", title="Pilot", position=2))
    assert plan.milestone_order == ("m0", "m1", "m15", "m2")


def test_a_position_outside_the_list_is_malformed():
    plan = given(*PLAN, milestone("m1"))
    error = refusal(plan, AddMilestone(id="m2", title="x", position=2))
    assert isinstance(error, Malformed)
    assert error.extra == {"field": "position"}


@pytest.mark.parametrize(
    "order",
    [["m1"], ["m1", "m2", "m9"], ["m1", "m1", "m2"], ["m2", "m1", "m1"]],
    ids=["missing", "unknown", "twice", "twice instead of one"],
)
def test_a_reorder_must_list_every_milestone_exactly_once(order: list[str]):
    error = refusal(given(*PLAN, milestone("m1"), milestone("m2")), ReorderMilestones(order=order))
    assert isinstance(error, Malformed)


# -- action items ----------------------------------------------------------------------------


def test_rescheduling_a_done_action_item_is_refused_with_done_is_final():
    plan = given(
        *PLAN,
        milestone("m1"),
        action_item("a1", due=DUE),
        ActionItemStatusChanged(id="a1", status="done", previous="not_started"),
    )
    command = RescheduleActionItem(id="a1", due=LATER, reason="late")
    assert broken_rule(plan, command) == "done_is_final"


def test_an_action_item_done_records_when_and_reopening_clears_it():
    plan = given(*PLAN, milestone("m1"), action_item("a1"))
    done = apply(plan, SetActionItemStatus(id="a1", status="done"))
    reopened = apply(done, SetActionItemStatus(id="a1", status="in_progress"))
    assert done.action_items["a1"].completed_at == NOW
    assert reopened.action_items["a1"].completed_at is None


def test_an_action_item_reschedule_keeps_the_slip():
    plan = apply(
        given(*PLAN, milestone("m1"), action_item("a1", due=DUE)),
        RescheduleActionItem(id="a1", due=LATER, reason="legal"),
    )
    item = plan.action_items["a1"]
    assert (item.due, item.slips) == (LATER, (Slip(DUE, LATER, "legal", "", NOW),))


@pytest.mark.parametrize(
    "command",
    [
        UpdateActionItem(id="a9", notes="x"),
        SetActionItemStatus(id="a9", status="done"),
        RescheduleActionItem(id="a9", due=DUE, reason="x"),
    ],
    ids=lambda c: type(c).__struct_config__.tag,
)
def test_an_action_item_that_does_not_exist_is_not_found(command):
    assert isinstance(refusal(given(*PLAN, milestone("m1")), command), NotFound)


def test_an_action_item_update_is_applied_to_the_item():
    plan = given(*PLAN, milestone("m1"), action_item("a1"))
    plan = apply(plan, UpdateActionItem(id="a1", title=" Sign the MSA ", links=["https://x"]))
    item = plan.action_items["a1"]
    assert (item.title, item.links) == ("Sign the MSA", ("https://x",))


# -- dependencies ----------------------------------------------------------------------------


def test_a_dependency_that_closes_a_loop_is_refused_with_dependency_cycle():
    plan = given(
        *PLAN, milestone("m1"), milestone("m2"), DependencyAdded(id="d1", from_id="m1", to_id="m2")
    )
    assert broken_rule(plan, AddDependency(id="d2", from_id="m2", to_id="m1")) == "dependency_cycle"


def test_a_longer_loop_through_an_action_item_is_refused_with_dependency_cycle():
    plan = given(
        *PLAN,
        milestone("m1"),
        milestone("m2"),
        action_item("a1", milestone_id="m2"),
        DependencyAdded(id="d1", from_id="m1", to_id="m2"),
        DependencyAdded(id="d2", from_id="m2", to_id="a1"),
    )
    assert broken_rule(plan, AddDependency(id="d3", from_id="a1", to_id="m1")) == "dependency_cycle"


def test_a_dependency_can_be_turned_around_once_the_old_one_is_removed():
    plan = given(
        *PLAN,
        milestone("m1"),
        milestone("m2"),
        DependencyAdded(id="d1", from_id="m1", to_id="m2"),
        DependencyRemoved(id="d1"),
    )
    assert when(plan, AddDependency(id="d2", from_id="m2", to_id="m1")) == [
        DependencyAdded(id="d2", from_id="m2", to_id="m1")
    ]


def test_an_item_cannot_depend_on_itself():
    error = refusal(given(*PLAN, milestone("m1")), AddDependency(id="d1", from_id="m1", to_id="m1"))
    assert isinstance(error, Malformed)


@pytest.mark.parametrize(
    ("end", "command"),
    [
        ("from_id", AddDependency(id="d1", from_id="ana", to_id="m1")),
        ("to_id", AddDependency(id="d1", from_id="m1", to_id="ana")),
    ],
)
def test_a_dependency_on_something_that_is_not_scheduled_is_not_found(end, command):
    error = refusal(given(*PLAN, milestone("m1")), command)
    assert isinstance(error, NotFound)
    assert error.extra == {"field": end}


# -- comments and mentions -------------------------------------------------------------------


def test_a_comment_mentions_stakeholders_and_members_named_by_at_email():
    plan = given(*PLAN, milestone("m1"))
    text = (
        "@Ana@Buyer.example and @bob@buyer.example, see @nobody@nowhere.example; ana@buyer.example"
    )
    assert when(plan, AddComment(id="c1", item_id="m1", text=text)) == [
        CommentAdded(id="c1", item_id="m1", text=text, mentions=["ana", EDITOR])
    ]


def test_a_person_mentioned_twice_is_mentioned_once():
    plan = given(*PLAN)
    events = when(
        plan, AddComment(id="c1", item_id="plan", text="@ana@buyer.example @ana@buyer.example.")
    )
    assert events == [
        CommentAdded(
            id="c1", item_id="plan", text="@ana@buyer.example @ana@buyer.example.", mentions=["ana"]
        )
    ]


def test_removed_stakeholders_and_revoked_members_are_not_mentioned():
    plan = given(*PLAN, StakeholderRemoved(id="ana"), MemberRevoked(email=EDITOR))
    events = when(
        plan, AddComment(id="c1", item_id="plan", text="@ana@buyer.example @bob@buyer.example")
    )
    assert isinstance(events[0], CommentAdded)
    assert events[0].mentions == []


def test_a_stakeholder_email_changed_in_capitals_can_still_be_mentioned():
    plan = apply(given(*PLAN), UpdateStakeholder(id="sid", email="Sid.Park@Seller.example"))
    events = when(plan, AddComment(id="c1", item_id="plan", text="@sid.park@seller.example"))
    assert isinstance(events[0], CommentAdded)
    assert events[0].mentions == ["sid"]


def test_a_comment_records_its_author_and_time():
    plan = apply(
        given(*PLAN, milestone("m1")), AddComment(id="c1", item_id="m1", text="ok"), EDITOR
    )
    comment = plan.comments["c1"]
    assert (comment.author, comment.at, comment.item_id) == (EDITOR, NOW, "m1")


def test_a_reply_is_a_comment_on_a_comment():
    plan = given(*PLAN, milestone("m1"), CommentAdded(id="c1", item_id="m1", text="ok?"))
    assert when(plan, AddComment(id="c2", item_id="c1", text="yes")) == [
        CommentAdded(id="c2", item_id="c1", text="yes")
    ]


def test_a_comment_on_nothing_is_not_found_and_an_empty_one_is_malformed():
    plan = given(*PLAN)
    assert isinstance(refusal(plan, AddComment(id="c1", item_id="m9", text="hi")), NotFound)
    assert isinstance(refusal(plan, AddComment(id="c1", item_id="plan", text=" ")), Malformed)


def test_a_viewer_cannot_comment():
    command = AddComment(id="c1", item_id="plan", text="hi")
    assert isinstance(refusal(given(*PLAN), command, VIEWER), Forbidden)


# -- named versions --------------------------------------------------------------------------


def test_a_tag_can_name_an_earlier_version():
    assert when(given(*PLAN), TagVersion(name="Kickoff", version=2)) == [
        VersionTagged(name="kickoff", version=2)
    ]


def test_a_tag_name_taken_is_refused_with_tag_exists_even_for_another_version():
    plan = given(*PLAN, VersionTagged(name="kickoff", version=2))
    assert broken_rule(plan, TagVersion(name="KICKOFF", version=3)) == "tag_exists"


@pytest.mark.parametrize(
    "command",
    [
        TagVersion(name="!!!"),
        TagVersion(name="42"),
        TagVersion(name="x" * 81),
        TagVersion(name="future", version=len(PLAN) + 1),
        TagVersion(name="before", version=0),
    ],
    ids=["no letters", "a number", "too long", "a future version", "version zero"],
)
def test_a_tag_that_could_not_be_read_back_is_malformed(command: TagVersion):
    assert isinstance(refusal(given(*PLAN), command), Malformed)


def test_a_tag_names_its_version_in_the_plan():
    plan = apply(given(*PLAN), TagVersion(name="Signed off by CFO"))
    assert plan.tags == {"signed-off-by-cfo": len(PLAN)}


# -- internal action items -------------------------------------------------------------------

SECRET_PLAN = (
    *PLAN,
    milestone("m1"),
    milestone("m2"),
    action_item("shared"),
    internal_item("secret", side="seller"),
    CommentAdded(id="c1", item_id="secret", text="discount floor is 20%"),
    CommentAdded(id="c2", item_id="c1", text="CFO agrees"),
    DependencyAdded(id="d1", from_id="secret", to_id="m2"),
    CommentAdded(id="c3", item_id="d1", text="this gates the pilot"),
    CommentAdded(id="c4", item_id="shared", text="visible to all"),
)


def test_an_internal_item_added_by_a_buyer_is_internal_to_the_buyer_side():
    plan = given(*PLAN, milestone("m1"))
    command = AddActionItem(id="a1", milestone_id="m1", title="Budget check", visibility="internal")
    assert when(plan, command, EDITOR) == [
        ActionItemAdded(
            id="a1",
            milestone_id="m1",
            title="Budget check",
            visibility="internal",
            internal_to="buyer",
        )
    ]


def test_events_about_an_internal_item_are_for_its_side_only():
    plan = given(*SECRET_PLAN)
    assert audience(plan, internal_item("x", side="buyer")) == "buyer"
    assert audience(plan, action_item("y")) is None
    about_secret: list[Event] = [
        ActionItemStatusChanged(id="secret", status="done", previous="not_started"),
        ActionItemRescheduled(id="secret", from_due=None, to_due=DUE, reason="x"),
        ActionItemUpdated(id="secret", changes={"notes": "x"}, previous={"notes": ""}),
        CommentAdded(id="c9", item_id="secret", text="x"),
        CommentAdded(id="c9", item_id="c2", text="reply to a reply"),
        CommentAdded(id="c9", item_id="d1", text="on its dependency"),
        DependencyAdded(id="d9", from_id="m1", to_id="secret"),
        DependencyRemoved(id="d1"),
    ]
    assert [audience(plan, e) for e in about_secret] == ["seller"] * len(about_secret)
    about_shared: list[Event] = [
        ActionItemStatusChanged(id="shared", status="done", previous="not_started"),
        CommentAdded(id="c9", item_id="c4", text="x"),
        DependencyAdded(id="d9", from_id="m1", to_id="shared"),
        MilestoneCompleted(id="m1"),
    ]
    assert [audience(plan, e) for e in about_shared] == [None] * len(about_shared)


def test_the_other_side_sees_neither_the_item_nor_what_hangs_off_it():
    plan = given(*SECRET_PLAN)
    buyer = view_for(plan, "buyer")
    assert set(buyer.action_items) == {"shared"}
    assert set(buyer.comments) == {"c4"}
    assert buyer.dependencies == {}
    assert view_for(plan, "seller") == plan


def test_a_side_without_hidden_items_sees_the_whole_plan():
    plan = given(*PLAN, milestone("m1"), action_item("a1"))
    assert view_for(plan, "buyer") == plan


SECRET_TOUCHING = [
    UpdateActionItem(id="secret", notes="peek"),
    UpdateActionItem(id="secret", visibility="shared"),
    SetActionItemStatus(id="secret", status="done"),
    RescheduleActionItem(id="secret", due=DUE, reason="x"),
    AddComment(id="c9", item_id="secret", text="what is this?"),
    AddComment(id="c9", item_id="c1", text="a reply"),
    AddComment(id="c9", item_id="d1", text="on its dependency"),
    AddDependency(id="d9", from_id="m1", to_id="secret"),
    AddDependency(id="d9", from_id="secret", to_id="m1"),
    RemoveDependency(id="d1"),
]


@pytest.mark.parametrize(
    "command", SECRET_TOUCHING, ids=lambda c: f"{type(c).__struct_config__.tag} {c}"
)
def test_a_command_from_the_other_side_on_an_internal_item_is_forbidden(command):
    assert isinstance(refusal(given(*SECRET_PLAN), command, EDITOR), Forbidden)


@pytest.mark.parametrize(
    "command", SECRET_TOUCHING, ids=lambda c: f"{type(c).__struct_config__.tag} {c}"
)
def test_the_items_own_side_may_act_on_it(command):
    assert when(given(*SECRET_PLAN), command, SELLER) != []


def test_the_side_of_an_internal_item_comes_from_the_membership_not_the_callers_context():
    plan = given(*SECRET_PLAN)
    without_member = Context(actor=EDITOR, now=NOW, member=None)
    with pytest.raises(Forbidden):
        decide(plan, SetActionItemStatus(id="secret", status="done"), without_member)


def test_sharing_an_internal_item_tells_both_sides_the_whole_item():
    plan = given(*SECRET_PLAN)
    events = when(plan, UpdateActionItem(id="secret", visibility="shared"), SELLER)
    assert events == [
        ActionItemUpdated(
            id="secret",
            changes={"visibility": "shared", "internal_to": None},
            previous={"visibility": "internal", "internal_to": "seller"},
            item={
                "id": "secret",
                "milestone_id": "m1",
                "title": "Do secret",
                "owner": None,
                "due": None,
                "status": "not_started",
                "links": [],
                "notes": "",
                "visibility": "shared",
                "internal_to": None,
                "completed_at": None,
                "slips": [],
            },
        )
    ]
    assert audience(plan, events[0]) is None
    assert (
        "secret"
        in view_for(
            apply(plan, UpdateActionItem(id="secret", visibility="shared"), SELLER), "buyer"
        ).action_items
    )


def test_making_a_shared_item_internal_hides_it_from_the_other_side():
    plan = given(*PLAN, milestone("m1"), action_item("a1"))
    events = when(plan, UpdateActionItem(id="a1", visibility="internal"), EDITOR)
    assert events == [
        ActionItemUpdated(
            id="a1",
            changes={"visibility": "internal", "internal_to": "buyer"},
            previous={"visibility": "shared", "internal_to": None},
        )
    ]
    assert audience(plan, events[0]) == "buyer"
    after = apply(plan, UpdateActionItem(id="a1", visibility="internal"), EDITOR)
    assert "a1" not in view_for(after, "seller").action_items
    assert "a1" in view_for(after, "buyer").action_items


def test_removing_a_dependency_takes_its_discussion_with_it():
    plan = given(*SECRET_PLAN, CommentAdded(id="c5", item_id="c3", text="agreed"))
    after = apply(plan, RemoveDependency(id="d1"), SELLER)
    assert set(after.comments) == {"c1", "c2", "c4"}
    assert set(view_for(after, "buyer").comments) == {"c4"}


def test_a_reused_dependency_id_does_not_inherit_old_comments():
    plan = given(*SECRET_PLAN, DependencyRemoved(id="d1"))
    plan = apply(plan, AddMilestone(id="d1", title="Pilot"), EDITOR)
    assert [c.id for c in plan.comments.values() if c.item_id == "d1"] == []


# -- evolve ----------------------------------------------------------------------------------


def test_a_new_plan_records_who_created_it_and_when():
    plan = given(*PLAN)
    assert (plan.id, plan.version, plan.status) == (PLAN_ID, len(PLAN), "draft")
    assert (plan.created_by, plan.created_at, plan.updated_at) == (OWNER, NOW, NOW)
    owner = plan.member(OWNER)
    assert owner is not None and owner.role == "owner"


def test_each_side_has_its_last_activity():
    plan = given(*PLAN, (EDITOR, milestone("m1")))
    assert plan.last_activity == {"seller": NOW, "buyer": NOW}
    assert given(*PLAN).last_activity == {"seller": NOW}


def test_a_revoked_member_is_kept_but_no_longer_a_member():
    plan = given(*PLAN, MemberRevoked(email=EDITOR))
    assert plan.member(EDITOR) is None
    assert plan.members[EDITOR].active is False


# -- objectives, risks, cadence, status updates ------------------------------------------------


def test_an_objective_update_is_applied_and_a_blank_title_is_malformed():
    plan = apply(given(*PLAN, OBJECTIVE), UpdateObjective(id="o1", baseline=" 10 days "))
    assert plan.objectives["o1"].baseline == "10 days"
    error = refusal(plan, UpdateObjective(id="o1", title=" "))
    assert isinstance(error, Malformed) and error.extra == {"field": "title"}


@pytest.mark.parametrize(
    "command", [UpdateObjective(id="o9", title="x"), UpdateRisk(id="r9", title="x")]
)
def test_an_objective_or_risk_that_does_not_exist_is_not_found(command: PlanCommand):
    assert isinstance(refusal(given(*PLAN), command), NotFound)


@pytest.mark.parametrize(
    "command",
    [
        AddRisk(id="r1", title="CISO on leave", owner="nobody"),
        SetCadence(kind="weekly", reporter="nobody"),
        PostStatusUpdate(status="on_track", owner="nobody"),
    ],
)
def test_risk_owners_reporters_and_update_owners_must_be_stakeholders(command: PlanCommand):
    assert broken_rule(given(*PLAN), command) == "owner_must_be_stakeholder"


def test_a_risk_owner_must_be_a_stakeholder_when_changed_or_reopened():
    plan = given(*PLAN, RISK)
    assert broken_rule(plan, UpdateRisk(id="r1", owner="nobody")) == "owner_must_be_stakeholder"
    closed_risk = apply(plan, UpdateRisk(id="r1", status="closed"))
    gone = apply(closed_risk, RemoveStakeholder(id="ana"))
    assert broken_rule(gone, UpdateRisk(id="r1", status="open")) == "owner_must_be_stakeholder"
    reopened = apply(gone, UpdateRisk(id="r1", status="open", owner="sid"))
    assert (reopened.risks["r1"].status, reopened.risks["r1"].owner) == ("open", "sid")


@pytest.mark.parametrize(
    "owned",
    [RISK, CadenceSet(kind="weekly", reporter="ana")],
    ids=["an open risk", "the status reporting"],
)
def test_a_stakeholder_who_owns_a_risk_or_reports_status_cannot_be_removed(owned: Event):
    assert broken_rule(given(*PLAN, owned), RemoveStakeholder(id="ana")) == (
        "stakeholder_owns_open_items"
    )


def test_a_stakeholder_whose_risk_is_closed_can_be_removed():
    plan = apply(given(*PLAN, RISK), UpdateRisk(id="r1", status="closed"))
    assert when(plan, RemoveStakeholder(id="ana")) == [StakeholderRemoved(id="ana")]


def test_a_new_cadence_keeps_the_previous_one_in_the_event():
    plan = given(*PLAN, CadenceSet(kind="weekly", reporter="sid"))
    assert when(plan, SetCadence(kind="bi-weekly executive snapshot", next_review=LATER)) == [
        CadenceSet(
            kind="bi-weekly executive snapshot",
            next_review=LATER,
            previous=Cadence(kind="weekly", reporter="sid"),
        )
    ]
    assert apply(plan, SetCadence(kind="weekly", next_review=DUE)).cadence == Cadence(
        kind="weekly", next_review=DUE
    )


def test_status_updates_are_kept_in_order_with_author_and_time():
    plan = apply(given(*PLAN), PostStatusUpdate(status="on_track", progress="kickoff held"))
    plan = apply(plan, PostStatusUpdate(status="at_risk", blockers="no data yet"), EDITOR)
    assert [(u.id, u.status, u.author, u.at) for u in plan.status_updates] == [
        ("update-1", "on_track", OWNER, NOW),
        ("update-2", "at_risk", EDITOR, NOW),
    ]


def test_a_numbered_status_update_skips_an_id_another_item_took():
    plan = given(*PLAN, milestone("update-1"))
    assert when(plan, PostStatusUpdate(status="on_track"))[0] == StatusUpdatePosted(
        id="update-2", status="on_track"
    )


def test_a_status_update_can_be_commented_on():
    plan = apply(given(*PLAN), PostStatusUpdate(status="on_track"))
    assert when(plan, AddComment(id="c1", item_id="update-1", text="Agreed")) == [
        CommentAdded(id="c1", item_id="update-1", text="Agreed")
    ]


# -- endorsement -------------------------------------------------------------------------------


def test_a_seller_cannot_endorse_even_as_a_decision_maker():
    me = StakeholderAdded(
        id="me", name="Olivia", side="seller", influence="decision_maker", email=OWNER
    )
    assert broken_rule(given(*PLAN, me), EndorsePlan(version=1)) == "seller_cannot_endorse"


@pytest.mark.parametrize(
    "who",
    [
        None,
        StakeholderAdded(id="bob", name="Bob", side="buyer", influence="influencer", email=EDITOR),
        StakeholderAdded(id="bob", name="Bob", side="buyer", persona="end user", email=EDITOR),
    ],
    ids=["not a stakeholder", "an influencer", "an end user"],
)
def test_a_buyer_who_neither_decides_nor_champions_cannot_endorse(who: Event | None):
    plan = given(*PLAN, *([who] if who is not None else []))
    assert broken_rule(plan, EndorsePlan(version=1), EDITOR) == "endorser_not_decision_maker"


@pytest.mark.parametrize("persona", ["champion", "Champion", " champion "])
def test_the_buyer_champion_may_endorse_even_as_a_commenter(persona: str):
    champion = StakeholderAdded(
        id="carla", name="Carla", side="buyer", persona=persona, email=COMMENTER
    )
    plan = apply(given(*PLAN, champion), EndorsePlan(version=2), COMMENTER)
    assert [(e.by, e.version, e.stakeholder, e.at) for e in plan.endorsements] == [
        (COMMENTER, 2, "carla", NOW)
    ]


def test_a_removed_stakeholder_no_longer_endorses():
    plan = given(*PLAN, BOB, StakeholderRemoved(id="bob"))
    assert broken_rule(plan, EndorsePlan(version=1), EDITOR) == "endorser_not_decision_maker"


@pytest.mark.parametrize("version", [0, len(PLAN) + 2])
def test_an_endorsement_names_a_version_the_plan_has(version: int):
    error = refusal(given(*PLAN, BOB), EndorsePlan(version=version), EDITOR)
    assert isinstance(error, Malformed) and error.extra == {"field": "version"}


def test_a_later_version_can_be_endorsed_again():
    plan = apply(given(*PLAN, BOB), EndorsePlan(version=3), EDITOR)
    plan = apply(plan, EndorsePlan(version=plan.version), EDITOR)
    assert [e.version for e in plan.endorsements] == [3, len(PLAN) + 2]


def test_a_viewer_cannot_endorse_even_as_a_decision_maker():
    cfo = StakeholderAdded(id="v", name="V", side="buyer", influence="decision_maker", email=VIEWER)
    assert isinstance(refusal(given(*PLAN, cfo), EndorsePlan(version=1), VIEWER), Forbidden)


# -- forks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [(), (PlanActivated(),), (PlanActivated(), closed("lost"))])
def test_only_a_closed_won_plan_can_be_forked(status: tuple[Event, ...]):
    command = RecordFork(child_plan_id="child-1", title="Onboarding")
    assert broken_rule(given(*PLAN, *status), command) == "fork_needs_closed_won"


def test_only_an_owner_can_record_a_fork():
    plan = given(*PLAN, closed("won"))
    assert isinstance(refusal(plan, RecordFork(child_plan_id="c", title="t"), EDITOR), Forbidden)


def test_a_recorded_fork_is_a_child_of_the_plan():
    plan = apply(given(*PLAN, closed("won")), RecordFork(child_plan_id="c", title="Onboarding"))
    [child] = plan.children
    assert (child.plan_id, child.version, child.title, child.kind, child.by, child.at) == (
        "c",
        plan.version,
        "Onboarding",
        "onboarding",
        OWNER,
        NOW,
    )


def test_a_forked_plan_names_its_parent_and_makes_the_forker_owner():
    fork = ForkPlan(
        parent_plan_id="parent",
        parent_version=9,
        parent_hash=HASH,
        title="Onboarding",
        buyer_org="Acme",
        seller_org="M",
        side="buyer",
    )
    plan = apply(given(), fork, EDITOR)
    assert plan.parent is not None
    assert (plan.parent.plan_id, plan.parent.version, plan.parent.hash) == ("parent", 9, HASH)
    assert (plan.kind, plan.status, plan.members[EDITOR].role) == ("onboarding", "draft", "owner")


@pytest.mark.parametrize(
    "fields",
    [{"parent_hash": "nope"}, {"parent_version": 0}, {"parent_plan_id": ""}, {"title": " "}],
)
def test_a_fork_without_a_valid_parent_link_or_title_is_malformed(fields: dict[str, object]):
    base = {
        "parent_plan_id": "parent",
        "parent_version": 1,
        "parent_hash": HASH,
        "title": "t",
        "buyer_org": "b",
        "seller_org": "s",
        "side": "seller",
    }
    assert isinstance(refusal(given(), ForkPlan(**{**base, **fields})), Malformed)  # type: ignore[arg-type]


def test_a_fork_whose_carried_items_break_a_rule_is_refused_whole():
    fork = ForkPlan(
        parent_plan_id="parent",
        parent_version=1,
        parent_hash=HASH,
        title="t",
        buyer_org="b",
        seller_org="s",
        side="seller",
        seeds=[AddMilestone(id="m1", title="Kickoff", owner="nobody")],
    )
    assert broken_rule(given(), fork) == "owner_must_be_stakeholder"


def test_a_closed_plan_can_still_record_a_fork_but_takes_no_endorsement():
    plan = given(*PLAN, BOB, closed("won"))
    assert broken_rule(plan, EndorsePlan(version=1), EDITOR) == "closed_plan_is_read_only"
    assert when(plan, RecordFork(child_plan_id="c", title="t")) == [
        ChildPlanForked(child_plan_id="c", title="t")
    ]


def test_member_commands_match_emails_whatever_their_case_and_the_fold_follows():
    plan = given(*PLAN)
    changed = when(plan, ChangeMemberRole(email=" Bob@Buyer.EXAMPLE ", role="commenter"))
    assert changed == [MemberRoleChanged(email=EDITOR, role="commenter", previous="editor")]
    plan = apply(plan, ChangeMemberRole(email="BOB@buyer.example", role="commenter"))
    assert plan.members[EDITOR].role == "commenter"
    assert when(plan, RevokeMember(email="Victor@Buyer.Example")) == [MemberRevoked(email=VIEWER)]
    assert apply(plan, RevokeMember(email="VICTOR@buyer.example")).member(VIEWER) is None


def test_an_item_id_of_blanks_is_malformed():
    error = refusal(given(*PLAN), AddMilestone(id="   ", title="Kickoff"))
    assert isinstance(error, Malformed)


def test_a_done_item_of_a_removed_stakeholder_reopens_only_once_reassigned():
    history = (
        *PLAN,
        milestone("m1"),
        action_item("a1", owner="sid"),
        ActionItemStatusChanged(id="a1", status="done", previous="not_started"),
        StakeholderRemoved(id="sid"),  # allowed: sid owned nothing open any more
    )
    plan = given(*history)
    reopen = SetActionItemStatus(id="a1", status="in_progress")
    assert broken_rule(plan, reopen) == "owner_removed"
    plan = apply(plan, UpdateActionItem(id="a1", owner="ana"))
    assert when(plan, reopen) == [
        ActionItemStatusChanged(id="a1", status="in_progress", previous="done")
    ]
