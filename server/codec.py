"""Decode once at the edge; past this point the code trusts its input."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from domain.decider import COMMAND_TYPES, PlanCommand
from domain.errors import Malformed
from domain.model import CompellingEvent, PlanKind, Side
from server.errors import PayloadTooLarge, decode_error_to_malformed

_encoder = msgspec.json.Encoder()


class CommandEnvelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: str
    command_id: str
    data: msgspec.Raw = msgspec.Raw(b"{}")
    expected_version: int | None = None
    correlation_id: str | None = None


class NewPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    title: str
    buyer_org: str
    seller_org: str
    side: Side
    kind: PlanKind = "sales"
    value_statement: str = ""
    compelling_event: CompellingEvent | None = None
    template_id: str | None = None
    plan_id: str | None = None
    command_id: str | None = None
    name: str = ""


_ENVELOPE = msgspec.json.Decoder(CommandEnvelope)
_DECODERS = {name: msgspec.json.Decoder(t) for name, t in COMMAND_TYPES.items()}
_PLAN_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def decode(body: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise decode_error_to_malformed(exc) from exc


def decode_command(body: bytes) -> tuple[CommandEnvelope, PlanCommand]:
    """Validate the envelope, then the command's own data, naming the field that is wrong."""
    envelope: CommandEnvelope = decode(body, _ENVELOPE)
    check_correlation_id(envelope.correlation_id)
    return envelope, decode_command_data(envelope.type, envelope.command_id, envelope.data)


def check_correlation_id(value: object) -> str | None:
    """A command's optional correlation id: at most 200 printable characters."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 200 or not value.isprintable():
        raise Malformed(
            "`correlation_id` must be at most 200 printable characters", field="correlation_id"
        )
    return value


def decode_command_data(kind: str, command_id: str, data: bytes | msgspec.Raw) -> PlanCommand:
    decoder = _DECODERS.get(kind)  # clients' commands only: server-issued ones are not there
    if decoder is None:
        raise Malformed(f"unknown command type {kind!r}", field="type")
    if not command_id or len(command_id) > 200 or not command_id.isprintable():
        raise Malformed("`command_id` must be 1 to 200 printable characters", field="command_id")
    result: PlanCommand = decode(bytes(data), decoder)
    return result


def check_plan_id(plan_id: str) -> str:
    if not plan_id or len(plan_id) > 64 or not set(plan_id) <= _PLAN_ID_OK:
        raise Malformed("a plan id is 1-64 letters, digits, '-' or '_'", field="plan_id")
    return plan_id


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (before reading it all)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"the body is {length} bytes; the limit is {limit}", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(content, status_code=status_code, headers=headers)


INT_MAX = 2**31 - 1  # versions and limits are 32-bit in the store


def int_query(
    request: Request, name: str, default: int, *, low: int = 0, high: int = INT_MAX
) -> int:
    """The whole-number query parameter `name` (`default` when absent), within [low, high]."""
    raw = request.query_params.get(name, "")
    if raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise Malformed(f"`{name}` must be a whole number from {low} to {high}", field=name)
    return int(raw)


def check_org(org: str) -> str:
    """A seller organisation's name, as plans carry it: 1 to MAX_TITLE printable characters."""
    from domain.rules import MAX_TITLE

    if not org.strip() or len(org) > MAX_TITLE or not org.isprintable():
        raise Malformed(
            f"`seller_org` is required: 1 to {MAX_TITLE} printable characters", field="seller_org"
        )
    return org
