"""The import graph of app/ and approvals/: no circles, and a domain that knows no adapter.

Built from the source with `ast`, not by importing: every `import` counts, the ones inside functions
too (a function-local import that exists only to dodge a circle is still a circle), except those
under `if TYPE_CHECKING:`, which never run. `importlib.import_module` with a computed name (the CLI's
COMMANDS table) is not seen; it names leaf command modules that nothing imports back.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "approvals")
# Third-party packages the domain may use: storage, the policy file's YAML, its validation and the
# typing backport that validation needs. Nothing that speaks HTTP, Slack or schedules (slack_bolt,
# slack_sdk, aiohttp, apscheduler), and no logging framework either: what happened is returned to the
# adapter or audited, not logged.
DOMAIN_THIRD_PARTY = frozenset(
    {"sqlalchemy", "yaml", "pydantic", "pydantic_core", "email_validator", "typing_extensions"}
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name an import in `tree` may load, TYPE_CHECKING blocks left out."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (name for child in node.orelse for name in _imported_names(child, module, is_package))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = module.split(".")
                package = package[: len(package) - node.level + (1 if is_package else 0)]
                base = ".".join([*package, *([base] if base else [])])
            yield base
            # `from package import module` loads that module as well.
            yield from (f"{base}.{alias.name}" for alias in node.names)
        yield from _imported_names(node, module, is_package)


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between our modules, top-level names of everything else each module imports)."""
    sources = _sources()
    edges: dict[str, set[str]] = {name: set() for name in sources}
    external: dict[str, set[str]] = {name: set() for name in sources}
    for name, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for imported in _imported_names(tree, name, path.name == "__init__.py"):
            top = imported.split(".")[0]
            if top not in PACKAGES:
                if top and top != "__future__":
                    external[name].add(top)
                continue
            # The longest prefix that is one of our modules (`from x import function` names x).
            parts = imported.split(".")
            while parts and ".".join(parts) not in sources:
                parts.pop()
            target = ".".join(parts)
            if target and target != name:
                edges[name].add(target)
    return edges, external


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules around it (the first repeated at the end), or None."""
    finished: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in finished:
            return None
        path.append(module)
        for following in sorted(edges[module]):
            found = visit(following)
            if found is not None:
                return found
        path.pop()
        finished.add(module)
        return None

    for module in sorted(edges):
        found = visit(module)
        if found is not None:
            return found
    return None


def test_the_graph_sees_the_imports_it_is_about() -> None:
    edges, external = _graph()
    # Guards against a walker that finds nothing and so finds no circle.
    assert "app.bootstrap" in edges["app.serve"]
    assert "approvals.requests.decisions" in edges["approvals.identity.step_up"]
    assert "app.slack.runtime" in edges["app.bootstrap"]  # imported inside build_container
    assert "sqlalchemy" in external["approvals.requests.decisions"]


def test_app_and_approvals_have_no_import_circle() -> None:
    edges, _external = _graph()
    cycle = _cycle(edges)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_domain_imports_no_adapter_and_no_framework() -> None:
    edges, external = _graph()
    into_app = {
        module: sorted(target for target in targets if target.split(".")[0] == "app")
        for module, targets in edges.items()
        if module.split(".")[0] == "approvals"
    }
    assert {module: targets for module, targets in into_app.items() if targets} == {}
    allowed = DOMAIN_THIRD_PARTY | sys.stdlib_module_names
    foreign = {
        module: sorted(names - allowed)
        for module, names in external.items()
        if module.split(".")[0] == "approvals" and names - allowed
    }
    assert foreign == {}
