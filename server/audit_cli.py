"""Auditor commands of the `mapstream` CLI (audit, export-proof, verify-file, rebuild)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add this module's subcommands to the `mapstream` parser's subparsers `sub`."""
    _ = (sub, argparse)
