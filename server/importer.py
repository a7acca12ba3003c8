"""Plan import from the items CSV (the export format round-trips): `POST /plans/import` and
`mapstream import`. Registered by server.http.routes() and server.cli.

The file is read and every command decided in memory first (projections/imports.py, pure);
only a file with no bad row is written, and then in ONE append: the plan, its stakeholders,
milestones, action items and statuses are one transaction, with the events, hash chain and
inline state exactly as `PlanService` would have written them command by command. A plan is
therefore imported whole or not at all.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import date, datetime
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from domain.base import Context
from domain.errors import DomainError, Malformed
from domain.model import CompellingEvent, PlanKind, Side
from domain.plans import CreatePlan
from projections import exports, imports
from projections.imports import Built, RowError, Sheet
from server.apidoc import Doc
from server.codec import check_plan_id, json_response, read_body
from server.errors import decode_error_to_malformed
from server.http import current_user, services
from server.plans import PlanService, new_id

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder()
# what a browser or curl may call a CSV body; multipart and JSON bodies are refused
_REFUSED_TYPES = ("multipart/", "application/json", "application/x-www-form-urlencoded")


class ImportParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The new plan's fields, as query parameters of POST /plans/import (as in POST /plans)."""

    title: str
    buyer_org: str
    seller_org: str
    side: Side = "seller"
    kind: PlanKind = "sales"
    value_statement: str = ""
    compelling_event: str | None = None
    compelling_event_date: date | None = None
    name: str = ""
    plan_id: str | None = None
    command_id: str | None = None


class Imported(msgspec.Struct, frozen=True):
    plan_id: str
    version: int
    milestones: int
    action_items: int
    stakeholders: int
    ignored_columns: list[str]


def _params(request: Request) -> ImportParams:
    raw: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in raw:
            raise Malformed(f"`{key}` is given twice", field=key)
        raw[key] = value
    try:
        params = msgspec.convert(raw, ImportParams, strict=False)
    except msgspec.ValidationError as exc:
        raise decode_error_to_malformed(exc) from exc
    if (params.compelling_event is None) != (params.compelling_event_date is None):
        raise Malformed(
            "give both `compelling_event` (its name) and `compelling_event_date`, or neither",
            field="compelling_event_date",
        )
    cid = params.command_id
    if cid is not None and (not cid or len(cid) > 200 or not cid.isprintable()):
        raise Malformed("`command_id` must be 1 to 200 printable characters", field="command_id")
    return params


def _check_content_type(request: Request) -> None:
    kind = request.headers.get("content-type", "").lower()
    if kind.startswith(_REFUSED_TYPES):
        raise Malformed(
            "send the CSV file itself as the body (Content-Type: text/csv), "
            "with the plan's fields as query parameters",
            field="content-type",
        )


def _plan_id(params: ImportParams, user: str) -> str:
    """The new plan's id: chosen, or the same for a retried request (same user and command_id)."""
    if params.plan_id:
        return check_plan_id(params.plan_id)
    if params.command_id is None:
        return new_id()
    return hashlib.sha256(f"import|{user}|{params.command_id}".encode()).hexdigest()[:12]


def _create(params: ImportParams) -> CreatePlan:
    compelling = None
    if params.compelling_event is not None and params.compelling_event_date is not None:
        compelling = CompellingEvent(params.compelling_event, params.compelling_event_date)
    return CreatePlan(
        title=params.title,
        buyer_org=params.buyer_org,
        seller_org=params.seller_org,
        side=params.side,
        kind=params.kind,
        value_statement=params.value_statement,
        compelling_event=compelling,
        name=params.name,
    )


def build(data: bytes, plan_id: str, create: CreatePlan, ctx: Context) -> tuple[Sheet, Built]:
    """Parse and decide everything (CPU work: the route runs it off the event loop)."""
    sheet = imports.parse(data, new_id)
    return sheet, imports.decide_import(plan_id, create, sheet, ctx)


async def append_import(
    svc: PlanService,
    plan_id: str,
    built: Built,
    actor: str,
    at: datetime,
    *,
    command_id: str | None = None,
    correlation_id: str | None = None,
) -> int:
    """Write the whole import in one append on an empty stream; answers the plan's version.

    With a `command_id`, a retry of an import that was written answers its version again."""
    version = await svc.create_whole(
        built.plan,
        list(built.events),
        actor,
        at,
        command_id=command_id,
        correlation_id=correlation_id,
    )
    if version is None:
        raise DomainError(
            "plan_exists", f"a plan with id {plan_id!r} already exists", field="plan_id"
        )
    return version


async def import_plan(request: Request) -> Response:
    """POST /plans/import?title=…&buyer_org=…&seller_org=…: the body is the CSV file."""
    user = current_user(request, limit="command")
    _check_content_type(request)
    params = _params(request)
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    svc = services(request)
    plan_id = _plan_id(params, user)
    ctx = Context(actor=user, now=svc.clock())
    sheet, built = await asyncio.to_thread(build, body, plan_id, _create(params), ctx)
    correlation = request.headers.get("x-correlation-id")
    if correlation is not None and (len(correlation) > 200 or not correlation.isprintable()):
        correlation = None
    version = await append_import(
        svc,
        plan_id,
        built,
        user,
        ctx.now,
        command_id=params.command_id,
        correlation_id=correlation,
    )
    log.info(
        "imported plan %s: %s events",
        plan_id,
        len(built.events),
        extra={"plan_id": plan_id, "actor": user, "command_id": params.command_id},
    )
    out = Imported(plan_id=plan_id, version=version, **imports.summary(sheet))
    return json_response(out, status_code=201)


def routes() -> list[BaseRoute]:
    return [Route("/plans/import", import_plan, methods=["POST"])]


# -- the CLI ---------------------------------------------------------------------------------


def _cli_import(args: argparse.Namespace) -> int:
    """Send the file to a running server: the import is then authenticated as you, decided
    by the same code as every edit, and pushed live to anyone watching."""
    from server.settings import load_settings
    from server.tokens import issue

    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    token = args.token or issue(args.as_user, load_settings().signing_secret, 600)
    query: dict[str, str] = {
        "title": args.title,
        "buyer_org": args.buyer_org,
        "seller_org": args.seller_org,
        "side": args.side,
        "kind": args.kind,
    }
    optional = {
        "value_statement": args.value_statement,
        "compelling_event": args.compelling_event,
        "compelling_event_date": args.compelling_event_date,
        "name": args.name,
        "plan_id": args.plan_id,
        "command_id": args.command_id,
    }
    query.update({k: v for k, v in optional.items() if v is not None})
    url = args.url.rstrip("/") + "/plans/import?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv; charset=utf-8"},
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return _print_error(exc.code, exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"cannot reach {args.url}: {reason} (is `mapstream serve` running?)", file=sys.stderr)
        return 1
    print(
        f"imported plan {answer['plan_id']} at version {answer['version']}: "
        f"{answer['milestones']} milestones, {answer['action_items']} action items, "
        f"{answer['stakeholders']} stakeholders"
    )
    if answer.get("ignored_columns"):
        print("ignored columns: " + ", ".join(answer["ignored_columns"]))
    return 0


def _print_error(status: int, raw: bytes) -> int:
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        print(f"the server answered {status}: {raw[:200]!r}", file=sys.stderr)
        return 1
    if error.get("code") == "import_invalid":
        for row in error.get("rows", []):
            column = row["column"] or "-"
            print(f"line {row['line']}: {column}: {row['message']}", file=sys.stderr)
        hidden = error.get("errors_total", 0) - len(error.get("rows", []))
        if hidden > 0:
            print(f"... and {hidden} more", file=sys.stderr)
    print(f"error: {error.get('code')}: {error.get('message')}", file=sys.stderr)
    return 1


def register(sub: Any) -> None:
    """Add `mapstream import` to the CLI's subparsers."""
    p = sub.add_parser(
        "import",
        help="create a plan from an items CSV (the export.csv format) on a running server",
        description=(
            "Send FILE to a running server's POST /plans/import. Every bad row is printed as "
            "'line N: column: message' and nothing is imported; exit 1."
        ),
    )
    p.add_argument("file", help="the CSV file (columns as in export.csv; kind and title required)")
    p.add_argument("--title", required=True)
    p.add_argument("--buyer-org", required=True)
    p.add_argument("--seller-org", required=True)
    p.add_argument("--side", choices=("seller", "buyer"), default="seller", help="your side")
    p.add_argument("--kind", choices=("sales", "onboarding"), default="sales")
    p.add_argument("--value-statement")
    p.add_argument("--compelling-event", help="its name (with --compelling-event-date)")
    p.add_argument("--compelling-event-date", help="YYYY-MM-DD")
    p.add_argument("--name", help="your name as shown to the other members")
    p.add_argument("--plan-id", help="the new plan's id (default: chosen by the server)")
    p.add_argument("--command-id", help="idempotency key: a retry creates the plan once")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", help="bearer token")
    who.add_argument(
        "--as", dest="as_user", help="sign a token for this email locally (MAPSTREAM_SECRET)"
    )
    p.set_defaults(run=_cli_import)


# -- OpenAPI ---------------------------------------------------------------------------------


class ImportInvalidBody(msgspec.Struct):
    code: str
    message: str
    rows: list[RowError]
    errors_total: int


class ImportInvalidError(msgspec.Struct):
    error: ImportInvalidBody


_PARAM_DOCS: dict[str, tuple[dict[str, Any], bool, str]] = {
    "title": ({"type": "string", "minLength": 1, "maxLength": 200}, True, "the plan's title"),
    "buyer_org": ({"type": "string", "minLength": 1, "maxLength": 200}, True, "buyer"),
    "seller_org": ({"type": "string", "minLength": 1, "maxLength": 200}, True, "seller"),
    "side": ({"enum": ["seller", "buyer"]}, False, "your side (default seller); you become owner"),
    "kind": ({"enum": ["sales", "onboarding"]}, False, "default sales"),
    "value_statement": ({"type": "string"}, False, ""),
    "compelling_event": ({"type": "string"}, False, "its name, with compelling_event_date"),
    "compelling_event_date": ({"type": "string", "format": "date"}, False, "YYYY-MM-DD"),
    "name": ({"type": "string"}, False, "your name as the other members see it"),
    "plan_id": (
        {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        False,
        "the new plan's id (default: chosen by the server)",
    ),
    "command_id": (
        {"type": "string", "minLength": 1, "maxLength": 200},
        False,
        "idempotency key: a retried import creates the plan once and answers the same",
    ),
}


def openapi(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, components) to merge into /openapi.json; `ref` formats a component $ref."""
    _, components = msgspec.json.schema_components([Imported, ImportInvalidError], ref_template=ref)

    body = Doc(ref).body

    errors = {
        "400": "malformed (a plan field or the content type; `field` names it)",
        "401": "unauthorized",
        "413": "payload_too_large (MAPSTREAM_MAX_BODY_BYTES)",
        "429": "rate_limited",
    }
    paths = {
        "/plans/import": {
            "post": {
                "summary": "Create a plan from an items CSV (the export.csv format); you become "
                "its owner on `side`. Nothing is imported when any row is bad",
                "parameters": [
                    {
                        "name": name,
                        "in": "query",
                        "required": required,
                        "schema": schema,
                        "description": text,
                    }
                    for name, (schema, required, text) in _PARAM_DOCS.items()
                ],
                "requestBody": {
                    "required": True,
                    "description": "UTF-8 CSV (a BOM is fine) with a header row: "
                    + ", ".join(exports.CSV_COLUMNS)
                    + " (kind and title required; other columns ignored)",
                    "content": {
                        "text/csv": {
                            "schema": {"type": "string"},
                            "example": "kind,id,title,owner,owner_side,due\n"
                            "milestone,m1,Business case signed,Ada CFO,buyer,2026-11-02\n"
                            "action_item,a1,Send the ROI model,Sam AE,seller,2026-10-20\n",
                        }
                    },
                },
                "responses": {
                    "201": {"description": "imported", "content": body("Imported")},
                    "422": {
                        "description": "import_invalid: `rows` lists every bad row "
                        "{line, column, code, message}; or rule_violation (e.g. plan_exists)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "anyOf": [
                                        {"$ref": ref.format(name="ImportInvalidError")},
                                        {"$ref": ref.format(name="Error")},
                                    ]
                                }
                            }
                        },
                    },
                    **{s: {"description": d, "content": body("Error")} for s, d in errors.items()},
                },
            }
        }
    }
    return paths, components
