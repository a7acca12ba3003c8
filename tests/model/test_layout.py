"""Layout is the architecture: `domain/` needs only the standard library and msgspec,
`projections/` builds on `domain/`; I/O libraries live in `server/` alone."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "domain": {"domain", "msgspec"},
    # icalendar only formats text (RFC 5545); no I/O
    "projections": {"domain", "projections", "msgspec", "icalendar"},
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_its_layer_allows(package: str):
    for path in sorted((ROOT / package).glob("*.py")):
        extra = imported(path) - ALLOWED[package]
        assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}"
