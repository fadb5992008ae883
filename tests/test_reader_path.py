"""The reader's path: layer source -> its derivation page -> its tests, and back.

A student reads ``Conv2d.backward``, follows the module docstring to the page that derives it,
and from the page to the tests that check it. These tests keep that loop closed:

- every page of docs/derivations/ names the public classes it derives, right after its title::

      <!-- describes: minicnn.layers.MaxPool2d, minicnn.layers.AvgPool2d -->

  and every layer, loss and optimizer that minicnn exports is described by some page;
- every module that defines a described class says where its derivation and tests are, in its
  module docstring (the files must exist, and the page must describe that class)::

      Derivation: docs/derivations/pooling.md
      Tests: tests/test_pool.py

- every page ends with an ``## In the code`` section that links the tests;
- every ``minicnn/functional/`` function a page links to (the checked code links of
  tests/test_derivations.py) is really used by a class the page describes: reachable from the
  class's methods through the ast call graph (its own methods and functional/'s functions,
  followed by name). A page that explains a helper the layer no longer calls fails here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from functools import cache
from pathlib import Path

import pytest

import minicnn as mc
from minicnn import layers as L

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "derivations"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
FUNCTIONAL = ROOT / "minicnn" / "functional"

DESCRIBES_RE = re.compile(r"\A# [^\n]+\n+<!-- describes: ([^>]+?) -->")
CODE_LINK_RE = re.compile(r"\[`([A-Za-z_][\w.]*)`\]\(\.\./\.\./(minicnn/[\w/]+\.py)#L\d+-L\d+\)")
TEST_LINK_RE = re.compile(r"\]\(\.\./\.\./(tests/[\w/]+\.py)\)")
FIELD_RE = {field: re.compile(rf"^\s*{field}: (.+)$", re.M) for field in ("Derivation", "Tests")}


def read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def resolve(dotted: str) -> object:
    """``minicnn.layers.Conv2d`` -> the class (the longest importable module prefix)."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


@cache
def described() -> dict[str, list[str]]:
    """page -> the dotted names of its ``describes`` line."""
    found = {}
    for page in PAGES:
        m = DESCRIBES_RE.match(read(page))
        found[page] = [name.strip() for name in m.group(1).split(",")] if m else []
    return found


def exported_classes() -> list[type]:
    """What a user builds a network from: every exported layer, loss and optimizer."""
    found = []
    for module, base in ((L, L.Layer), (mc.losses, mc.losses.Loss),
                         (mc.optim, mc.optim.Optimizer)):
        for name in dir(module):
            obj = getattr(module, name)
            if not name.startswith("_") and inspect.isclass(obj) and issubclass(obj, base) \
                    and obj is not base and obj not in found:
                found.append(obj)
    return found


# -- pages ------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES)
def test_page_names_what_it_describes_and_the_names_resolve(page):
    names = described()[page]
    assert names, f"docs/derivations/{page}: no '<!-- describes: minicnn.layers.X -->' line " \
                  f"right after the title"
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            pytest.fail(f"docs/derivations/{page} describes {name}, which does not exist")


@pytest.mark.parametrize("page", PAGES)
def test_page_ends_with_the_code_and_its_tests(page):
    text = read(page)
    assert "\n## In the code\n" in text, f"docs/derivations/{page}: no '## In the code' section"
    section = text.split("\n## In the code\n", 1)[1]
    tests = TEST_LINK_RE.findall(section)
    assert tests, f"docs/derivations/{page}: '## In the code' links no tests " \
                  f"([tests/test_x.py](../../tests/test_x.py))"
    for path in tests:
        assert (ROOT / path).is_file(), f"docs/derivations/{page}: links a missing test {path}"
    assert CODE_LINK_RE.search(section), f"docs/derivations/{page}: '## In the code' links " \
                                         f"no code"


def test_every_exported_layer_loss_and_optimizer_has_a_page():
    covered = {id(resolve(name)) for names in described().values() for name in names}
    missing = [c.__module__ + "." + c.__qualname__ for c in exported_classes()
               if id(c) not in covered]
    assert not missing, f"no page of docs/derivations/ describes {missing}"


# -- modules ----------------------------------------------------------------------------------

def _module_fields(module_name: str) -> dict[str, list[str]]:
    doc = importlib.import_module(module_name).__doc__ or ""
    return {field: [p.strip() for m in rx.finditer(doc) for p in m.group(1).split(",")]
            for field, rx in FIELD_RE.items()}


def _described_by_module() -> dict[str, set[str]]:
    """module name -> the pages that describe a class defined in it."""
    pages: dict[str, set[str]] = {}
    for page, names in described().items():
        for name in names:
            try:
                obj = resolve(name)
            except (ImportError, AttributeError):
                continue                  # reported by the page test
            pages.setdefault(obj.__module__, set()).add(page)
    return pages


@pytest.mark.parametrize("module_name", sorted(_described_by_module()))
def test_module_names_its_derivation_and_tests(module_name):
    fields = _module_fields(module_name)
    pages = _described_by_module()[module_name]
    assert fields["Derivation"], f"{module_name}: no 'Derivation: docs/derivations/x.md' line " \
                                 f"in the module docstring (it should name {sorted(pages)})"
    assert fields["Tests"], f"{module_name}: no 'Tests: tests/test_x.py' line in the module " \
                            f"docstring"
    for path in fields["Derivation"] + fields["Tests"]:
        assert (ROOT / path).is_file(), f"{module_name}: names a missing file {path}"
    named = {Path(p).name for p in fields["Derivation"]}
    assert pages <= named, f"{module_name}: its classes are derived on {sorted(pages)}, the " \
                           f"module docstring names {sorted(named)}"


def test_every_layer_module_names_its_derivation_and_tests():
    layer_modules = {c.__module__ for c in exported_classes()
                     if c.__module__.startswith("minicnn.layers.")}
    missing = [m for m in sorted(layer_modules) if not _module_fields(m)["Derivation"]]
    assert not missing, f"layer modules without a 'Derivation:' line: {missing}"


# -- the functions a page explains are the ones the layer calls --------------------------------

def _referenced_names(node: ast.AST) -> set[str]:
    """Every simple name and attribute name a function body mentions (calls, and functions
    passed along such as ``functools.partial(col2im_matmul, ...)``)."""
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            names.add(sub.attr)
    return names


@cache
def functional_functions() -> dict[str, list[ast.FunctionDef]]:
    """name -> the module-level functions of that name in minicnn/functional/."""
    found: dict[str, list[ast.FunctionDef]] = {}
    for path in sorted(FUNCTIONAL.glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef):
                found.setdefault(node.name, []).append(node)
    return found


def _class_methods(cls: type) -> list[ast.FunctionDef]:
    """The methods of ``cls`` and of its minicnn base classes, as ast nodes."""
    methods = []
    for klass in cls.__mro__:
        if not klass.__module__.startswith("minicnn"):
            continue
        tree = ast.parse(Path(inspect.getsourcefile(klass)).read_text(encoding="utf-8"))
        node = next((n for n in ast.walk(tree)
                     if isinstance(n, ast.ClassDef) and n.name == klass.__name__), None)
        if node is not None:
            methods += [n for n in node.body if isinstance(n, ast.FunctionDef)]
    return methods


def reachable_functional(cls: type) -> set[str]:
    """The functional/ functions that ``cls``'s methods use, directly or through each other."""
    seen: set[str] = set()
    todo = [n for m in _class_methods(cls) for n in _referenced_names(m)]
    while todo:
        name = todo.pop()
        if name in seen or name not in functional_functions():
            continue
        seen.add(name)
        for node in functional_functions()[name]:
            todo += _referenced_names(node)
    return seen


def _functional_links() -> list[tuple[str, str]]:
    """(page, function) of every link into functional/, but for the simple twins of
    ``functional/reference.py``: a page may show the twin the tests compare the layer with."""
    return [(page, m.group(1)) for page in PAGES for m in CODE_LINK_RE.finditer(read(page))
            if m.group(2).startswith("minicnn/functional/")
            and m.group(2) != "minicnn/functional/reference.py"]


@pytest.mark.parametrize("page,function", _functional_links(),
                         ids=[f"{p}:{f}" for p, f in _functional_links()])
def test_linked_functional_function_is_used_by_the_layer(page, function):
    classes = []
    for name in described()[page]:
        obj = resolve(name)
        if inspect.isclass(obj):
            classes.append(obj)
    used = set().union(*(reachable_functional(c) for c in classes)) if classes else set()
    assert function.split(".")[-1] in used, \
        f"docs/derivations/{page} explains {function}, but none of {described()[page]} " \
        f"uses it any more (reachable from them: {sorted(used)})"


def test_reachability_finds_the_im2col_of_conv2d_and_not_of_linear():
    # The call graph itself: a conv reaches im2col, a Linear does not.
    assert "im2col" in reachable_functional(L.Conv2d)
    assert "im2col" not in reachable_functional(L.Linear)
