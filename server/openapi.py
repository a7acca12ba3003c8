"""The OpenAPI 3.1 document, generated from the msgspec types (never written by hand)."""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from domain.decider import COMMAND_TYPES, EVENT_TYPES
from domain.model import Plan
from server.apidoc import PLAN_ID, Doc
from server.codec import NewPlan
from server.errors import STATUS
from server.plans import EventOut

_REF = "#/components/schemas/{name}"


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    field: str | None = None
    rule: str | None = None
    current_version: int | None = None


class Error(msgspec.Struct):
    error: ErrorBody


class Created(msgspec.Struct):
    plan_id: str
    version: int


class CommandAnswerDoc(msgspec.Struct):
    plan_id: str
    version: int
    events: list[EventOut]


class PlanDoc(msgspec.Struct):
    plan_id: str
    version: int
    state: Plan


class EventsDoc(msgspec.Struct):
    plan_id: str
    version: int
    events: list[EventOut]


class InviteIn(msgspec.Struct):
    side: str
    role: str
    email: str | None = None
    expires_in: int | None = None


class AcceptIn(msgspec.Struct):
    name: str
    email: str


class AcceptOut(msgspec.Struct):
    token: str
    plan_id: str
    side: str
    role: str


class LogPage(msgspec.Struct):
    events: list[EventOut]
    next: str


_json = Doc(_REF).body


def _errors(*codes: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        status = str(STATUS[code])
        out.setdefault(status, {"description": "", "content": _json("Error")})
        out[status]["description"] = ", ".join(filter(None, [out[status]["description"], code]))
    return out


_PLAN_ID = PLAN_ID
_COMMON = ("malformed", "unauthorized", "not_found", "rate_limited")


def build() -> dict[str, Any]:
    types: list[Any] = [
        Error,
        Created,
        CommandAnswerDoc,
        PlanDoc,
        EventsDoc,
        NewPlan,
        InviteIn,
        AcceptIn,
        AcceptOut,
        LogPage,
        *COMMAND_TYPES.values(),
        *EVENT_TYPES.values(),
    ]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    envelopes: list[dict[str, Any]] = []
    for name, cls in sorted(COMMAND_TYPES.items()):
        if name in ("create_plan", "join_plan"):
            continue
        data_schema = copy.deepcopy(components[cls.__name__])
        data_schema["properties"].pop("type", None)
        data_schema["required"] = [r for r in data_schema.get("required", []) if r != "type"]
        components[cls.__name__] = data_schema
        envelope_name = f"{cls.__name__}Command"
        components[envelope_name] = {
            "type": "object",
            "title": name,
            "description": (cls.__doc__ or "").strip() or f"the `{name}` command",
            "properties": {
                "type": {"const": name},
                "data": {"$ref": _REF.format(name=cls.__name__)},
                "command_id": {"type": "string", "minLength": 1, "maxLength": 200},
                "expected_version": {"type": ["integer", "null"]},
                "correlation_id": {"type": ["string", "null"]},
            },
            "required": ["type", "command_id"],
            "additionalProperties": False,
        }
        envelopes.append({"$ref": _REF.format(name=envelope_name)})
    components["Command"] = {"oneOf": envelopes, "discriminator": {"propertyName": "type"}}
    security: list[dict[str, list[str]]] = [{"bearer": []}]
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Liveness and readiness",
                "security": [],
                "responses": {
                    "200": {"description": "ok"},
                    "503": {"description": "database unreachable"},
                },
            }
        },
        "/plans": {
            "post": {
                "summary": "Create a plan; the caller becomes owner on `side`",
                "requestBody": {"required": True, "content": _json("NewPlan")},
                "responses": {
                    "201": {"description": "created", "content": _json("Created")},
                    **_errors(*_COMMON, "rule_violation", "payload_too_large"),
                },
            }
        },
        "/plans/{plan_id}": {
            "get": {
                "summary": "The plan now, at a version (number or tag) or at a time",
                "parameters": [
                    _PLAN_ID,
                    {"name": "version", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "at",
                        "in": "query",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                ],
                "responses": {
                    "200": {"description": "the plan", "content": _json("PlanDoc")},
                    **_errors(*_COMMON),
                },
            }
        },
        "/plans/{plan_id}/commands": {
            "post": {
                "summary": "Send one command; a repeated command_id returns the first answer",
                "parameters": [_PLAN_ID],
                "requestBody": {"required": True, "content": _json("Command")},
                "responses": {
                    "200": {
                        "description": "appended (or nothing to change)",
                        "content": _json("CommandAnswerDoc"),
                    },
                    **_errors(
                        *_COMMON,
                        "forbidden",
                        "version_conflict",
                        "payload_too_large",
                        "rule_violation",
                        "unavailable",
                    ),
                },
            }
        },
        "/plans/{plan_id}/events": {
            "get": {
                "summary": "The plan's events in version order (the other side's internal items redacted)",
                "parameters": [
                    _PLAN_ID,
                    {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                    },
                ],
                "responses": {
                    "200": {"description": "events", "content": _json("EventsDoc")},
                    **_errors(*_COMMON),
                },
            }
        },
        "/plans/{plan_id}/invites": {
            "post": {
                "summary": "Invite someone (owners)",
                "parameters": [_PLAN_ID],
                "requestBody": {"required": True, "content": _json("InviteIn")},
                "responses": {
                    "201": {"description": "the one-time code"},
                    **_errors(*_COMMON, "forbidden"),
                },
            },
            "get": {
                "summary": "List invites (owners)",
                "parameters": [_PLAN_ID],
                "responses": {"200": {"description": "invites"}, **_errors(*_COMMON, "forbidden")},
            },
        },
        "/plans/{plan_id}/invites/{invite_id}/revoke": {
            "post": {
                "summary": "Revoke an invite (owners)",
                "parameters": [
                    _PLAN_ID,
                    {
                        "name": "invite_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {"200": {"description": "revoked"}, **_errors(*_COMMON, "forbidden")},
            }
        },
        "/invites/{code}/accept": {
            "post": {
                "summary": "Accept an invite: the code is the credential; answers a token",
                "security": [],
                "parameters": [
                    {"name": "code", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {"required": True, "content": _json("AcceptIn")},
                "responses": {
                    "200": {"description": "joined", "content": _json("AcceptOut")},
                    **_errors("malformed", "not_found", "rule_violation", "rate_limited"),
                },
            }
        },
        "/log": {
            "get": {
                "summary": "The gap-free global log (admins)",
                "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                ],
                "responses": {
                    "200": {"description": "a page", "content": _json("LogPage")},
                    **_errors(*_COMMON, "forbidden"),
                },
            }
        },
    }
    from server import model_routes

    model_paths, model_components = model_routes.openapi(_REF)
    paths.update(model_paths)
    components.update(model_components)
    from server import audit_routes, export_routes

    export_paths, export_components = export_routes.openapi(_REF)
    paths.update(export_paths)
    components.update(export_components)

    audit_paths, audit_components = audit_routes.openapi(_REF)
    paths.update(audit_paths)
    components.update(audit_components)
    from server import importer, observability, web_client, webhooks

    for module in (webhooks, importer, observability, web_client):
        more_paths, more_components = module.openapi(_REF)
        paths.update(more_paths)
        components.update(more_components)
    for item in paths.values():
        for op in item.values():
            op.setdefault("security", security)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Mapstream",
            "version": "0.1.0",
            "description": "Event-sourced mutual action plans. Errors are {error: {code, message, ...}}; codes: "
            + ", ".join(f"`{c}` ({s})" for c, s in STATUS.items())
            + ". The WebSocket protocol at /ws is described in the README.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mapstream API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px}pre{padding:.6rem;overflow:auto}
h2{border-bottom:1px solid #ddd}.m{display:inline-block;width:4rem;font-weight:bold}</style></head>
<body><h1>Mapstream API</h1><p>Generated from <a href="/openapi.json">/openapi.json</a>.</p>
<div id="out">Loading…</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  const esc = s => String(s).replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));
  let html = '<p>' + esc(doc.info.description) + '</p><h2>Routes</h2>';
  for (const [path, item] of Object.entries(doc.paths)) for (const [m, op] of Object.entries(item))
    html += '<p><span class="m">' + m.toUpperCase() + '</span><code>' + esc(path) + '</code> — ' + esc(op.summary) +
            '<br><small>responses: ' + Object.entries(op.responses).map(([s, r]) => s + ' ' + esc(r.description)).join('; ') + '</small></p>';
  html += '<h2>Commands</h2>';
  for (const ref of doc.components.schemas.Command.oneOf) {
    const env = doc.components.schemas[ref.$ref.split('/').pop()];
    const data = doc.components.schemas[env.properties.data.$ref.split('/').pop()];
    html += '<h3><code>' + esc(env.title) + '</code></h3><p>' + esc(env.description) + '</p><pre>' +
            esc(JSON.stringify(data.properties, null, 1)) + '</pre>';
  }
  document.getElementById('out').innerHTML = html;
});
</script></body></html>
"""
