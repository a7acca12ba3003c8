"""The demo plan: a realistic mid-flight enterprise deal, created once, idempotently.

Contoso (buyer) evaluates Northwind (seller) against a go-live 60 days out: 10 milestones
with owners on both sides, two done, the security sign-off slipped a week, critical
dependencies from security to signature to go-live, objectives with a projected ROI, risks,
a weekly cadence, a status update after the last meeting and the champion's endorsement.
One buyer action item is two days overdue, so the plan's health reads "at risk".
Versions 1-29 are the ones the README's auditor examples quote; the rest follows them.
"""

from __future__ import annotations

from datetime import date, timedelta

from domain import action_items as ai
from domain import cadence as cad
from domain import comments as co
from domain import dependencies as dep
from domain import endorsements as en
from domain import members as mem
from domain import milestones as ms
from domain import objectives as ob
from domain import plans as pl
from domain import risks as rk
from domain import stakeholders as sh
from domain import status_updates as su
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
    cmds += _definitions_of_done()
    cmds += [
        (
            SELLER,
            sh.AddStakeholder(
                id="lena",
                name="Lena Ortiz",
                side="buyer",
                title="Legal Counsel",
                persona="legal",
                influence="approver",
            ),
        ),
        (SELLER, ms.UpdateMilestone(id="legal", owner="lena", backup="bianca")),
        (
            SELLER,
            ai.AddActionItem(
                id="dpq",
                milestone_id="security",
                title="Return the data-processing questionnaire",
                owner="ramesh",
                due=d(-2),
            ),
        ),
        (
            SELLER,
            ai.AddActionItem(
                id="redlines",
                milestone_id="legal",
                title="Send the MSA redlines",
                owner="lena",
                due=d(16),
            ),
        ),
        (
            SELLER,
            ai.AddActionItem(
                id="roi",
                milestone_id="business-case",
                title="Build the ROI model with Contoso's numbers",
                owner="sam",
                due=d(21),
                links=["https://docs.example/contoso-roi"],
            ),
        ),
        (
            SELLER,
            ai.AddActionItem(
                id="vendor-form",
                milestone_id="procurement",
                title="Complete the vendor onboarding form",
                owner="sam",
                due=d(28),
            ),
        ),
        (
            SELLER,
            dep.AddDependency(
                id="dep-legal-sign",
                from_id="legal",
                to_id="signature",
                critical=True,
            ),
        ),
        (
            SELLER,
            dep.AddDependency(
                id="dep-bc-sign",
                from_id="business-case",
                to_id="signature",
                critical=True,
            ),
        ),
        (
            SELLER,
            dep.AddDependency(
                id="dep-sign-kickoff",
                from_id="signature",
                to_id="kickoff",
                critical=True,
            ),
        ),
        (
            SELLER,
            dep.AddDependency(
                id="dep-kickoff-live",
                from_id="kickoff",
                to_id="go-live",
                critical=True,
                contingency="Go live with the finance team only",
                escalation_contact="carl",
            ),
        ),
        (
            SELLER,
            ob.AddObjective(
                id="close-faster",
                title="Close the quarter's revenue report faster",
                metric="days to publish the revenue report",
                baseline="9 days",
                target="2 days",
                by=go_live,
                projected_outcome="about 600 analyst hours a year back (USD 180k in year one)",
            ),
        ),
        (
            BUYER,
            ob.AddObjective(
                id="forecast",
                title="Trust the forecast",
                metric="forecast accuracy at week 8",
                baseline="72 %",
                target="90 %",
                by=d(150),
                projected_outcome="board sees one number, no reconciliation deck",
            ),
        ),
        (
            SELLER,
            rk.AddRisk(
                id="risk-security",
                title="Security sign-off slips past the signature date",
                likelihood="high",
                impact="high",
                owner="sam",
                mitigation="Legal review runs in parallel; Carl escalates to the CISO if needed",
            ),
        ),
        (
            BUYER,
            rk.AddRisk(
                id="risk-budget",
                title="Q3 budget freeze",
                likelihood="medium",
                impact="high",
                owner="carl",
                mitigation="Business case approved before the freeze on the 1st",
            ),
        ),
        (
            SELLER,
            cad.SetCadence(
                kind="weekly operational, bi-weekly executive snapshot",
                channel="Teams, Tuesdays 10:00",
                reporter="sam",
                next_review=d(4),
            ),
        ),
        (
            SELLER,
            su.PostStatusUpdate(
                id="update-1",
                status="at_risk",
                owner="sam",
                progress="PoC workspace ready; pipeline extract shared",
                blockers="Security sign-off waits on the SOC 2 report; questionnaire overdue",
                next_actions="Sam sends the SOC 2 report; Ramesh returns the questionnaire by Friday",
            ),
        ),
        (
            BUYER,
            co.AddComment(
                id="c2",
                item_id="update-1",
                text="Agreed. Ramesh is on the questionnaire today.",
            ),
        ),
    ]
    # the champion endorses the plan as it reads now: each command above caused one event,
    # and create_plan two, so the plan is at version len(cmds) + 1
    cmds.append((BUYER, en.EndorsePlan(version=len(cmds) + 1)))
    return cmds


def _definitions_of_done() -> list[tuple[str, PlanCommand]]:
    """What "done" means for each open milestone (the kickoff still lacks one)."""
    outcomes = {
        "poc": "Contoso's pipeline data loads nightly and the three success criteria are met",
        "security": "Ramesh signs off the SOC 2 report and the data-processing questionnaire",
        "legal": "Both legal teams accept the MSA and the DPA",
        "business-case": "Carl approves the ROI model and the budget",
        "procurement": "Northwind is a Contoso vendor and the PO is raised",
        "signature": "The order form is signed by Carl and Northwind",
        "go-live": "The Q3 board pack is built from Northwind's numbers",
    }
    return [(SELLER, ms.UpdateMilestone(id=m, outcome=o)) for m, o in outcomes.items()]


async def ensure_demo(service: PlanService, today: date) -> bool:
    """Create the demo plan unless it exists. Returns True when it was created now."""
    if await service.store.load_plan(DEMO_PLAN_ID) is not None:
        return False
    for n, (actor, command) in enumerate(demo_commands(today)):
        await service.handle(DEMO_PLAN_ID, command, actor, command_id=f"demo-{n}")
    return True
