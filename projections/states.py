"""Plan states while following the global log: each event seen with the plan just before it.

Events of one plan reach a log reader in version order (appends of a plan are serialised by
its row lock, so a later version always has a later transaction). A projection keeps the
last state of the plans it saw recently; when an event does not follow the state it holds
(first sight, eviction, a reset after a failed commit) it asks `load` for the state at the
version before, which the server answers from snapshots.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from domain.base import Recorded
from domain.decider import decode_event
from domain.model import Plan
from projections.runner import LogEvent

Loader = Callable[[str, int], Awaitable[Plan]]


def recorded_of(e: LogEvent) -> Recorded:
    """The event as the fold sees it, upcast from older schema versions on the way."""
    return Recorded(
        e.version, e.actor, e.recorded_at, decode_event(e.type, e.schema_version, e.data)
    )


class PlanStates:
    """An LRU of plan states, each at the version of the last event applied to it."""

    def __init__(self, load: Loader, capacity: int = 1024) -> None:
        self._load = load
        self._capacity = capacity
        self._states: OrderedDict[str, Plan] = OrderedDict()
        self.loads = 0  # how often a state had to be loaded (a measure of cache misses)

    async def before(self, e: LogEvent) -> Plan:
        """The plan as it was just before `e`. May raise what `load` raises."""
        cached = self._states.get(e.plan_id)
        if cached is not None and cached.version == e.version - 1:
            self._states.move_to_end(e.plan_id)
            return cached
        if e.version == 1:
            return Plan(id=e.plan_id)
        self.loads += 1
        return await self._load(e.plan_id, e.version - 1)

    def advance(self, plan: Plan) -> None:
        """Remember `plan` as its plan's latest state."""
        self._states[plan.id] = plan
        self._states.move_to_end(plan.id)
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)

    def forget(self, plan_id: str) -> None:
        self._states.pop(plan_id, None)

    def reset(self) -> None:
        self._states.clear()
