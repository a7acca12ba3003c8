"""The communication plan: how often the two sides meet, where, who reports, when next."""

from __future__ import annotations

from datetime import date

import msgspec

from domain.base import Command, Context, Event
from domain.model import Cadence, Plan
from domain.rules import require_open, require_owner, require_text


class SetCadence(Command, frozen=True, tag="set_cadence"):
    """E.g. `{kind: "weekly operational", channel: "Teams", reporter: "sam", next_review}`."""

    kind: str
    channel: str = ""
    reporter: str | None = None
    next_review: date | None = None


class CadenceSet(Event, frozen=True, tag="CadenceSet"):
    kind: str
    channel: str = ""
    reporter: str | None = None
    next_review: date | None = None
    previous: Cadence | None = None


def set_cadence(plan: Plan, cmd: SetCadence, ctx: Context) -> list[Event]:
    require_open(plan)
    require_owner(plan, cmd.reporter, "reporter")
    new = Cadence(
        kind=require_text(cmd.kind, "kind"),
        channel=cmd.channel.strip(),
        reporter=cmd.reporter,
        next_review=cmd.next_review,
    )
    if new == plan.cadence:
        return []
    return [
        CadenceSet(
            kind=new.kind,
            channel=new.channel,
            reporter=new.reporter,
            next_review=new.next_review,
            previous=plan.cadence,
        )
    ]


def cadence_set(plan: Plan, e: CadenceSet) -> Plan:
    cadence = Cadence(
        kind=e.kind, channel=e.channel, reporter=e.reporter, next_review=e.next_review
    )
    return msgspec.structs.replace(plan, cadence=cadence)
