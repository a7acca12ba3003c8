"""Schema evolution: old event shapes are lifted when read, never rewritten in the store.

An upcaster takes the stored JSON object of `(type, schema_version)` and returns the object
of `schema_version + 1`. `upcast` applies them until the current version is reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


def upcast(
    event_type: str, schema_version: int, data: dict[str, Any], target: int
) -> dict[str, Any]:
    while schema_version < target:
        step = UPCASTERS.get((event_type, schema_version))
        if step is None:
            raise LookupError(f"no upcaster for {event_type} v{schema_version}")
        data = step(data)
        schema_version += 1
    return data


_V1_STATUS = {"todo": "not_started", "doing": "in_progress", "blocked": "blocked", "done": "done"}


@upcaster("ActionItemStatusChanged", 1)
def _status_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v1 used the tracker words todo/doing; v2 uses the plan words and records `previous`."""
    return {**data, "status": _V1_STATUS[data["status"]], "previous": None}
