"""The one-way arrows of the design: data ← experts ← vlm ← app. An arrow the other way is a design bug."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"data": {"data"}, "experts": {"data", "experts"}, "vlm": {"data", "experts", "vlm"}, "app": {"data", "experts", "vlm", "app"}}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_downstream(package):
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = _imported_packages(path) - ALLOWED[package]
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not bad, f"{package} must import only {sorted(ALLOWED[package])}; found {bad}"


def _module_graph() -> dict[str, set[str]]:
    """Project module → the project modules it imports anywhere in its body (function-local imports too)."""
    modules = {}
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path

    def resolve(dotted: str) -> str | None:
        parts = dotted.split(".")
        return next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in modules), None)

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            graph[name] |= {t for t in map(resolve, targets) if t and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_the_projects_modules():
    cycles = _cycles(_module_graph())
    assert not cycles, f"import cycles (function-local imports count): {cycles}"


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_error_class_of_the_project_is_an_m3_error():
    """One hierarchy: the ``m3`` command prints any ``M3Error`` as one line; an error class outside it would reach
    users as a traceback."""
    bases: dict[str, list[str]] = {}
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ClassDef):
                    names = [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else "" for b in node.bases]
                    bases.setdefault(node.name, []).extend(names)
    builtin = {"Exception", "ValueError", "RuntimeError", "OSError", "KeyError", "LookupError", "TypeError"}

    def is_m3(name: str, seen: frozenset = frozenset()) -> bool:
        return name == "M3Error" or any(b not in seen and is_m3(b, seen | {name}) for b in bases.get(name, []) if b not in builtin)

    errors = [n for n, bs in bases.items()  # private control-flow exceptions (``_StopForward``) never reach a user
              if n != "M3Error" and not n.startswith("_") and (set(bs) & builtin or n.endswith("Error"))]
    outside = sorted(n for n in errors if not is_m3(n))
    assert len(errors) > 20 and not outside, f"error classes outside M3Error: {outside}"
