"""The import graph of minicnn, as docs/architecture.md draws it.

Every ``import`` in ``minicnn/`` is read with ``ast`` (module level and inside functions;
relative imports resolved; ``if TYPE_CHECKING:`` blocks skipped, they never run) and held
to the rules of the map:

- no circles among the module-level imports;
- the layering ``backend`` ← ``functional`` ← ``layers`` ← ``models`` ← ``training`` ←
  ``cli`` (``LEVELS`` below, the rows of the map): a module imports from its own row or the
  rows below, and ``data`` from ``backend`` and ``_io`` only;
- an import inside a function never goes up and never closes a circle; from outside
  minicnn it is the standard library or an optional dependency (``OPTIONAL``);
- no underscore name is imported from another module, nor read from one as
  ``module._name`` (a private module such as ``_io`` is fine: its underscore is the
  module's, its names are public).

A rule that a module must break for now is an entry in one of the ``*_ALLOWED`` tables,
with its reason.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minicnn"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# The rows of docs/architecture.md, bottom (0) to top. A module belongs to the longest
# entry that is its name or a package above it.
LEVELS = {
    "minicnn._io": 0, "minicnn.backend": 0, "minicnn.init": 0,
    "minicnn.functional": 1, "minicnn.kernels": 1, "minicnn.data": 1,
    "minicnn.layers": 2, "minicnn.losses": 2, "minicnn.optim": 2, "minicnn.regularizers": 2,
    "minicnn.gradcheck": 2, "minicnn.explain": 2,
    "minicnn.models": 3, "minicnn.distributed": 3, "minicnn.interop": 3,
    "minicnn.training": 4,
    "minicnn.presets": 5, "minicnn.ladder": 5, "minicnn.tuning": 5, "minicnn.plot": 5,
    "minicnn.cli": 6, "minicnn.commands": 6, "minicnn.__main__": 6,
    "minicnn": 6,  # the package itself: the facade that re-exports the public API
}
# What ``data`` (datasets, transforms, the loader) may import besides itself.
DATA_DEPENDS_ON = {"minicnn.backend", "minicnn._io"}
# Third-party packages a function may import on demand, because minicnn runs without them.
OPTIONAL = {"cupy", "cupyx", "matplotlib", "mpi4py", "threadpoolctl", "tqdm", "scipy", "onnx",
            "onnxruntime", "tensorboardX", "PIL"}
# Imports inside functions that go up or close a circle, each with the reason it must.
FUNCTION_LEVEL_ALLOWED: dict[tuple[str, str], str] = {}
# ``module._name`` read from another module, each with the reason it must (for now).
PRIVATE_ATTRIBUTES_ALLOWED: dict[tuple[str, str], str] = {
}


@dataclass(frozen=True)
class Import:
    source: str          # the importing module, e.g. "minicnn.training.loop"
    target: str          # a minicnn module, or the top-level name of another package
    names: tuple[str, ...]   # for ``from target import a, b``: ("a", "b")
    line: int
    in_function: bool
    internal: bool       # target is a minicnn module

    def where(self, names: tuple[str, ...] | None = None) -> str:
        """``file:line: target (names)``; ``names`` defaults to all the imported names."""
        path = MODULES[self.source].relative_to(ROOT)
        names = self.names if names is None else names
        shown = f" ({', '.join(names)})" if names else ""
        return f"{path}:{self.line}: {self.target}{shown}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _package_of(module: str) -> str:
    """The package a relative import of ``module`` starts from."""
    is_package = MODULES[module].name == "__init__.py"
    return module if is_package else module.rpartition(".")[0]


def _resolve(source: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(source)
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def _imports_of(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: list[Import] = []

    def add(target: str, names: tuple[str, ...], line: int, in_function: bool) -> None:
        internal = target == "minicnn" or target.startswith("minicnn.")
        if not internal:
            target = target.partition(".")[0]
        found.append(Import(module, target, names, line, in_function, internal))

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, (), node.lineno, in_function)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            whole, names = [], []
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                (whole if f"{base}.{alias.name}" in MODULES else names).append(alias.name)
            for name in whole:
                add(f"{base}.{name}", (), node.lineno, in_function)
            if names or not whole:
                add(base, tuple(names), node.lineno, in_function)
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                 ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


IMPORTS = [imp for module in MODULES for imp in _imports_of(module)]
INTERNAL = [imp for imp in IMPORTS if imp.internal and imp.target != imp.source]


def level(module: str) -> int:
    for prefix in sorted(LEVELS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LEVELS[prefix]
    raise KeyError(module)


def _module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in INTERNAL:
        if not imp.in_function and imp.target in MODULES:
            graph[imp.source].add(imp.target)
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


# -- the tests -----------------------------------------------------------------------------------

def test_the_graph_is_read():
    """The reader finds what it must (or every other test here would pass vacuously)."""
    assert {"minicnn.layers.base", "minicnn.training.checkpoint", "minicnn.cli"} <= set(MODULES)
    assert any(imp.source == "minicnn.models.registry" and imp.target == "minicnn.layers"
               for imp in INTERNAL)
    assert any(imp.in_function and imp.target == "matplotlib" for imp in IMPORTS)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_row_in_the_map():
    unplaced = []
    for module in MODULES:
        try:
            level(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, (f"{unplaced}: give each a row in LEVELS here and in the map of "
                          f"docs/architecture.md")


def test_the_map_names_every_top_level_module():
    """docs/architecture.md's diagram shows every module and package of minicnn/."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    diagram = text.split("## The package in layers", 1)[1].split("```text", 1)[1]
    diagram = diagram.split("```", 1)[0]
    names = {p.name for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or
             (p.suffix == ".py" and p.name != "__init__.py")}
    missing = sorted(n for n in names if not re.search(
        rf"(?<![\w.]){re.escape(n.removesuffix('.py'))}(\.py|/)", diagram))
    assert not missing, f"docs/architecture.md's diagram does not show {missing}"


def test_no_circles_among_module_level_imports():
    graph = _module_graph()
    cycles = _cycles(graph)
    lines = []
    for component in cycles:
        members = set(component)
        lines += [imp.where() for imp in INTERNAL if not imp.in_function and
                  imp.source in members and imp.target in members]
    assert not cycles, "import circles:\n" + "\n".join(lines)


def test_module_level_imports_follow_the_layering():
    wrong = []
    for imp in INTERNAL:
        if imp.in_function:
            continue
        if imp.source.startswith("minicnn.data") and not (
                imp.target.startswith("minicnn.data") or imp.target in DATA_DEPENDS_ON):
            wrong.append(f"{imp.where()}: data depends on backend and _io only")
        elif level(imp.target) > level(imp.source):
            wrong.append(f"{imp.where()}: row {level(imp.source)} imports row "
                         f"{level(imp.target)}")
    assert not wrong, "imports that go up the map:\n" + "\n".join(wrong)


def test_imports_inside_functions_never_go_up_nor_close_a_circle():
    graph = _module_graph()
    stdlib = set(sys.stdlib_module_names)
    wrong = []
    for imp in IMPORTS:
        if not imp.in_function or (imp.source, imp.target) in FUNCTION_LEVEL_ALLOWED:
            continue
        if not imp.internal:
            if imp.target not in stdlib and imp.target not in OPTIONAL:
                wrong.append(f"{imp.where()}: a required dependency: import it at the top")
        elif imp.target == imp.source:
            continue
        elif level(imp.target) > level(imp.source):
            wrong.append(f"{imp.where()}: goes up the map")
        elif imp.target in MODULES and imp.source in _reachable(graph, imp.target):
            wrong.append(f"{imp.where()}: closes a circle ({imp.target} imports "
                         f"{imp.source})")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_from_another_module():
    wrong = []
    for imp in INTERNAL:
        private = tuple(n for n in imp.names if n.startswith("_") and not n.startswith("__"))
        if private:
            wrong.append(imp.where(private))
    assert not wrong, ("private names imported across modules (make them public, or move "
                       "them where they are used):\n" + "\n".join(wrong))


def _private_attributes(module: str) -> list[tuple[int, str]]:
    """``(line, "name._attr")`` for each underscore attribute read from a minicnn module
    that ``module`` imported as ``name``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    modules_bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            modules_bound |= {a.asname or a.name for a in node.names
                              if f"{base}.{a.name}" in MODULES}
        elif isinstance(node, ast.Import):
            modules_bound |= {a.asname or a.name.partition(".")[0] for a in node.names
                              if a.name.partition(".")[0] == "minicnn"}
    return [(node.lineno, f"{node.value.id}.{node.attr}") for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in modules_bound and node.attr.startswith("_")
            and not node.attr.startswith("__")]


def test_no_private_attribute_is_read_from_another_module():
    wrong = [f"{MODULES[m].relative_to(ROOT)}:{line}: {name}" for m in MODULES
             for line, name in _private_attributes(m)
             if (m, name) not in PRIVATE_ATTRIBUTES_ALLOWED]
    assert not wrong, "private attributes read across modules:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", ["minicnn", "minicnn.cli", "minicnn.layers.base",
                                    "minicnn.training.history", "minicnn.data"])
def test_each_entry_point_imports_alone(module):
    """Imported first, in a fresh interpreter: a circle would fail here half-initialised."""
    import subprocess

    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
