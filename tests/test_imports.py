"""The dependency direction, read from every module's imports (Python's ast, nothing is imported):

    wsss (the command line, the demo)
      ↓            ↓
    launchers    analysis        (sweeps and where they run; reports) — neither imports the other
      ↓            ↓
    wsss_core                    (the library; its pipeline package defines, keys and runs stages)

Any import counts for the direction, also one inside a function or one by name (a string naming a
module, for ``importlib``); ``if TYPE_CHECKING:`` blocks do not (they never run). A cycle is a loop of
imports that run when a module is imported; a package's ``__init__`` and its own submodules importing
each other (a registry filling itself, a table of contents) is not one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wsss", "wsss_core", "launchers", "analysis")
# package -> the project packages it must never import
FORBIDDEN = {
    "wsss_core": {"wsss", "launchers", "analysis", "tests", "bench"},
    "launchers": {"wsss", "analysis", "tests", "bench"},
    "analysis": {"wsss", "launchers", "tests", "bench"},
    "wsss": {"tests", "bench"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _walk(nodes: list[ast.stmt], import_time: bool):
    """Import statements of ``nodes``: all of them, or only those that run when the module is imported."""
    for node in nodes:
        if _is_type_checking(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif import_time and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _walk(getattr(node, field, []) or [], import_time)


def imported_names_in(source: str, package: str, import_time: bool) -> set[str]:
    """Absolute names of what ``source`` (a module of ``package``) imports: ``from a import b`` gives
    ``a.b`` when that is a module of the project, else ``a``. Unless ``import_time``, a string that names
    a dotted project module (``"launchers.cli"``, ``"pkg.mod:function"``) counts too: an import by name."""
    tree = ast.parse(source)
    out = set()
    if not import_time:
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named = node.value.split(":")[0]
                if "." in named and named in MODULES:
                    out.add(named)
    for node in _walk(tree.body, import_time):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            source_name = ".".join(base + ([node.module] if node.module else []))
        else:
            source_name = node.module or ""
        for alias in node.names:
            full = f"{source_name}.{alias.name}"
            out.add(full if full in MODULES else source_name)
    return out


def imported_names(name: str, import_time: bool) -> set[str]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imported_names_in(path.read_text(), package, import_time)


def project_module(imported: str) -> str | None:
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


def test_every_module_is_found():
    assert {"wsss.cli", "wsss.demo", "wsss_core.pipeline.runner", "launchers.submit", "analysis.report"} <= set(MODULES)


def test_no_upward_import():
    wrong = []
    for name in MODULES:
        top = name.split(".")[0]
        for imported in imported_names(name, import_time=False):
            if imported.split(".")[0] in FORBIDDEN[top]:
                wrong.append(f"{MODULES[name].relative_to(ROOT)} imports {imported}")
    assert not wrong, "imports against the direction wsss → launchers/analysis → wsss_core:\n" + "\n".join(wrong)


def _import_time_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        edges = set()
        for imported in imported_names(name, import_time=True):
            target = project_module(imported)
            while target:  # importing a.b.c runs a and a.b first
                edges.add(target)
                parent = target.rpartition(".")[0]
                target = parent if parent in MODULES else None
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def within_one_package(component: list[str], packages: set[str]) -> bool:
    """A package's ``__init__`` and its own submodules (a registry filling itself) is not a dependency loop."""
    head = min(component, key=len)
    return head in packages and all(m == head or m.startswith(head + ".") for m in component)


def test_no_import_cycle():
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    loops = [c for c in cycles(_import_time_graph()) if not within_one_package(c, packages)]
    assert not loops, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in loops)


def test_the_checks_catch_what_they_are_for():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert within_one_package(["p", "p.reg"], {"p"}) and not within_one_package(["p", "q.x"], {"p"})
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from analysis import report\n"
              "def late():\n    from launchers.plan import plan_sweep\n")
    assert imported_names_in(source, "wsss_core.x", import_time=False) == {"typing", "launchers.plan"}
    assert imported_names_in(source, "wsss_core.x", import_time=True) == {"typing"}
    by_name = 'COMMANDS = ("launchers.cli", "wsss_core.training.trainer:train")\n'
    assert imported_names_in(by_name, "wsss_core", import_time=False) == {"launchers.cli", "wsss_core.training.trainer"}
    # the work-dir layout is used by launchers, tracking and analysis, and imports none of them
    for user in ("launchers.plan", "wsss_core.tracking.store", "analysis.collect"):
        assert "wsss_core.pipeline.layout" in imported_names(user, import_time=False), user
    layout_imports = {project_module(i) for i in imported_names("wsss_core.pipeline.layout", import_time=False)}
    assert layout_imports <= {None, "wsss_core.atomic", "wsss_core.errors"}
