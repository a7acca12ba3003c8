"""What changed between two versions of a plan, item by item, and which events did it.

Pure: the caller gives the two states (already cut to what the reader may see, with
`domain.visibility.view_for`) and the versions of the events in between, by item.
Every collection of the plan (`dict[str, Struct]` fields: milestones, action items,
stakeholders, ...) is compared item by item; every other field is a field of the plan.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from domain.model import Plan
from projections.audit import COLLECTIONS, Change, items_of, title_of

# Bookkeeping, not content: every event changes them.
_PLAN_SKIP = frozenset({"id", "version", "updated_at", "last_activity"})
# Derived history that the field it explains already shows (a reschedule changes `due`).
_ITEM_SKIP = frozenset({"id", "slips"})


class ItemDiff(msgspec.Struct, frozen=True):
    kind: str  # plan, milestone, action item, ...
    id: str
    title: str
    change: Literal["added", "removed", "changed"]
    fields: list[Change] = []
    versions: list[int] = []  # the events in the range that were about this item


def _collections() -> dict[str, str]:
    """Plan fields holding items (`dict[str, SomeStruct]`), and what one item is called."""
    out: dict[str, str] = {}
    for f in msgspec.structs.fields(Plan):
        args = typing.get_args(f.type)
        if typing.get_origin(f.type) is dict and len(args) == 2:
            value = args[1]
            if isinstance(value, type) and issubclass(value, msgspec.Struct):
                out[f.name] = COLLECTIONS.get(f.name, f.name.rstrip("s").replace("_", " "))
    return out


ITEM_FIELDS = _collections()


def _fields(before: Any, after: Any, skip: frozenset[str]) -> list[Change]:
    a = msgspec.to_builtins(before)
    b = msgspec.to_builtins(after)
    return [
        Change(name, a.get(name), b.get(name))
        for name in {**a, **b}
        if name not in skip and a.get(name) != b.get(name)
    ]


def diff(before: Plan, after: Plan, versions: Mapping[str, list[int]]) -> list[ItemDiff]:
    """Items added, removed and changed from `before` to `after` ("plan" first)."""
    out: list[ItemDiff] = []
    plan_fields = [
        c
        for c in _fields(before, after, _PLAN_SKIP | frozenset(ITEM_FIELDS))
        if c.field not in ITEM_FIELDS
    ]
    if plan_fields:
        out.append(
            ItemDiff("plan", "plan", after.title, "changed", plan_fields, versions.get("plan", []))
        )
    for field, kind in ITEM_FIELDS.items():
        old: dict[str, Any] = getattr(before, field)
        new: dict[str, Any] = getattr(after, field)
        for item_id in {**old, **new}:
            was, now = old.get(item_id), new.get(item_id)
            seen = versions.get(item_id, [])
            if was is None and now is not None:
                out.append(ItemDiff(kind, item_id, title_of(after, item_id), "added", [], seen))
            elif now is None and was is not None:
                out.append(ItemDiff(kind, item_id, title_of(before, item_id), "removed", [], seen))
            elif was != now:
                changed = _fields(was, now, _ITEM_SKIP)
                if changed:
                    title = title_of(after, item_id)
                    out.append(ItemDiff(kind, item_id, title, "changed", changed, seen))
    return out


def versions_by_item(events: Iterable[tuple[int, Any]]) -> dict[str, list[int]]:
    """(version, decoded event) pairs -> the versions about each item (its main item only)."""
    out: dict[str, list[int]] = {}
    for version, event in events:
        out.setdefault(items_of(event)[0], []).append(version)
    return out
