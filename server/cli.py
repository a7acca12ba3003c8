"""The `mapstream` console script: serve, token, verify and friends. Each has --help."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Sequence

from server.settings import load_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app
    from server.logs import configure
    from server.wsproto import uvicorn_ws_options

    settings = load_settings()
    configure(settings.log_level)
    host = args.host or settings.host
    port = args.port or settings.port
    app = create_app(settings, demo=args.demo, announce=f"http://{host}:{port}")
    # Thousands of sockets mean many long-lived objects: collect the young generation less
    # often and keep everything loaded so far out of full collections (66-125 ms pauses
    # measured by bench/fanout.py otherwise).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        # per-message deflate costs ~49 KiB of zlib state per socket and ~25% of the CPU per
        # delivered event (bench/fanout.py); off unless MAPSTREAM_WS_DEFLATE=1
        **uvicorn_ws_options(settings.ws_deflate),
        timeout_graceful_shutdown=5,
    )
    return 0


def _token(args: argparse.Namespace) -> int:
    from server.tokens import issue

    settings = load_settings()
    ttl = args.ttl if args.ttl is not None else settings.token_ttl_seconds
    print(issue(args.email, settings.signing_secret, ttl))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from server.tools import verify_plans

    return asyncio.run(verify_plans(load_settings(), args.plan_id))


def _watch(args: argparse.Namespace) -> int:
    from server.client import FeedClosed, watch
    from server.tokens import issue

    settings = load_settings()
    token = args.token or issue(args.as_user, settings.signing_secret, 3600)
    try:
        asyncio.run(watch(args.url, token, args.plan_id, args.since))
    except FeedClosed as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mapstream",
        description="Mapstream: event-sourced mutual action plans with a live hub.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP API and WebSocket hub")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1, or MAPSTREAM_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, or MAPSTREAM_PORT)")
    serve.add_argument("--demo", action="store_true", help="create the demo plan and print tokens")
    serve.set_defaults(run=_serve)

    token = sub.add_parser("token", help="print a signed bearer token for EMAIL")
    token.add_argument("email")
    token.add_argument("--ttl", type=int, help="lifetime in seconds (default 7 days)")
    token.set_defaults(run=_token)

    verify = sub.add_parser("verify", help="recompute hash chains (one plan, or every plan)")
    verify.add_argument("plan_id", nargs="?")
    verify.set_defaults(run=_verify)

    from server import audit_cli

    audit_cli.register(sub)

    from server import backup, importer, webhooks

    webhooks.register(sub)
    importer.register(sub)
    backup.register(sub)

    watch = sub.add_parser("watch", help="print a plan's events live (reconnects and resumes)")
    watch.add_argument("plan_id")
    watch.add_argument("--url", default="ws://127.0.0.1:8000/ws", help="hub URL")
    token_group = watch.add_mutually_exclusive_group(required=True)
    token_group.add_argument("--token", help="bearer token")
    token_group.add_argument("--as", dest="as_user", help="sign a token for this email locally")
    watch.add_argument("--since", type=int, help="replay events after this version first")
    watch.set_defaults(run=_watch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
