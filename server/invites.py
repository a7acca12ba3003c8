"""Invites: a one-time code that lets a buyer (or colleague) join a plan, without an account.

Only a SHA-256 of the code is stored. Accepting claims the invite row atomically (so a code
works once, even when two people race), then appends `MemberAdded` through the decider.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import asyncpg
import msgspec

from domain.errors import DomainError, NotFound
from domain.model import Role, Side


class Invite(msgspec.Struct, frozen=True):
    plan_id: str
    invite_id: str
    side: Side
    role: Role
    email: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None = None
    accepted_by: str | None = None
    revoked_at: datetime | None = None

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.accepted_at is not None:
            return "accepted"
        return "open"


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


_COLUMNS = (
    "plan_id, invite_id, side, role, email, created_by, created_at, expires_at,"
    " accepted_at, accepted_by, revoked_at"
)


def _invite(row: asyncpg.Record) -> Invite:
    return Invite(**dict(row))


class InviteStore:
    """The SQL of the `invites` table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create(
        self, plan_id: str, side: Side, role: Role, email: str | None, by: str, ttl: timedelta
    ) -> tuple[str, Invite]:
        code = secrets.token_urlsafe(24)
        invite_id = secrets.token_hex(6)
        row = await self.pool.fetchrow(
            f"INSERT INTO invites (plan_id, invite_id, code_hash, side, role, email, created_by,"
            f" expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now() + $8::interval)"
            f" RETURNING {_COLUMNS}",
            plan_id,
            invite_id,
            code_hash(code),
            side,
            role,
            email,
            by,
            ttl,
        )
        assert row is not None
        return code, _invite(row)

    async def list(self, plan_id: str) -> list[Invite]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM invites WHERE plan_id = $1 ORDER BY created_at", plan_id
        )
        return [_invite(r) for r in rows]

    async def revoke(self, plan_id: str, invite_id: str) -> Invite:
        row = await self.pool.fetchrow(
            f"UPDATE invites SET revoked_at = coalesce(revoked_at, now())"
            f" WHERE plan_id = $1 AND invite_id = $2 RETURNING {_COLUMNS}",
            plan_id,
            invite_id,
        )
        if row is None:
            raise NotFound(f"no invite {invite_id!r} in this plan")
        return _invite(row)

    async def claim(self, code: str, email: str) -> Invite:
        """Take the invite for `email`, once; say precisely why when it cannot be taken."""
        row = await self.pool.fetchrow(
            f"UPDATE invites SET accepted_at = now(), accepted_by = $2"
            f" WHERE code_hash = $1 AND accepted_at IS NULL AND revoked_at IS NULL"
            f" AND expires_at > now() AND (email IS NULL OR email = $2) RETURNING {_COLUMNS}",
            code_hash(code),
            email,
        )
        if row is not None:
            return _invite(row)
        existing = await self.pool.fetchrow(
            f"SELECT {_COLUMNS}, expires_at <= now() AS expired FROM invites WHERE code_hash = $1",
            code_hash(code),
        )
        if existing is None:
            raise NotFound("no such invite: check the link")
        if existing["revoked_at"] is not None:
            raise DomainError("invite_revoked", "this invite was revoked: ask for a new one")
        if existing["accepted_at"] is not None:
            raise DomainError("invite_used", "this invite was already used: ask for a new one")
        if existing["expired"]:
            raise DomainError("invite_expired", "this invite has expired: ask for a new one")
        raise DomainError("invite_email_mismatch", "this invite is for another email address")

    async def release(self, plan_id: str, invite_id: str) -> None:
        """Undo a claim whose membership could not be recorded, so the code works again."""
        await self.pool.execute(
            "UPDATE invites SET accepted_at = NULL, accepted_by = NULL"
            " WHERE plan_id = $1 AND invite_id = $2",
            plan_id,
            invite_id,
        )
