"""Named versions: "sent to procurement", "signed off by CFO"."""

from __future__ import annotations

import re

import msgspec

from domain.base import Command, Context, Event
from domain.errors import DomainError, Malformed
from domain.model import Plan

_SLUG = re.compile(r"[^a-z0-9]+")


def slug(name: str) -> str:
    return _SLUG.sub("-", name.lower()).strip("-")


class TagVersion(Command, frozen=True, tag="tag_version"):
    permission = "comment"
    name: str
    version: int | None = None


class VersionTagged(Event, frozen=True, tag="VersionTagged"):
    name: str
    version: int


def tag_version(plan: Plan, cmd: TagVersion, ctx: Context) -> list[Event]:
    name = slug(cmd.name)
    if not name or len(name) > 80:
        raise Malformed("`name` needs letters or digits (at most 80)", field="name")
    if name.isdigit():
        raise Malformed("`name` cannot be a number: it would read as a version", field="name")
    version = plan.version if cmd.version is None else cmd.version
    if not 1 <= version <= plan.version:
        raise Malformed(f"`version` must be between 1 and {plan.version}", field="version")
    if name in plan.tags:
        raise DomainError("tag_exists", f"the tag {name!r} already names version {plan.tags[name]}")
    return [VersionTagged(name=name, version=version)]


def version_tagged(plan: Plan, e: VersionTagged) -> Plan:
    return msgspec.structs.replace(plan, tags={**plan.tags, e.name: e.version})
