"""The demo plan: a realistic mid-flight enterprise deal, created once, idempotently."""

from __future__ import annotations

from datetime import date, timedelta

from domain import action_items as ai
from domain import comments as co
from domain import dependencies as dep
from domain import members as mem
from domain import milestones as ms
from domain import plans as pl
from domain import stakeholders as sh
from domain.decider import PlanCommand
from domain.model import CompellingEvent
from server.plans import PlanService

DEMO_PLAN_ID = "demo"
SELLER = "sam.seller@northwind.example"
BUYER = "bianca.buyer@contoso.example"


def demo_commands(today: date) -> list[tuple[str, PlanCommand]]:
    """(actor, command) pairs that build the demo plan, dates relative to `today`."""

    def d(days: int) -> date:
        return today + timedelta(days=days)

    go_live = d(60)
    cmds: list[tuple[str, PlanCommand]] = [
        (
            SELLER,
            pl.CreatePlan(
                title="Contoso x Northwind: analytics platform evaluation",
                buyer_org="Contoso",
                seller_org="Northwind",
                side="seller",
                name="Sam Seller",
                value_statement=(
                    "Assist Contoso with their evaluation of Northwind as they work toward "
                    f"a single source of revenue truth by {go_live:%d %b %Y}"
                ),
                compelling_event=CompellingEvent("Q3 board reporting go-live", go_live),
            ),
        ),
        (SELLER, mem.AddMember(email=BUYER, side="buyer", role="editor", name="Bianca Buyer")),
        (
            SELLER,
            sh.AddStakeholder(
                id="sam",
                name="Sam Seller",
                side="seller",
                title="Account Executive",
                persona="account executive",
                email=SELLER,
            ),
        ),
        (
            SELLER,
            sh.AddStakeholder(
                id="sofia",
                name="Sofia Engineer",
                side="seller",
                title="Solutions Engineer",
                persona="solutions engineer",
            ),
        ),
        (
            SELLER,
            sh.AddStakeholder(
                id="bianca",
                name="Bianca Buyer",
                side="buyer",
                title="Director of RevOps",
                persona="champion",
                influence="influencer",
                email=BUYER,
            ),
        ),
        (
            SELLER,
            sh.AddStakeholder(
                id="carl",
                name="Carl CFO",
                side="buyer",
                title="CFO",
                persona="economic buyer",
                influence="decision_maker",
            ),
        ),
        (
            SELLER,
            sh.AddStakeholder(
                id="ramesh",
                name="Ramesh Iyer",
                side="buyer",
                title="Security Lead",
                persona="security",
                influence="approver",
            ),
        ),
    ]
    milestones = [
        ("discovery", "Agree on success criteria", "sam", -20, "done"),
        ("demo", "Tailored demo for the RevOps team", "sofia", -10, "done"),
        ("poc", "Proof of concept on Contoso data", "sofia", 5, None),
        ("security", "Security sign-off", "ramesh", 12, None),
        ("legal", "Legal review of the MSA", "bianca", 20, None),
        ("business-case", "Business case approved by the CFO", "carl", 25, None),
        ("procurement", "Procurement and vendor onboarding", "bianca", 32, None),
        ("signature", "Contract signed", "carl", 38, None),
        ("kickoff", "Implementation kickoff", "sam", 45, None),
        ("go-live", "Go-live for Q3 board reporting", "bianca", 60, None),
    ]
    for mid, title, owner, days, _ in milestones:
        cmds.append(
            (
                SELLER,
                ms.AddMilestone(
                    id=mid,
                    title=title,
                    owner=owner,
                    due=d(days),
                    deadline="hard" if mid == "go-live" else "soft",
                ),
            )
        )
    for mid, *_rest in milestones:
        if _rest[-1] == "done":
            cmds.append((SELLER, ms.CompleteMilestone(id=mid)))
    cmds += [
        (
            SELLER,
            ai.AddActionItem(
                id="poc-data",
                milestone_id="poc",
                title="Share an anonymised pipeline extract",
                owner="bianca",
                due=d(2),
            ),
        ),
        (
            SELLER,
            ai.AddActionItem(
                id="poc-env",
                milestone_id="poc",
                title="Provision the PoC workspace",
                owner="sofia",
                due=d(1),
            ),
        ),
        (
            SELLER,
            ai.AddActionItem(
                id="soc2",
                milestone_id="security",
                title="Send the SOC 2 Type II report",
                owner="sam",
                due=d(3),
            ),
        ),
        (
            SELLER,
            ai.AddActionItem(
                id="disc-note",
                milestone_id="business-case",
                title="Prepare discount approval",
                owner="sam",
                visibility="internal",
            ),
        ),
        (
            SELLER,
            dep.AddDependency(
                id="dep-sec-sign",
                from_id="security",
                to_id="signature",
                critical=True,
                contingency="Start legal review in parallel",
                escalation_contact="carl",
            ),
        ),
        (
            SELLER,
            dep.AddDependency(id="dep-poc-bc", from_id="poc", to_id="business-case", critical=True),
        ),
        (SELLER, pl.ActivatePlan()),
        (
            SELLER,
            ms.RescheduleMilestone(
                id="security",
                due=d(19),
                reason="waiting for the SOC 2 report",
                contingency="Legal review starts in parallel",
            ),
        ),
        (
            SELLER,
            co.AddComment(
                id="c1",
                item_id="security",
                text=f"@{BUYER} can Ramesh review the SOC 2 report this week?",
            ),
        ),
    ]
    return cmds


async def ensure_demo(service: PlanService, today: date) -> bool:
    """Create the demo plan unless it exists. Returns True when it was created now."""
    if await service.store.load_plan(DEMO_PLAN_ID) is not None:
        return False
    for n, (actor, command) in enumerate(demo_commands(today)):
        await service.handle(DEMO_PLAN_ID, command, actor, command_id=f"demo-{n}")
    return True
