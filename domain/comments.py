"""Comments on any item, with @-mentions resolved to stakeholders."""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from domain.base import Command, Context, Event
from domain.errors import NotFound
from domain.model import Comment, Plan
from domain.rules import MAX_TEXT, require_new_id, require_text, require_visible

_MENTION = re.compile(r"@([A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,})")


class AddComment(Command, frozen=True, tag="add_comment"):
    permission = "comment"
    item_id: str
    text: str
    id: str = ""


class CommentAdded(Event, frozen=True, tag="CommentAdded"):
    id: str
    item_id: str
    text: str
    mentions: list[str] = []


def mentions_in(plan: Plan, text: str) -> list[str]:
    """Stakeholder ids (or member emails) named as `@email` in `text`, in order, once each."""
    by_email = {s.email: s.id for s in plan.stakeholders.values() if s.active and s.email}
    out: list[str] = []
    for email in _MENTION.findall(text):
        who = by_email.get(email.lower()) or (email.lower() if plan.member(email.lower()) else None)
        if who is not None and who not in out:
            out.append(who)
    return out


def add_comment(plan: Plan, cmd: AddComment, ctx: Context) -> list[Event]:
    require_new_id(plan, cmd.id)
    if cmd.item_id != "plan" and not plan.has_item(cmd.item_id):
        raise NotFound(f"no item {cmd.item_id!r} to comment on", item_id=cmd.item_id)
    require_visible(plan, cmd.item_id, ctx.member)
    text = require_text(cmd.text, "text", limit=MAX_TEXT)
    return [
        CommentAdded(id=cmd.id, item_id=cmd.item_id, text=text, mentions=mentions_in(plan, text))
    ]


def comment_added(plan: Plan, e: CommentAdded, actor: str, at: datetime) -> Plan:
    c = Comment(e.id, e.item_id, e.text, actor, at, tuple(e.mentions))
    return msgspec.structs.replace(plan, comments={**plan.comments, e.id: c})
