"""`mapstream backup` / `mapstream restore`. Registered by server.cli."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add `mapstream backup` and `mapstream restore` to the CLI's subparsers."""
