"""Templates: plan skeletons that new plans are built from, and plans saved as skeletons.

A template holds personas (the roles a plan needs: champion, economic buyer, security, ...),
milestones and action items owned by personas, and dependencies, each item keyed by a short
template-local `key`. Due dates are counted in business days back from the compelling
event (`business_days_before`: 0 is the compelling event's day, 5 the working day a week
before, a negative number that many working days after; weekends are skipped). Applying a
template to a plan turns it into ordinary commands (`Seed`s), so every rule of the plan
applies to what a template builds. Pure: no I/O here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import msgspec

from domain.action_items import AddActionItem
from domain.base import Context
from domain.decider import decide_all, recorded_onto
from domain.dependencies import AddDependency
from domain.endorsements import persona_key
from domain.errors import Malformed
from domain.forks import Seed
from domain.members import MemberAdded
from domain.milestones import AddMilestone
from domain.model import DeadlineKind, Plan, PlanKind, Side
from domain.plans import PlanCreated
from domain.stakeholders import AddStakeholder
from domain.versions import slug
from domain.visibility import view_for

MAX_ITEMS = 200


class Persona(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A role the plan needs; applying the template reuses a stakeholder with this persona
    on this side, or adds one to be named."""

    key: str
    persona: str
    side: Side
    title: str = ""


class MilestoneSkeleton(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str
    title: str
    outcome: str = ""
    owner: str | None = None  # a persona key
    business_days_before: int | None = None
    deadline: DeadlineKind = "soft"


class ActionItemSkeleton(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str
    milestone: str  # a milestone key
    title: str
    owner: str | None = None  # a persona key
    business_days_before: int | None = None


class DependencySkeleton(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`to_key` waits on `from_key` (milestone or action item keys)."""

    from_key: str
    to_key: str
    critical: bool = False
    contingency: str = ""


class Skeleton(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a client sends to POST /templates."""

    name: str
    description: str = ""
    kind: PlanKind = "sales"
    personas: list[Persona] = []
    milestones: list[MilestoneSkeleton] = []
    action_items: list[ActionItemSkeleton] = []
    dependencies: list[DependencySkeleton] = []


class Template(msgspec.Struct, frozen=True):
    """A stored or built-in template: a skeleton with an id and an author."""

    id: str
    name: str
    description: str = ""
    kind: PlanKind = "sales"
    personas: list[Persona] = []
    milestones: list[MilestoneSkeleton] = []
    action_items: list[ActionItemSkeleton] = []
    dependencies: list[DependencySkeleton] = []
    builtin: bool = False
    created_by: str = ""
    created_at: datetime | None = None


def template_of(
    skeleton: Skeleton, template_id: str, created_by: str, created_at: datetime
) -> Template:
    return Template(
        id=template_id,
        created_by=created_by,
        created_at=created_at,
        **msgspec.structs.asdict(skeleton),
    )


# -- business days --------------------------------------------------------------------------


def is_business_day(day: date) -> bool:
    return day.weekday() < 5


def business_days_before(anchor: date, days: int) -> date:
    """The date `days` working days before `anchor` (after it when negative); 0 is `anchor`."""
    step = timedelta(days=-1 if days > 0 else 1)
    day = anchor
    for _ in range(abs(days)):
        day += step
        while not is_business_day(day):
            day += step
    return day


def business_days_between(day: date, anchor: date) -> int:
    """How many working days `day` lies before `anchor` (negative: after it), so that
    `business_days_before(anchor, business_days_between(day, anchor)) == day` for a working
    day. A weekend day counts as the Monday after it."""
    while not is_business_day(day):
        day += timedelta(days=1)
    if day <= anchor:
        span = (day + timedelta(days=n) for n in range((anchor - day).days))
        return sum(1 for d in span if is_business_day(d))
    span = (anchor + timedelta(days=n) for n in range(1, (day - anchor).days + 1))
    return -sum(1 for d in span if is_business_day(d))


# -- applying a template ---------------------------------------------------------------------


def _fresh(plan: Plan, taken: set[str], key: str, *alternatives: str) -> str:
    """`key` as an item id, else the first free alternative, else `key-2`, `key-3`, ...
    (free: neither the plan nor this batch has it)."""
    base = slug(key) or "item"

    def free(candidate: str) -> bool:
        return candidate != "plan" and candidate not in taken and not plan.has_item(candidate)

    candidates = [base, *(slug(a) for a in alternatives)]
    chosen = next((c for c in candidates if c and free(c)), None)
    n = 1
    while chosen is None:
        n += 1
        chosen = f"{base}-{n}" if free(f"{base}-{n}") else None
    taken.add(chosen)
    return chosen


def _person_title(persona: str) -> str:
    words = persona_key(persona)
    return words[:1].upper() + words[1:]


def instantiate(template: Template, plan: Plan, compelling: date | None) -> list[Seed]:
    """The commands that build `template` into `plan` (which exists), dated back from the
    `compelling` event's date (items get no date without one). Personas map to the plan's
    current stakeholders with that persona and side, or to new stakeholders to be named."""
    check(template)
    taken: set[str] = set()
    # items keep their keys where they can (people refer to them); personas take what is left
    ids = {k: _fresh(plan, taken, k) for k in [m.key for m in template.milestones]}
    ids |= {a.key: _fresh(plan, taken, a.key) for a in template.action_items}
    seeds: list[Seed] = []
    people: dict[str, str] = {}
    for p in template.personas:
        match = next(
            (
                s.id
                for s in plan.stakeholders.values()
                if s.active
                and s.side == p.side
                and persona_key(s.persona) == persona_key(p.persona)
            ),
            None,
        )
        if match is None:
            match = _fresh(plan, taken, p.key, f"{p.side} {p.key}")
            seeds.append(
                AddStakeholder(
                    id=match,
                    name=f"{_person_title(p.persona)} (to be named)",
                    side=p.side,
                    title=p.title,
                    persona=p.persona,
                )
            )
        people[p.key] = match

    def due(days: int | None) -> date | None:
        if days is None or compelling is None:
            return None
        return business_days_before(compelling, days)

    for m in template.milestones:
        seeds.append(
            AddMilestone(
                id=ids[m.key],
                title=m.title,
                outcome=m.outcome,
                owner=people.get(m.owner) if m.owner else None,
                due=due(m.business_days_before),
                deadline=m.deadline,
            )
        )
    for a in template.action_items:
        seeds.append(
            AddActionItem(
                id=ids[a.key],
                milestone_id=ids[a.milestone],
                title=a.title,
                owner=people.get(a.owner) if a.owner else None,
                due=due(a.business_days_before),
            )
        )
    for d in template.dependencies:
        seeds.append(
            AddDependency(
                id=_fresh(plan, taken, f"{d.from_key}-before-{d.to_key}"),
                from_id=ids[d.from_key],
                to_id=ids[d.to_key],
                critical=d.critical,
                contingency=d.contingency,
            )
        )
    return seeds


def check(template: Template | Skeleton) -> None:
    """Keys unique and every reference resolved; Malformed naming the field otherwise."""
    if not template.name.strip() or len(template.name) > 200:
        raise Malformed("`name` must be 1 to 200 characters", field="name")
    size = len(template.personas) + len(template.milestones) + len(template.action_items)
    if size + len(template.dependencies) > MAX_ITEMS:
        raise Malformed(f"a template holds at most {MAX_ITEMS} items", field="milestones")
    personas = [p.key for p in template.personas]
    items = [m.key for m in template.milestones] + [a.key for a in template.action_items]
    for field, keys in (("personas", personas), ("milestones", items)):
        if len(set(keys)) != len(keys) or not all(slug(k) for k in keys):
            raise Malformed(f"`{field}` keys must be distinct words", field=field)
    milestones = {m.key for m in template.milestones}
    owners = [m.owner for m in template.milestones] + [a.owner for a in template.action_items]
    if any(o is not None and o not in personas for o in owners):
        raise Malformed("an owner must be the key of one of the personas", field="personas")
    if any(a.milestone not in milestones for a in template.action_items):
        raise Malformed(
            "an action item's `milestone` must be a milestone key", field="action_items"
        )
    if any(d.from_key not in items or d.to_key not in items for d in template.dependencies):
        raise Malformed("a dependency links milestone or action item keys", field="dependencies")
    days = [m.business_days_before for m in template.milestones]
    days += [a.business_days_before for a in template.action_items]
    if any(d is not None and abs(d) > 2000 for d in days):
        raise Malformed("`business_days_before` is at most 2000", field="milestones")


def try_out(template: Template, compelling: date | None = None) -> None:
    """Build the template into a scratch plan with the decider: any rule it would break
    (an empty title, a dependency cycle, ...) is raised now, before anything is stored."""
    author = "template@mapstream.invalid"
    ctx = Context(author, datetime(2000, 1, 1, tzinfo=UTC))
    created = [
        PlanCreated(title="scratch", buyer_org="buyer", seller_org="seller", kind=template.kind),
        MemberAdded(email=author, side="seller", role="owner"),
    ]
    plan = recorded_onto(Plan(id="scratch"), created, ctx)
    decide_all(plan, instantiate(template, plan, compelling or date(2000, 6, 30)), ctx)


# -- saving a plan as a template --------------------------------------------------------------


def from_plan(plan: Plan, side: Side, name: str, description: str = "") -> Skeleton:
    """`plan` (as `side` sees it, internal items left out) as a skeleton: its personas,
    milestones, shared action items and their dependencies, dates as business days before
    its compelling event (no dates without one)."""
    view = view_for(plan, side)
    anchor = view.compelling_event.date if view.compelling_event is not None else None

    def days(day: date | None) -> int | None:
        return business_days_between(day, anchor) if day is not None and anchor else None

    personas: dict[tuple[str, Side], Persona] = {}
    owner_key: dict[str, str] = {}
    for s in view.stakeholders.values():
        if not s.active:
            continue
        persona = s.persona or s.title or f"{s.side} contact"
        found = personas.get((persona_key(persona), s.side))
        if found is None:
            key = slug(persona) or "person"
            if any(p.key == key for p in personas.values()):
                key = f"{s.side}-{key}"
            found = Persona(key=key, persona=persona, side=s.side, title=s.title)
            personas[(persona_key(persona), s.side)] = found
        owner_key[s.id] = found.key

    def owner(who: str | None) -> str | None:
        return owner_key.get(who) if who is not None else None

    milestones = [
        MilestoneSkeleton(
            key=m.id,
            title=m.title,
            outcome=m.outcome,
            owner=owner(m.owner),
            business_days_before=days(m.due),
            deadline=m.deadline,
        )
        for m in (view.milestones[i] for i in view.milestone_order)
    ]
    items = [
        ActionItemSkeleton(
            key=a.id,
            milestone=a.milestone_id,
            title=a.title,
            owner=owner(a.owner),
            business_days_before=days(a.due),
        )
        for a in view.action_items.values()
        if a.visibility == "shared"
    ]
    kept = {m.key for m in milestones} | {a.key for a in items}
    dependencies = [
        DependencySkeleton(d.from_id, d.to_id, d.critical, d.contingency)
        for d in view.dependencies.values()
        if d.from_id in kept and d.to_id in kept
    ]
    return Skeleton(
        name=name,
        description=description,
        kind=view.kind,
        personas=list(personas.values()),
        milestones=milestones,
        action_items=items,
        dependencies=dependencies,
    )


# -- the built-in templates ------------------------------------------------------------------


def _p(key: str, persona: str, side: Side, title: str = "") -> Persona:
    return Persona(key, persona, side, title)


def _m(
    key: str, title: str, outcome: str, owner: str, days: int, deadline: DeadlineKind = "soft"
) -> MilestoneSkeleton:
    return MilestoneSkeleton(key, title, outcome, owner, days, deadline)


def _a(key: str, milestone: str, title: str, owner: str, days: int) -> ActionItemSkeleton:
    return ActionItemSkeleton(key, milestone, title, owner, days)


def _d(
    before: str, after: str, critical: bool = False, contingency: str = ""
) -> DependencySkeleton:
    return DependencySkeleton(before, after, critical, contingency)


ENTERPRISE_EVALUATION = Template(
    id="enterprise-saas-evaluation",
    name="Enterprise SaaS evaluation",
    description=(
        "From agreeing what success looks like to the first team live: proof of value, "
        "business case, security, legal and procurement, worked back from your go-live date."
    ),
    kind="sales",
    builtin=True,
    personas=[
        _p("champion", "champion", "buyer", "Project lead"),
        _p("economic-buyer", "economic buyer", "buyer", "Budget holder"),
        _p("technical-evaluator", "technical evaluator", "buyer", "Technical lead"),
        _p("security", "security", "buyer", "Security lead"),
        _p("legal", "legal", "buyer", "Legal counsel"),
        _p("procurement", "procurement", "buyer", "Procurement manager"),
        _p("account-executive", "account executive", "seller", "Account executive"),
        _p("solutions-engineer", "solutions engineer", "seller", "Solutions engineer"),
        _p("customer-success", "customer success", "seller", "Customer success manager"),
    ],
    milestones=[
        _m(
            "success-criteria",
            "Agree the problem we are solving and how we measure success",
            "Success criteria are written down and agreed by our champion and budget holder",
            "champion",
            60,
        ),
        _m(
            "tailored-demo",
            "See our own use cases demonstrated",
            "Our evaluation team has seen our top three use cases working",
            "solutions-engineer",
            55,
        ),
        _m(
            "proof-of-value",
            "Prove the value on our own data",
            "The success criteria are met on our data, signed off by our technical lead",
            "technical-evaluator",
            45,
        ),
        _m(
            "business-case",
            "Approve the business case",
            "Our budget holder has approved the projected return and the budget",
            "economic-buyer",
            38,
        ),
        _m(
            "security-review",
            "Complete our security review",
            "Security has signed off the questionnaire, the SOC 2 report and the data flows",
            "security",
            32,
        ),
        _m(
            "legal-review",
            "Agree the contract terms",
            "Legal has agreed the MSA and the data processing agreement",
            "legal",
            25,
        ),
        _m(
            "procurement",
            "Set up the vendor in procurement",
            "The vendor is onboarded and the purchase order is raised",
            "procurement",
            15,
        ),
        _m(
            "signature",
            "Sign the agreement",
            "The order form is signed by both sides",
            "economic-buyer",
            10,
            "hard",
        ),
        _m(
            "kickoff",
            "Kick off the implementation",
            "Both teams have met and agreed the rollout plan",
            "customer-success",
            5,
        ),
        _m(
            "go-live",
            "Go live for the first team",
            "The first team works in the new system",
            "champion",
            0,
            "hard",
        ),
    ],
    action_items=[
        _a(
            "criteria-draft",
            "success-criteria",
            "Draft the success criteria",
            "account-executive",
            62,
        ),
        _a(
            "criteria-confirm",
            "success-criteria",
            "Confirm the success criteria with our budget holder",
            "champion",
            60,
        ),
        _a("demo-scenarios", "tailored-demo", "Send the three use cases to show", "champion", 58),
        _a(
            "pov-data",
            "proof-of-value",
            "Share a sample of our data for the proof of value",
            "technical-evaluator",
            52,
        ),
        _a(
            "pov-workspace",
            "proof-of-value",
            "Set up the proof-of-value workspace",
            "solutions-engineer",
            50,
        ),
        _a(
            "roi-model",
            "business-case",
            "Build the ROI model with our numbers",
            "account-executive",
            42,
        ),
        _a(
            "security-questionnaire",
            "security-review",
            "Send our security questionnaire",
            "security",
            40,
        ),
        _a(
            "soc2-report",
            "security-review",
            "Share the SOC 2 report and pen-test summary",
            "solutions-engineer",
            37,
        ),
        _a("msa-redlines", "legal-review", "Return our MSA redlines", "legal", 30),
        _a(
            "vendor-form",
            "procurement",
            "Complete the vendor onboarding form",
            "account-executive",
            18,
        ),
        _a(
            "rollout-plan",
            "kickoff",
            "Agree the rollout plan and the first team",
            "customer-success",
            5,
        ),
    ],
    dependencies=[
        _d("success-criteria", "proof-of-value", True),
        _d("proof-of-value", "business-case", True),
        _d("business-case", "signature", True),
        _d("security-review", "signature", True, "Start the legal review in parallel"),
        _d("legal-review", "signature", True),
        _d("procurement", "signature"),
        _d("signature", "kickoff", True),
        _d("kickoff", "go-live", True),
    ],
)

SECURITY_LEGAL_REVIEW = Template(
    id="security-legal-review",
    name="Security and legal review",
    description=(
        "Our security and legal teams review the vendor and the contract in parallel, "
        "worked back from the date we need the agreement signed."
    ),
    kind="sales",
    builtin=True,
    personas=[
        _p("champion", "champion", "buyer", "Project lead"),
        _p("economic-buyer", "economic buyer", "buyer", "Budget holder"),
        _p("security", "security", "buyer", "Security lead"),
        _p("legal", "legal", "buyer", "Legal counsel"),
        _p("account-executive", "account executive", "seller", "Account executive"),
        _p("solutions-engineer", "solutions engineer", "seller", "Solutions engineer"),
        _p("seller-legal", "legal", "seller", "Vendor counsel"),
    ],
    milestones=[
        _m(
            "review-scope",
            "Agree what security and legal need to review",
            "The reviewers, the documents and the deadlines are agreed",
            "champion",
            30,
        ),
        _m(
            "questionnaire",
            "Answer our security questionnaire",
            "Every question is answered and the answers are accepted",
            "solutions-engineer",
            25,
        ),
        _m(
            "evidence",
            "Review the SOC 2 report and pen-test summary",
            "Security has reviewed the evidence and listed any follow-ups",
            "security",
            20,
        ),
        _m(
            "dpa",
            "Agree the data processing agreement",
            "The DPA is agreed, sub-processors included",
            "legal",
            16,
        ),
        _m(
            "security-signoff",
            "Security signs off",
            "Security has approved the vendor in writing",
            "security",
            12,
            "hard",
        ),
        _m(
            "redlines",
            "Exchange the contract redlines",
            "Each side's redlines are answered",
            "legal",
            10,
        ),
        _m(
            "terms-agreed",
            "Agree the final contract terms",
            "Legal on both sides accepts the final version",
            "legal",
            6,
        ),
        _m(
            "signature",
            "Sign the agreement",
            "The agreement is signed by both sides",
            "economic-buyer",
            0,
            "hard",
        ),
    ],
    action_items=[
        _a(
            "name-reviewers",
            "review-scope",
            "Name our security and legal reviewers",
            "champion",
            30,
        ),
        _a(
            "send-questionnaire", "questionnaire", "Send our security questionnaire", "security", 28
        ),
        _a(
            "answer-questionnaire",
            "questionnaire",
            "Return the completed questionnaire",
            "solutions-engineer",
            25,
        ),
        _a(
            "share-evidence",
            "evidence",
            "Share the SOC 2 report and pen-test summary",
            "account-executive",
            23,
        ),
        _a("send-dpa", "dpa", "Send our DPA template", "legal", 18),
        _a("first-redlines", "redlines", "Send our first redlines", "legal", 12),
        _a("answer-redlines", "redlines", "Answer the redlines", "seller-legal", 10),
    ],
    dependencies=[
        _d("review-scope", "questionnaire"),
        _d("questionnaire", "security-signoff", True),
        _d("evidence", "security-signoff", True),
        _d("dpa", "terms-agreed"),
        _d("redlines", "terms-agreed", True),
        _d("security-signoff", "signature", True, "Sign with a security follow-up clause"),
        _d("terms-agreed", "signature", True),
    ],
)

ONBOARDING_KICKOFF = Template(
    id="customer-onboarding-kickoff",
    name="Customer onboarding kickoff",
    description=(
        "From the kickoff meeting to our first team live and the first value review, "
        "worked back from our go-live date."
    ),
    kind="onboarding",
    builtin=True,
    personas=[
        _p("champion", "champion", "buyer", "Project lead"),
        _p("executive-sponsor", "executive sponsor", "buyer", "Executive sponsor"),
        _p("technical-evaluator", "technical evaluator", "buyer", "IT lead"),
        _p("end-user", "end user", "buyer", "Team lead"),
        _p("customer-success", "customer success", "seller", "Customer success manager"),
        _p("solutions-engineer", "solutions engineer", "seller", "Implementation engineer"),
    ],
    milestones=[
        _m(
            "kickoff-meeting",
            "Hold the kickoff meeting",
            "Both teams know the goals, the people and the plan",
            "customer-success",
            40,
        ),
        _m(
            "success-plan",
            "Confirm our success criteria for the first 90 days",
            "The measurable goals are agreed with our executive sponsor",
            "executive-sponsor",
            37,
        ),
        _m(
            "access",
            "Set up admin access and single sign-on",
            "Our admins sign in with single sign-on",
            "technical-evaluator",
            32,
        ),
        _m(
            "data",
            "Connect our data",
            "Our data flows in and the numbers match our own reports",
            "technical-evaluator",
            25,
        ),
        _m(
            "configuration",
            "Configure the workspace for our process",
            "Our process is set up and reviewed by our project lead",
            "solutions-engineer",
            18,
        ),
        _m(
            "training",
            "Train the first team",
            "The first team is trained and knows where to get help",
            "customer-success",
            12,
        ),
        _m(
            "pilot",
            "Run the pilot with the first team",
            "The first team has used it for two weeks and given feedback",
            "champion",
            5,
        ),
        _m(
            "go-live",
            "Go live",
            "The first team works in the new system every day",
            "champion",
            0,
            "hard",
        ),
        _m(
            "value-review",
            "Review the first value delivered",
            "Our executive sponsor has seen progress against the success criteria",
            "executive-sponsor",
            -20,
        ),
    ],
    action_items=[
        _a(
            "invite-team",
            "kickoff-meeting",
            "Invite our project team to the kickoff",
            "champion",
            42,
        ),
        _a(
            "kickoff-agenda",
            "kickoff-meeting",
            "Prepare the kickoff agenda",
            "customer-success",
            41,
        ),
        _a("sso-metadata", "access", "Send the SSO metadata", "technical-evaluator", 34),
        _a("field-mapping", "data", "Map our fields to the new system", "technical-evaluator", 28),
        _a("book-training", "training", "Book the training sessions", "champion", 15),
        _a("pilot-feedback", "pilot", "Collect the pilot feedback", "end-user", 6),
    ],
    dependencies=[
        _d("kickoff-meeting", "success-plan"),
        _d("access", "data", True),
        _d("data", "configuration", True),
        _d("configuration", "training"),
        _d("training", "pilot", True),
        _d("pilot", "go-live", True, "Go live with the trained users only"),
        _d("go-live", "value-review"),
    ],
)

BUILTIN: dict[str, Template] = {
    t.id: t for t in (ENTERPRISE_EVALUATION, SECURITY_LEGAL_REVIEW, ONBOARDING_KICKOFF)
}
