"""The inline plan-state projection: the fold of a plan's events, stored with each append.

`PlanService` writes it in the append transaction (so a client reads its own writes); this
module says what it is and how to rebuild one from the events alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from domain.base import Recorded
from domain.decider import fold
from domain.model import Plan


def rebuild(plan_id: str, events: Iterable[Recorded]) -> Plan:
    """The state a plan's stored events add up to; it must equal the stored projection."""
    return fold(events, plan_id=plan_id)
