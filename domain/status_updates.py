"""Status updates: what each meeting concluded (status, progress, blockers, next actions)."""

from __future__ import annotations

from datetime import datetime

import msgspec

from domain.base import Command, Context, Event
from domain.model import Plan, StatusUpdate, UpdateStatus
from domain.rules import MAX_TEXT, require_new_id, require_open, require_owner


class PostStatusUpdate(Command, frozen=True, tag="post_status_update"):
    """Posted after a meeting; `owner` (a stakeholder) answers for the next actions."""

    status: UpdateStatus
    progress: str = ""
    blockers: str = ""
    next_actions: str = ""
    owner: str | None = None
    id: str = ""


class StatusUpdatePosted(Event, frozen=True, tag="StatusUpdatePosted"):
    id: str
    status: UpdateStatus
    progress: str = ""
    blockers: str = ""
    next_actions: str = ""
    owner: str | None = None


def next_update_id(plan: Plan) -> str:
    """`update-N`, N counting the plan's updates (skipping ids other items took)."""
    n = len(plan.status_updates) + 1
    while plan.has_item(f"update-{n}"):
        n += 1
    return f"update-{n}"


def post_status_update(plan: Plan, cmd: PostStatusUpdate, ctx: Context) -> list[Event]:
    require_open(plan)
    update_id = cmd.id or next_update_id(plan)
    require_new_id(plan, update_id)
    require_owner(plan, cmd.owner)
    return [
        StatusUpdatePosted(
            id=update_id,
            status=cmd.status,
            progress=cmd.progress.strip()[:MAX_TEXT],
            blockers=cmd.blockers.strip()[:MAX_TEXT],
            next_actions=cmd.next_actions.strip()[:MAX_TEXT],
            owner=cmd.owner,
        )
    ]


def status_update_posted(plan: Plan, e: StatusUpdatePosted, actor: str, at: datetime) -> Plan:
    update = StatusUpdate(
        id=e.id,
        status=e.status,
        progress=e.progress,
        blockers=e.blockers,
        next_actions=e.next_actions,
        owner=e.owner,
        at=at,
        author=actor,
    )
    return msgspec.structs.replace(plan, status_updates=(*plan.status_updates, update))
