"""The SQL of the `templates` table: user templates (built-ins live in domain/templates.py)."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

import asyncpg
import msgspec

from domain.errors import NotFound
from domain.templates import BUILTIN, Skeleton, Template, template_of

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Template)
_USER_ID = re.compile(r"tpl-[0-9a-f]{12}")  # what `save` hands out


class TemplateStore:
    """Built-in templates plus the ones each user saved (visible to that user only)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def list(self, user: str) -> list[Template]:
        rows = await self.pool.fetch(
            "SELECT body FROM templates WHERE created_by = $1 ORDER BY created_at, template_id",
            user,
        )
        return [*BUILTIN.values(), *(_decoder.decode(r["body"]) for r in rows)]

    async def get(self, template_id: str, user: str) -> Template:
        """A built-in template or one `user` saved; any other id is not found."""
        builtin = BUILTIN.get(template_id)
        if builtin is not None:
            return builtin
        if not _USER_ID.fullmatch(template_id):
            raise NotFound(f"no template {template_id!r} that you can use", field="template_id")
        body = await self.pool.fetchval(
            "SELECT body FROM templates WHERE template_id = $1 AND created_by = $2",
            template_id,
            user,
        )
        if body is None:
            raise NotFound(f"no template {template_id!r} that you can use", field="template_id")
        template: Template = _decoder.decode(body)
        return template

    async def save(self, skeleton: Skeleton, user: str) -> Template:
        template = template_of(skeleton, f"tpl-{secrets.token_hex(6)}", user, datetime.now(UTC))
        await self.pool.execute(
            "INSERT INTO templates (template_id, created_by, created_at, body)"
            " VALUES ($1, $2, $3, $4)",
            template.id,
            user,
            template.created_at,
            _encoder.encode(template).decode(),
        )
        return template
