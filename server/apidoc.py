"""Pieces of the OpenAPI document that the route modules share (server/openapi.py builds the
document from each module's `openapi(ref)`)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from domain.rules import MAX_TITLE

# JSON passed through as stored (an event's data), documented as the object it always is
JsonObject = Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema={"type": "object"})]

PLAN_ID: dict[str, Any] = {
    "name": "plan_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
}

# a seller organisation, as server.codec.check_org accepts it
SELLER_ORG: dict[str, Any] = {
    "name": "seller_org",
    "in": "query",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_TITLE},
}

# every authenticated route can answer these
COMMON_ERRORS = ("400 malformed", "401 unauthorized", "429 rate_limited")


class Doc:
    """Content and error responses written against one `$ref` template."""

    def __init__(self, ref: str) -> None:
        self.ref = ref

    def body(self, name: str) -> dict[str, Any]:
        """A JSON body of the component schema `name`."""
        return {"application/json": {"schema": {"$ref": self.ref.format(name=name)}}}

    def errors(self, *extra: str) -> dict[str, Any]:
        """Error responses: the common ones, then each "STATUS description" of `extra` (a
        later one for the same status replaces the earlier)."""
        codes = dict(e.split(" ", 1) for e in (*COMMON_ERRORS, *extra))
        return {s: {"description": d, "content": self.body("Error")} for s, d in codes.items()}
