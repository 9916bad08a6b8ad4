"""Packaging guards: our top-level `dns` package must never be shadowed by dnspython, and the
data-plane packages stay independent of the simulator."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import dns

ROOT = Path(__file__).resolve().parents[1]


def test_dnspython_is_not_installed():
    names = {re.sub(r"[-_.]+", "-", (d.metadata["Name"] or "").lower()) for d in importlib.metadata.distributions()}
    assert "dnspython" not in names, "something pulled dnspython, which owns the import name `dns`"


def test_dns_is_our_package():
    assert Path(dns.__file__).resolve().parent == ROOT / "dns"


def _requirement_names(dist: str) -> set[str]:
    requires = importlib.metadata.requires(dist) or []
    return {re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0].lower() for r in requires}


def test_no_dependency_pulls_dnspython():
    seen, todo = set(), ["devbox-sim"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += sorted(_requirement_names(name))
        except importlib.metadata.PackageNotFoundError:
            continue  # an optional extra that is not installed
    assert "dnspython" not in seen


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_dns_and_netns_never_import_simulator():
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("dns", "netns")
        for path in (ROOT / package).rglob("*.py")
        if "simulator" in _imports(path)
    ]
    assert offenders == []
