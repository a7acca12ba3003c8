"""Random plan histories: (actor, command) scripts by a seller owner and a buyer editor.

Commands may be refused (unknown ids, closed plan, ...): scripts skip those, as a client would.
"""

from __future__ import annotations

import uuid
from datetime import date

from hypothesis import strategies as st

from domain import action_items as ai
from domain import comments as co
from domain import dependencies as dep
from domain import members as mem
from domain import milestones as ms
from domain import plans as pl
from domain import stakeholders as sh
from domain import versions as ver
from domain.decider import PlanCommand
from domain.errors import MapstreamError
from server.plans import PlanService

OWNER = "olivia@seller.example"
BUYER = "bob@buyer.example"
MILESTONES = ["m1", "m2", "m3", "m4"]
ITEMS = ["a1", "a2", "a3"]
PEOPLE = ["ana", "sid", "pat"]
DEPS = ["d1", "d2"]

dates = st.dates(date(2026, 1, 1), date(2026, 12, 31))
actors = st.sampled_from([OWNER, OWNER, BUYER])

commands: st.SearchStrategy[PlanCommand] = st.one_of(
    st.builds(
        co.AddComment,
        item_id=st.sampled_from(["plan", *MILESTONES, *ITEMS]),
        text=st.sampled_from(["Looks good", f"@{BUYER} can you check?"]),
    ),
    st.builds(
        ms.AddMilestone,
        id=st.sampled_from(MILESTONES[::-1]),
        title=st.sampled_from(["Security sign-off", "Legal review", "Go-live"]),
        owner=st.sampled_from([None, *PEOPLE]),
        due=st.none() | dates,
    ),
    st.builds(
        ms.UpdateMilestone,
        id=st.sampled_from(MILESTONES),
        title=st.sampled_from(["Renamed", "Security sign-off"]),
        owner=st.sampled_from([None, *PEOPLE]),
    ),
    st.builds(
        ms.RescheduleMilestone,
        id=st.sampled_from(MILESTONES),
        due=dates,
        reason=st.just("waiting for the SOC 2 report"),
    ),
    st.builds(ms.CompleteMilestone, id=st.sampled_from(MILESTONES)),
    st.builds(ms.ReorderMilestones, order=st.permutations(MILESTONES[:2]).map(list)),
    st.builds(
        sh.AddStakeholder,
        id=st.sampled_from(PEOPLE),
        name=st.sampled_from(["Ana Ruiz", "Sid Park", "Pat Lee"]),
        side=st.sampled_from(["buyer", "seller"]),
        persona=st.sampled_from(["", "champion", "security"]),
        email=st.sampled_from(["", BUYER, OWNER]),
    ),
    st.builds(sh.RemoveStakeholder, id=st.sampled_from(PEOPLE)),
    st.builds(
        ai.AddActionItem,
        id=st.sampled_from(ITEMS),
        milestone_id=st.sampled_from(MILESTONES),
        title=st.sampled_from(["Send the report", "Book the call"]),
        visibility=st.sampled_from(["shared", "shared", "internal"]),
        due=st.none() | dates,
    ),
    st.builds(
        ai.SetActionItemStatus,
        id=st.sampled_from(ITEMS),
        status=st.sampled_from(["not_started", "in_progress", "blocked", "done"]),
    ),
    st.builds(
        ai.RescheduleActionItem, id=st.sampled_from(ITEMS), due=dates, reason=st.just("holidays")
    ),
    st.builds(
        ai.UpdateActionItem,
        id=st.sampled_from(ITEMS),
        visibility=st.sampled_from(["shared", "internal"]),
    ),
    st.builds(
        dep.AddDependency,
        id=st.sampled_from(DEPS),
        from_id=st.sampled_from(MILESTONES + ITEMS),
        to_id=st.sampled_from(MILESTONES + ITEMS),
        critical=st.booleans(),
    ),
    st.builds(dep.RemoveDependency, id=st.sampled_from(DEPS)),
    st.builds(ver.TagVersion, name=st.sampled_from(["sent to procurement", "signed off by CFO"])),
    st.builds(pl.UpdatePlan, title=st.sampled_from(["Evaluation", "Renewal"])),
    st.just(pl.ActivatePlan()),
    st.builds(pl.ClosePlan, outcome=st.sampled_from(["won", "lost"]), reason=st.just("signed")),
)

scripts = st.lists(st.tuples(actors, commands), min_size=8, max_size=24)


# Enough of a plan that most random commands find the items they name.
SETUP: list[PlanCommand] = [
    sh.AddStakeholder(id="ana", name="Ana Ruiz", side="buyer", persona="champion", email=BUYER),
    sh.AddStakeholder(id="sid", name="Sid Park", side="seller", persona="account executive"),
    ms.AddMilestone(id="m1", title="Security sign-off", owner="ana", due=date(2026, 6, 16)),
    ms.AddMilestone(id="m2", title="Legal review", owner="sid"),
    ai.AddActionItem(id="a1", milestone_id="m1", title="Send the SOC 2 report", owner="sid"),
]


async def start_plan(service: PlanService, *, setup: bool = False) -> str:
    """A new plan with its two members (and with `setup`, SETUP); returns its id."""
    plan_id = f"h{uuid.uuid4().hex[:12]}"
    await service.handle(
        plan_id,
        pl.CreatePlan(
            title="Acme evaluates Northwind",
            buyer_org="Acme",
            seller_org="Northwind",
            side="seller",
            name="Olivia",
        ),
        OWNER,
    )
    await service.handle(
        plan_id, mem.AddMember(email=BUYER, side="buyer", role="editor", name="Bob"), OWNER
    )
    for command in SETUP if setup else []:
        await service.handle(plan_id, command, OWNER)
    return plan_id


async def play(service: PlanService, plan_id: str, script: list[tuple[str, PlanCommand]]) -> int:
    """Apply the script, skipping refused commands. Returns how many were accepted."""
    accepted = 0
    for actor, command in script:
        try:
            await service.handle(plan_id, command, actor, command_id=uuid.uuid4().hex)
        except MapstreamError:
            continue
        accepted += 1
    return accepted
