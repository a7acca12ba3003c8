"""The laws of the plan decider, over random command sequences, valid and invalid mixed.

Ids come from small pools so that updates hit existing items (and adds collide), dates from a
short window so that reschedules are sometimes no-ops, and actors are the seller-side owner,
a buyer-side editor and a buyer-side viewer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import hypothesis.strategies as st
import msgspec
from hypothesis import event, given

from domain.action_items import (
    ActionItemAdded,
    ActionItemUpdated,
    AddActionItem,
    RescheduleActionItem,
    SetActionItemStatus,
    UpdateActionItem,
)
from domain.base import UNSET, Context, Event, Recorded
from domain.cadence import CadenceSet, SetCadence
from domain.chain import GENESIS, Link, data_digest, event_hash, verify
from domain.comments import AddComment
from domain.decider import PlanCommand, decide, decode_event, evolve, fold
from domain.dependencies import AddDependency, DependencyAdded, RemoveDependency
from domain.endorsements import EndorsePlan, PlanEndorsed, may_endorse
from domain.errors import MapstreamError
from domain.members import AddMember, ChangeMemberRole, JoinPlan, RevokeMember
from domain.milestones import (
    AddMilestone,
    CompleteMilestone,
    MilestoneAdded,
    MilestoneUpdated,
    ReorderMilestones,
    RescheduleMilestone,
    UpdateMilestone,
)
from domain.model import Dependency, Plan, Side
from domain.objectives import AddObjective, UpdateObjective
from domain.plans import ActivatePlan, ClosePlan, CreatePlan, SetCompellingEvent, UpdatePlan
from domain.risks import AddRisk, RiskAdded, RiskUpdated, UpdateRisk
from domain.stakeholders import AddStakeholder, RemoveStakeholder, UpdateStakeholder
from domain.status_updates import PostStatusUpdate, StatusUpdatePosted
from domain.versions import TagVersion
from domain.visibility import view_for
from tests.domain.support import EDITOR, NOW, OWNER, PLAN_ID, VIEWER

# -- the generator ---------------------------------------------------------------------------
#
# Values are drawn mostly valid with a few invalid ones mixed in (an empty title, a person who
# is not a stakeholder, an id another item has), so that most commands apply and every rule
# still gets broken now and then.

MILESTONES = ("m1", "m2", "m3")
ITEMS = ("a1", "a2", "a3")
STAKEHOLDERS = ("s1", "s2", "s3")  # added by SETUP; "s4" is left for the sequence to add
DEPENDENCIES = ("d1", "d2", "d3")
COMMENTS = ("c1", "c2", "c3")
OBJECTIVES = ("o1", "o2")
RISKS = ("r1", "r2")
SCHEDULED = (*MILESTONES, *ITEMS)

SETUP: list[tuple[str, PlanCommand]] = [
    (
        OWNER,
        CreatePlan(title="Acme evaluates", buyer_org="Acme", seller_org="Mapstream", side="seller"),
    ),
    (OWNER, AddMember(email=EDITOR, side="buyer", role="editor")),
    (OWNER, AddMember(email=VIEWER, side="buyer", role="viewer")),
    (OWNER, AddStakeholder(id="s1", name="Ana", side="buyer", email="ana@buyer.example")),
    (OWNER, AddStakeholder(id="s2", name="Sid", side="seller", email="sid@seller.example")),
    (EDITOR, AddStakeholder(id="s3", name="Chris", side="buyer", influence="decision_maker")),
    # the buyer editor is a stakeholder who decides, so endorsements sometimes pass
    (OWNER, AddStakeholder(id="s5", name="Bob", side="buyer", persona="champion", email=EDITOR)),
]


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn in proportion to its weight."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(pool).flatmap(lambda strategy: strategy)


def unset_or(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return weighted((1, st.just(UNSET)), (1, strategy))


def mostly(*values: Any) -> st.SearchStrategy[Any]:
    """The first values are the common ones; the last one is drawn about one time in eight."""
    *common, rare = values
    return st.sampled_from([*common * 7, *[rare] * len(common)])


titles = mostly("Kickoff", " Security review ", "Pilot sign-off", "Legal review", "")
texts = st.sampled_from(("", "note", " trimmed "))
dates = st.dates(date(2025, 3, 1), date(2025, 3, 7))
maybe_dates = st.one_of(st.none(), dates)
owners = mostly(None, *STAKEHOLDERS, "ghost")
helpers = mostly(None, None, None, *STAKEHOLDERS, "ghost")  # backups, approvers, contacts
statuses = st.sampled_from(("not_started", "in_progress", "blocked", "done"))
sides = st.sampled_from(("buyer", "seller"))
roles = st.sampled_from(("owner", "editor", "commenter", "viewer"))
visibilities = mostly("shared", "shared", "internal", "internal")
links = st.lists(
    st.sampled_from(("https://docs.example/q", " ", " https://docs.example/r ")), max_size=2
)

add_stakeholder = st.builds(
    AddStakeholder,
    id=mostly("s4", "s1"),
    name=mostly("Ana", "Sid", " Chris ", " "),
    side=sides,
    email=st.sampled_from(("ana@buyer.example", "Sid@Seller.example", "")),
    influence=st.one_of(st.none(), st.sampled_from(("decision_maker", "approver"))),
)


def add_milestone_as(ids: st.SearchStrategy[str]) -> st.SearchStrategy[AddMilestone]:
    return st.builds(
        AddMilestone,
        id=ids,
        title=titles,
        owner=owners,
        backup=helpers,
        approver=helpers,
        due=maybe_dates,
        deadline=st.sampled_from(("hard", "soft")),
        position=mostly(None, None, None, None, 0, 1, 3),
    )


def add_action_item_as(ids: st.SearchStrategy[str]) -> st.SearchStrategy[AddActionItem]:
    return st.builds(
        AddActionItem,
        id=ids,
        milestone_id=mostly("m1", "m1", "m2", "m3", "m9"),
        title=titles,
        owner=owners,
        due=maybe_dates,
        links=links,
        notes=texts,
        visibility=visibilities,
    )


add_milestone = add_milestone_as(mostly(*MILESTONES, "a1", "plan"))
add_action_item = add_action_item_as(mostly(*ITEMS, "m1"))
add_dependency = st.builds(
    AddDependency,
    id=mostly(*DEPENDENCIES, "s1"),
    from_id=mostly(*SCHEDULED, "s1"),
    to_id=mostly(*SCHEDULED, "nothing"),
    critical=st.booleans(),
    escalation_contact=helpers,
)
update_plan = st.builds(UpdatePlan, title=unset_or(titles), value_statement=unset_or(texts))
set_compelling_event = st.builds(
    SetCompellingEvent, name=mostly("Go-live", "Budget window", " "), date=dates
)
update_stakeholder = st.builds(
    UpdateStakeholder,
    id=st.sampled_from(STAKEHOLDERS),
    name=unset_or(mostly("Ana", " Ana ", "")),
    side=unset_or(sides),
    email=unset_or(st.sampled_from(("ana@buyer.example", "ANA@buyer.example", ""))),
    title=unset_or(texts),
)
remove_stakeholder = st.builds(RemoveStakeholder, id=st.sampled_from(STAKEHOLDERS))
update_milestone = st.builds(
    UpdateMilestone,
    id=st.sampled_from(MILESTONES),
    title=unset_or(titles),
    owner=unset_or(owners),
    backup=unset_or(helpers),
    approver=unset_or(helpers),
    status=unset_or(statuses),
)
reschedule_milestone = st.builds(
    RescheduleMilestone,
    id=st.sampled_from(MILESTONES),
    due=dates,
    reason=mostly("slipped", "CISO away", ""),
    contingency=texts,
)
complete_milestone = st.builds(CompleteMilestone, id=st.sampled_from(MILESTONES))
reorder_milestones = st.builds(
    ReorderMilestones,
    order=st.one_of(
        st.permutations(MILESTONES).map(list),
        st.lists(st.sampled_from(MILESTONES), max_size=3),
    ),
)
update_action_item = st.builds(
    UpdateActionItem,
    id=st.sampled_from(ITEMS),
    title=unset_or(titles),
    owner=unset_or(owners),
    links=unset_or(links),
    notes=unset_or(texts),
    visibility=unset_or(visibilities),
)
set_action_item_status = st.builds(SetActionItemStatus, id=st.sampled_from(ITEMS), status=statuses)
reschedule_action_item = st.builds(
    RescheduleActionItem,
    id=st.sampled_from(ITEMS),
    due=dates,
    reason=mostly("waiting on legal", ""),
)
remove_dependency = st.builds(RemoveDependency, id=st.sampled_from(DEPENDENCIES))
add_comment = st.builds(
    AddComment,
    id=mostly(*COMMENTS, "plan"),
    item_id=mostly("plan", *SCHEDULED, *COMMENTS, "d1", "s1", "nothing"),
    text=mostly("ok", "@ana@buyer.example please check", f"@{EDITOR} ping", "@x@y.example", " "),
)
tag_version = st.builds(
    TagVersion,
    name=mostly("sent to procurement", "CFO sign-off", "v2 draft", "42"),
    version=st.one_of(st.none(), st.integers(0, 40)),
)
levels = st.sampled_from(("low", "medium", "high"))
add_objective = st.builds(
    AddObjective,
    id=mostly(*OBJECTIVES, "m1"),
    title=titles,
    metric=texts,
    target=texts,
    by=maybe_dates,
)
update_objective = st.builds(
    UpdateObjective,
    id=mostly(*OBJECTIVES, "o9"),
    title=unset_or(titles),
    target=unset_or(texts),
    by=unset_or(maybe_dates),
)
add_risk = st.builds(
    AddRisk,
    id=mostly(*RISKS, "s1"),
    title=titles,
    likelihood=levels,
    impact=levels,
    mitigation=texts,
    owner=owners,
)
update_risk = st.builds(
    UpdateRisk,
    id=mostly(*RISKS, "r9"),
    title=unset_or(titles),
    likelihood=unset_or(levels),
    owner=unset_or(owners),
    status=unset_or(st.sampled_from(("open", "closed"))),
)
set_cadence = st.builds(
    SetCadence,
    kind=mostly("weekly operational", "bi-weekly executive snapshot", " "),
    channel=texts,
    reporter=helpers,
    next_review=maybe_dates,
)
post_status_update = st.builds(
    PostStatusUpdate,
    status=st.sampled_from(("on_track", "at_risk", "off_track")),
    progress=texts,
    blockers=texts,
    owner=helpers,
    id=mostly("", "", "", "u1"),
)
endorse_plan = st.builds(EndorsePlan, version=mostly(1, 5, 9, 0))
activate_plan = st.just(ActivatePlan())
close_plan = st.builds(
    ClosePlan, outcome=st.sampled_from(("won", "lost")), reason=mostly("signed", "")
)
add_member = st.builds(
    AddMember,
    email=mostly(EDITOR, VIEWER, "dana@buyer.example", "not-an-email"),
    side=sides,
    role=roles,
)
change_member_role = st.builds(
    ChangeMemberRole, email=st.sampled_from((OWNER, EDITOR, VIEWER)), role=roles
)
join_plan = st.builds(JoinPlan, side=sides, role=roles, invite=st.just("inv-1"))
revoke_member = st.builds(RevokeMember, email=st.sampled_from((OWNER, EDITOR, VIEWER)))
create_plan = st.builds(
    CreatePlan, title=titles, buyer_org=st.just("Acme"), seller_org=st.just("M"), side=sides
)

# Building dominates; closing the plan (which ends most editing) and membership stay rare.
commands = weighted(
    (12, add_dependency),
    (4, add_stakeholder),
    (6, add_milestone),
    (6, add_action_item),
    (2, update_plan),
    (1, set_compelling_event),
    (2, update_stakeholder),
    (2, remove_stakeholder),
    (3, update_milestone),
    (3, reschedule_milestone),
    (2, complete_milestone),
    (2, reorder_milestones),
    (3, update_action_item),
    (3, set_action_item_status),
    (2, reschedule_action_item),
    (3, remove_dependency),
    (6, add_comment),
    (2, tag_version),
    (2, add_objective),
    (1, update_objective),
    (3, add_risk),
    (2, update_risk),
    (1, set_cadence),
    (2, post_status_update),
    (2, endorse_plan),
    (1, activate_plan),
    (1, close_plan),
    (1, add_member),
    (1, change_member_role),
    (1, revoke_member),
    (1, join_plan),
    (1, create_plan),
)
actors = mostly(OWNER, OWNER, EDITOR, VIEWER)


def steps(command: st.SearchStrategy[Any], min_size: int, max_size: int) -> st.SearchStrategy[Any]:
    return st.lists(st.tuples(actors, command), min_size=min_size, max_size=max_size)


# A building phase first (m1..m3, then a1..a3, each with random fields, by a random actor, so
# some fail), so that the mixed phase after it finds items to update and dependencies to draw.
sequences = st.builds(
    lambda *phases: [step for phase in phases for step in phase],
    st.tuples(*(st.tuples(actors, add_milestone_as(st.just(i))) for i in MILESTONES)),
    st.tuples(*(st.tuples(actors, add_action_item_as(st.just(i))) for i in ITEMS)),
    steps(commands, 10, 40),
)


# -- playing a sequence ----------------------------------------------------------------------


@dataclass
class Step:
    actor: str
    at: datetime
    command: PlanCommand
    before: Plan
    after: Plan
    events: list[Event]
    error: MapstreamError | None
    untouched: bool  # the plan encodes the same after `decide` as before it


@dataclass
class Transition:
    before: Plan
    record: Recorded
    after: Plan


@dataclass
class Run:
    plan: Plan
    steps: list[Step] = field(default_factory=list)
    records: list[Recorded] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)


def play(sequence: Iterable[tuple[str, PlanCommand]]) -> Run:
    """Decide each command against the current plan; record and evolve what it causes."""
    run = Run(plan=Plan(id=PLAN_ID))
    for minute, (actor, command) in enumerate([*SETUP, *sequence]):
        at = NOW + timedelta(minutes=minute)
        before = run.plan
        snapshot = msgspec.json.encode(before)
        events: list[Event] = []
        error: MapstreamError | None = None
        try:
            events = decide(before, command, Context(actor, at, before.member(actor)))
        except MapstreamError as exc:
            error = exc
        untouched = msgspec.json.encode(before) == snapshot
        tag = type(command).__struct_config__.tag
        event(f"{tag}: {type(error).__name__ if error else 'accepted' if events else 'no-op'}")
        for e in events:
            record = Recorded(version=run.plan.version + 1, actor=actor, at=at, event=e)
            after = evolve(run.plan, record)
            run.transitions.append(Transition(run.plan, record, after))
            run.records.append(record)
            run.plan = after
        run.steps.append(Step(actor, at, command, before, run.plan, events, error, untouched))
    return run


def tag_of(e: Event) -> str:
    return str(type(e).__struct_config__.tag)


def stored(record: Recorded) -> Recorded:
    """The record as it reads back from the store: encoded, then decoded and upcast."""
    e = record.event
    body = msgspec.json.encode(e)
    return Recorded(
        record.version, record.actor, record.at, decode_event(tag_of(e), e.schema_version, body)
    )


# -- (a) state is the fold of its events -----------------------------------------------------


@given(sequences)
def test_the_state_after_each_accepted_command_is_the_fold_of_all_events_so_far(sequence):
    run = play(sequence)
    for step in run.steps:
        if step.events:
            so_far = run.records[: step.after.version]
            assert fold(so_far, plan_id=PLAN_ID) == step.after
    assert fold(map(stored, run.records), plan_id=PLAN_ID) == run.plan


# -- (b) a refused command changes nothing ---------------------------------------------------


@given(sequences)
def test_a_refused_command_changes_nothing_and_is_refused_again_the_same_way(sequence):
    run = play(sequence)
    for step in run.steps:
        assert step.untouched, f"deciding {step.command} changed the plan it was given"
        if step.error is None:
            continue
        assert step.events == []
        assert step.after is step.before
        ctx = Context(step.actor, step.at, step.before.member(step.actor))
        try:
            decide(step.before, step.command, ctx)
        except MapstreamError as again:
            assert again.body() == step.error.body()
        else:
            raise AssertionError(f"{step.command} was refused once, then accepted")


@given(sequences)
def test_evolving_shares_but_never_changes_an_earlier_state(sequence):
    run = play(sequence)
    for t in run.transitions:
        assert t.before == fold(run.records[: t.record.version - 1], plan_id=PLAN_ID)


# -- (c) invariants ---------------------------------------------------------------------------


def assert_acyclic(dependencies: Iterable[Dependency]) -> None:
    """Kahn's algorithm: every node can be taken once its prerequisites are taken."""
    edges = [(d.from_id, d.to_id) for d in dependencies]
    waiting_on: dict[str, int] = {}
    for a, b in edges:
        waiting_on.setdefault(a, 0)
        waiting_on[b] = waiting_on.get(b, 0) + 1
    ready = [n for n, count in waiting_on.items() if count == 0]
    taken = 0
    while ready:
        node = ready.pop()
        taken += 1
        for a, b in edges:
            if a == node:
                waiting_on[b] -= 1
                if waiting_on[b] == 0:
                    ready.append(b)
    assert taken == len(waiting_on), f"the dependency graph has a cycle: {edges}"


def assert_invariants(plan: Plan, records: list[Recorded]) -> None:
    assert [r.version for r in records] == list(range(1, len(records) + 1))
    assert plan.version == len(records)
    assert all(1 <= v <= plan.version for v in plan.tags.values())

    assert sorted(plan.milestone_order) == sorted(plan.milestones)
    assert len(set(plan.milestone_order)) == len(plan.milestone_order)

    assert_acyclic(plan.dependencies.values())
    scheduled = plan.milestones.keys() | plan.action_items.keys()
    for d in plan.dependencies.values():
        assert {d.from_id, d.to_id} <= scheduled
        assert d.from_id != d.to_id

    for m in plan.milestones.values():
        for who in (m.owner, m.backup, m.approver):
            assert who is None or who in plan.stakeholders
        if m.status != "done":
            for who in (m.owner, m.backup):
                assert who is None or plan.stakeholders[who].active, (m, who)
    for a in plan.action_items.values():
        assert a.owner is None or a.owner in plan.stakeholders
        assert a.milestone_id in plan.milestones
        assert (a.visibility == "internal") == (a.internal_to is not None)
    for r in plan.risks.values():
        assert r.owner is None or r.owner in plan.stakeholders
        if r.status == "open":
            assert r.owner is None or plan.stakeholders[r.owner].active, (r, r.owner)
    reporter = plan.cadence.reporter if plan.cadence is not None else None
    assert reporter is None or plan.stakeholders[reporter].active
    for u in plan.status_updates:
        assert u.owner is None or u.owner in plan.stakeholders
    for e in plan.endorsements:
        assert 1 <= e.version <= plan.version
        assert plan.members[e.by].side == "buyer" and e.stakeholder in plan.stakeholders

    ids = [
        *plan.milestones,
        *plan.action_items,
        *plan.stakeholders,
        *plan.dependencies,
        *plan.comments,
        *plan.objectives,
        *plan.risks,
        *(u.id for u in plan.status_updates),
    ]
    assert len(ids) == len(set(ids)), "an id names two items"
    assert "plan" not in ids
    for c in plan.comments.values():
        assert c.item_id == "plan" or plan.has_item(c.item_id)

    assert any(m.active and m.role == "owner" for m in plan.members.values())


def people_assigned(e: Event) -> list[str]:
    """Who an event makes owner, backup, approver or escalation contact."""
    match e:
        case MilestoneAdded():
            names = [e.owner, e.backup, e.approver]
        case MilestoneUpdated() | ActionItemUpdated():
            names = [e.changes.get(k) for k in ("owner", "backup", "approver")]
        case ActionItemAdded():
            names = [e.owner]
        case DependencyAdded():
            names = [e.escalation_contact]
        case RiskAdded() | StatusUpdatePosted():
            names = [e.owner]
        case RiskUpdated():
            names = [e.changes.get("owner")]
        case CadenceSet():
            names = [e.reporter]
        case _:
            names = []
    return [n for n in names if n is not None]


@given(sequences)
def test_the_plan_invariants_hold_after_every_command(sequence):
    run = play(sequence)
    for step in run.steps:
        assert_invariants(step.after, run.records[: step.after.version])


@given(sequences)
def test_people_are_assigned_only_while_they_are_stakeholders_and_done_stays_done(sequence):
    run = play(sequence)
    for t in run.transitions:
        for who in people_assigned(t.record.event):
            assert who in t.before.stakeholders and t.before.stakeholders[who].active, (
                f"{t.record.event} assigns {who!r}, who is not a current stakeholder"
            )
        for item_id, m in t.before.milestones.items():
            if m.status == "done":
                assert t.after.milestones[item_id].status == "done"
        if t.before.is_closed:
            assert t.after.status == t.before.status
        if isinstance(t.record.event, PlanEndorsed):
            endorser = t.before.stakeholders[t.record.event.stakeholder_id]
            assert may_endorse(endorser) and endorser.email == t.record.actor


# -- (d), (e) what is stored reads back equal ------------------------------------------------


@given(sequences)
def test_the_state_round_trips_through_json(sequence):
    run = play(sequence)
    for step in run.steps:
        encoded = msgspec.json.encode(step.after)
        assert msgspec.json.decode(encoded, type=Plan) == step.after


@given(sequences)
def test_every_event_reads_back_equal_from_its_stored_json(sequence):
    run = play(sequence)
    for record in run.records:
        assert stored(record).event == record.event


# -- (f) the hash chain ----------------------------------------------------------------------


def chain_of(records: list[Recorded]) -> list[Link]:
    links, previous = [], GENESIS
    for r in records:
        data = msgspec.json.encode(r.event)
        digest = data_digest(tag_of(r.event), r.actor, data)
        previous = event_hash(previous, PLAN_ID, r.version, r.at, digest)
        links.append(
            Link(
                PLAN_ID,
                r.version,
                r.at,
                digest,
                previous,
                tag_of(r.event),
                r.actor,
                msgspec.Raw(data),
            )
        )
    return links


def tampered(link: Link, how: str) -> Link:
    assert link.data is not None
    match how:
        case "data":
            body = {**msgspec.json.decode(bytes(link.data)), "tampered": True}
            return msgspec.structs.replace(link, data=msgspec.Raw(msgspec.json.encode(body)))
        case "actor":
            return msgspec.structs.replace(link, actor="mallory@evil.example")
        case "type":
            return msgspec.structs.replace(link, type="PlanClosed")
        case "time":
            return msgspec.structs.replace(
                link, recorded_at=link.recorded_at + timedelta(seconds=1)
            )
        case _:
            return msgspec.structs.replace(link, hash="f" * 64)


@given(
    sequences,
    st.integers(min_value=0),
    st.sampled_from(("data", "actor", "type", "time", "hash")),
)
def test_the_hash_chain_verifies_and_names_the_first_altered_event(sequence, which, how):
    run = play(sequence)
    links = chain_of(run.records)
    verdict = verify(links)
    assert (verdict.ok, verdict.version, verdict.head_hash) == (True, len(links), links[-1].hash)

    index = which % len(links)
    altered = [*links[:index], tampered(links[index], how), *links[index + 1 :]]
    broken = verify(altered)
    assert (broken.ok, broken.broken_at, broken.version) == (False, index + 1, index)


@given(sequences, st.integers(min_value=0))
def test_the_chain_still_verifies_with_bodies_withheld_but_not_with_an_event_missing(
    sequence, which
):
    run = play(sequence)
    links = chain_of(run.records)
    redacted = [
        msgspec.structs.replace(link, data=None) if i % 2 else link for i, link in enumerate(links)
    ]
    assert verify(redacted).ok

    index = which % len(links)
    gap = verify([*links[:index], *links[index + 1 :]])
    if index == len(links) - 1:
        assert gap.ok and gap.version == len(links) - 1  # a shorter chain is a valid prefix
    else:
        assert (gap.ok, gap.broken_at) == (False, index + 2)


# -- the dependency graph, on its own ----------------------------------------------------------

NODES = ("n1", "n2", "n3", "n4", "n5")


def path_exists(plan: Plan, start: str, goal: str) -> bool:
    frontier, seen = [start], set()
    while frontier:
        node = frontier.pop()
        if node == goal:
            return True
        seen.add(node)
        frontier += [
            d.to_id for d in plan.dependencies.values() if d.from_id == node and d.to_id not in seen
        ]
    return False


@given(st.lists(st.tuples(st.sampled_from(NODES), st.sampled_from(NODES)), max_size=30))
def test_add_dependency_refuses_exactly_the_edges_that_would_close_a_cycle(edges):
    plan = play([(OWNER, AddMilestone(id=n, title=f"Step {n}")) for n in NODES]).plan
    for number, (a, b) in enumerate(edges):
        command = AddDependency(id=f"d{number}", from_id=a, to_id=b)
        try:
            events = decide(plan, command, Context(OWNER, NOW, plan.member(OWNER)))
        except MapstreamError as error:
            assert error.body().get("rule") == "dependency_cycle" or error.code == "malformed"
            assert a == b if error.code == "malformed" else path_exists(plan, b, a)
            continue
        if not events:
            assert any((d.from_id, d.to_id) == (a, b) for d in plan.dependencies.values())
            continue
        assert not path_exists(plan, b, a)
        plan = evolve(plan, Recorded(plan.version + 1, OWNER, NOW, events[0]))
        assert_acyclic(plan.dependencies.values())


# -- internal items stay on their side ---------------------------------------------------------


def side_of(plan: Plan, item_id: str) -> str | None:
    """Which side alone may see `item_id`, worked out afresh from the plan."""
    if item_id in plan.action_items:
        return plan.action_items[item_id].internal_to
    if item_id in plan.comments:
        return side_of(plan, plan.comments[item_id].item_id)
    if item_id in plan.dependencies:
        d = plan.dependencies[item_id]
        return side_of(plan, d.from_id) or side_of(plan, d.to_id)
    return None


@given(sequences)
def test_neither_side_ever_sees_the_other_sides_internal_items(sequence):
    run = play(sequence)
    for step in run.steps:
        pairs: tuple[tuple[Side, Side], ...] = (("buyer", "seller"), ("seller", "buyer"))
        for side, other in pairs:
            view = view_for(step.after, side)
            shown = [*view.action_items, *view.comments, *view.dependencies]
            assert all(side_of(step.after, i) != other for i in shown)
            assert view.milestones == step.after.milestones
