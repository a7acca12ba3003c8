"""Auditor commands of the `mapstream` CLI: audit, export-proof, verify-file, rebuild."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from domain.errors import MapstreamError
from server.settings import load_settings


def _audit(args: argparse.Namespace) -> int:
    from server.tools import print_audit

    filters = {
        "actor": args.actor,
        "item": args.item,
        "types": args.type,
        "start": getattr(args, "from"),
        "end": args.to,
    }
    try:
        return asyncio.run(
            print_audit(load_settings(), args.plan_id, filters, args.side, args.json, sys.stdout)
        )
    except MapstreamError as exc:
        print(f"{args.plan_id}: {exc.message}", file=sys.stderr)
        return 2


def _export_proof(args: argparse.Namespace) -> int:
    from server.tools import export_proof

    body = asyncio.run(export_proof(load_settings(), args.plan_id, args.side))
    if body is None:
        print(f"{args.plan_id}: no such plan", file=sys.stderr)
        return 1
    if args.output and args.output != "-":
        Path(args.output).write_bytes(body)
        print(f"{args.plan_id}: proof written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(body.decode())
    return 0


def _verify_file(args: argparse.Namespace) -> int:
    from server.tools import verify_file

    return verify_file(Path(args.file), args.head)


def _rebuild(args: argparse.Namespace) -> int:
    from server.tools import rebuild

    return asyncio.run(rebuild(load_settings(), args.projection))


def register(sub: Any) -> None:
    """Add this module's subcommands to the `mapstream` parser's subparsers `sub`."""
    audit = sub.add_parser(
        "audit",
        help="print a plan's audit trail (one line per event: who did what, and why)",
        description=(
            "Bring the audit trail up to date, then print it in version order. "
            "--from/--to take a version, a tag or an ISO-8601 time."
        ),
    )
    audit.add_argument("plan_id")
    audit.add_argument("--actor", help="only events by this email or name")
    audit.add_argument("--item", help="only events about this item id")
    audit.add_argument("--type", help="only these event types, comma-separated")
    audit.add_argument("--from", help="from this version, tag or time")
    audit.add_argument("--to", help="up to this version, tag or time")
    audit.add_argument(
        "--side", choices=("buyer", "seller"), help="as this side sees it (default: everything)"
    )
    audit.add_argument("--json", action="store_true", help="one JSON row per line")
    audit.set_defaults(run=_audit)

    export = sub.add_parser(
        "export-proof",
        help="write a plan's events and hashes to a self-contained JSON proof file",
        description=(
            "Anyone can check the file offline with `mapstream verify-file`. With --side, "
            "the other side's internal events are redacted to their digest and hash (the "
            "chain still verifies)."
        ),
    )
    export.add_argument("plan_id")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    export.add_argument("--side", choices=("buyer", "seller"), help="redact for this side")
    export.set_defaults(run=_export_proof)

    check = sub.add_parser(
        "verify-file",
        help="check a proof file's hash chain offline (no database)",
        description="Exit 0 when the chain verifies, 1 when it is broken, 2 when unreadable.",
    )
    check.add_argument("file")
    check.add_argument("--head", help="the head hash you expect (e.g. from GET /plans/{id}/verify)")
    check.set_defaults(run=_verify_file)

    rebuild = sub.add_parser(
        "rebuild",
        help="drop a projection and rebuild it from position 0 (audit, snapshots, analytics)",
        description=(
            "Resets the read model and applies the whole global log again, with a progress "
            "line. A running server keeps serving; when it runs the projection, it does the "
            "work and this command shows the progress."
        ),
    )
    rebuild.add_argument("projection", choices=("audit", "snapshots", "analytics"))
    rebuild.set_defaults(run=_rebuild)
