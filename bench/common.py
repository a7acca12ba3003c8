"""What every benchmark needs: its database server, the code version measured, printing,
verdicts, and a run that Ctrl-C or SIGTERM stops with its clean-up done."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable

from tests.support import ROOT


def admin_url() -> str:
    """DATABASE_URL, or the benchmarks' own embedded server (.data/bench, not the tests')."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    from server.database import embedded_server

    return str(embedded_server(str(ROOT / ".data" / "bench")).get_uri())


def code_version() -> str:
    """The commit measured, and whether the code under test had uncommitted changes."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5, check=True
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "server", "domain", "schema.sql")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + uncommitted changes" if dirty else head


def say(text: str) -> None:
    print(text, flush=True)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


async def run_until_signal(
    run: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace, cleaned: str
) -> int:
    """`run(args)`, cancelled by SIGINT or SIGTERM so that its clean-up (`cleaned`) runs."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def stop(sig: int) -> None:
        received.append(sig)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await run(args)
    except asyncio.CancelledError:
        if not received:
            raise
        print(f"stopped by signal {received[0]}; {cleaned} cleaned up")
        return 130
