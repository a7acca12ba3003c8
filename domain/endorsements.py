"""Endorsement: a buyer decision maker (or the champion) stands behind the plan as of a
version. A soft commitment, recorded as an event like everything else."""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.base import Command, Context, Event
from domain.errors import DomainError, Malformed
from domain.model import Endorsement, Plan, Stakeholder
from domain.rules import require_open

ENDORSING_PERSONAS = frozenset({"champion"})


class EndorsePlan(Command, frozen=True, tag="endorse_plan"):
    """Endorse the plan as it reads at `version` (the version the endorser looked at)."""

    permission = "comment"
    version: int


class PlanEndorsed(Event, frozen=True, tag="PlanEndorsed"):
    version: int
    stakeholder_id: str = ""


def persona_key(persona: str) -> str:
    """`Economic_Buyer`, `economic-buyer` and ` economic buyer ` are one persona."""
    return " ".join(persona.lower().replace("_", " ").replace("-", " ").split())


def may_endorse(s: Stakeholder) -> bool:
    return s.side == "buyer" and (
        s.influence == "decision_maker" or persona_key(s.persona) in ENDORSING_PERSONAS
    )


def endorser(plan: Plan, email: str) -> Stakeholder | None:
    """The active buyer stakeholder with the member's email who may endorse, if any."""
    for s in plan.stakeholders.values():
        if s.active and s.email and s.email == email and may_endorse(s):
            return s
    return None


def endorse_plan(plan: Plan, cmd: EndorsePlan, ctx: Context) -> list[Event]:
    require_open(plan)
    if not 1 <= cmd.version <= plan.version:
        raise Malformed(f"`version` must be between 1 and {plan.version}", field="version")
    if ctx.member is None or ctx.member.side == "seller":
        raise DomainError(
            "seller_cannot_endorse", "only the buyer side endorses a plan: the seller proposes it"
        )
    who = endorser(plan, ctx.actor)
    if who is None:
        raise DomainError(
            "endorser_not_decision_maker",
            f"{ctx.actor} is not a buyer stakeholder who is a decision maker or the champion: "
            "add them as a stakeholder with that influence or persona first",
        )
    if any(e.by == ctx.actor and e.version == cmd.version for e in plan.endorsements):
        return []
    return [PlanEndorsed(version=cmd.version, stakeholder_id=who.id)]


def plan_endorsed(plan: Plan, e: PlanEndorsed, actor: str, at: datetime) -> Plan:
    endorsement = Endorsement(by=actor, version=e.version, at=at, stakeholder=e.stakeholder_id)
    return msgspec.structs.replace(plan, endorsements=(*plan.endorsements, endorsement))
