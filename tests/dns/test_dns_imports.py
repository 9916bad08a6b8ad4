"""Layering guard: the dns package stands alone (no simulator, no netns, no dnspython)."""

from __future__ import annotations

import ast
import pathlib

import dns

FORBIDDEN = {"simulator", "netns"}
PACKAGE_DIR = pathlib.Path(dns.__file__).parent


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_dns_is_this_package_not_dnspython():
    assert PACKAGE_DIR.name == "dns"
    assert (PACKAGE_DIR / "resolver.py").exists()
    assert not hasattr(dns, "resolver") or dns.resolver.__name__ == "dns.resolver"
    assert hasattr(dns, "HostnameMatcher")


def test_no_forbidden_imports():
    modules = sorted(PACKAGE_DIR.glob("*.py"))
    assert len(modules) >= 7
    for module in modules:
        bad = imported_roots(module) & FORBIDDEN
        assert not bad, f"{module.name} imports {bad}"


def test_patterns_is_pure():
    roots = imported_roots(PACKAGE_DIR / "patterns.py")
    assert roots <= {"__future__", "collections"}, roots
