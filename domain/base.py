"""What every command and event shares, and the context a decision is made in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

import msgspec

from domain.model import Member

Permission = Literal["read", "comment", "edit", "manage"]


class Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    """A request to change a plan. Subclasses set `tag` to the snake_case wire name."""

    permission: ClassVar[Permission] = "edit"
    # True for commands only the server issues (creating, joining, forking): clients cannot
    # send them to POST /plans/{id}/commands or over the socket (see decider.COMMAND_TYPES).
    server_only: ClassVar[bool] = False


class Event(msgspec.Struct, frozen=True, tag_field="type"):
    """Something that happened to a plan. New fields always get a default."""

    schema_version: ClassVar[int] = 1


@dataclass(frozen=True, slots=True)
class Context:
    """Who asks and when: the decider reads time from here, never from a clock."""

    actor: str
    now: datetime
    member: Member | None = None


class Recorded(msgspec.Struct, frozen=True):
    """An event as the fold sees it: with its version, author and time."""

    version: int
    actor: str
    at: datetime
    event: Any


UNSET = msgspec.UNSET
Unset = msgspec.UnsetType


def changes_of(
    cmd: msgspec.Struct, current: msgspec.Struct, fields: tuple[str, ...]
) -> dict[str, Any]:
    """The fields of an `update_*` command that are set and differ from the current item."""
    out: dict[str, Any] = {}
    for name in fields:
        value = getattr(cmd, name)
        if value is UNSET:
            continue
        if value != getattr(current, name):
            out[name] = value
    return out


def as_json(value: Any) -> Any:
    """`value` as it reads back from the stored JSON (lists, not tuples), so an event in
    memory equals the same event decoded from the store."""
    return msgspec.json.decode(msgspec.json.encode(value))


def previous_of(current: msgspec.Struct, changes: dict[str, Any]) -> dict[str, Any]:
    """The values `changes` replaces, encoded for the event (auditors and webhooks need them)."""
    return {name: as_json(getattr(current, name)) for name in changes}


def apply_changes(item: Any, changes: dict[str, Any]) -> Any:
    """Return `item` with `changes` (JSON builtins, as stored in an event) applied and typed."""
    merged = {**msgspec.to_builtins(item), **changes}
    return msgspec.convert(merged, type=type(item))


def encoded_changes(changes: dict[str, Any]) -> dict[str, Any]:
    return {k: as_json(v) for k, v in changes.items()}
