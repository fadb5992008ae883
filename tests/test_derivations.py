"""The derivation pages in docs/derivations/: their worked examples and their links to the code.

Each page stores the numbers of its worked example once, in a block tagged with an id::

    <!-- example: conv2d -->
    ```text
    x = [[1, 2, 0],
         [3, 1, 2]]      # a comment
    db = 2
    ```

Every ``name = value`` (a Python literal, possibly continued on the next lines) is parsed here
and recomputed with the minicnn layers in float64, so a page that disagrees with the code (or
code that changes behind a page) fails the suite. A number printed without a decimal point must
match exactly; one with d decimals must be the computed value rounded to d decimals (and never
further than 1e-3 from it). Every name of a block must be used by its check.

Links to the code look like ``[`Conv2d.backward`](../../minicnn/layers/conv.py#L138-L160)``.
The range must be exactly the lines of that definition (decorators included), as found by
``ast``, so a link goes stale the moment the code moves. After editing the code, run

    python -m tests.test_derivations --fix-links [PAGE.md ...]

to rewrite every range (of the pages named, default all) from the current files.

Worked-example checks are the ``check_<example id>`` functions of this file and of the
``tests/derivation_checks_*.py`` modules.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.signal

import minicnn as mc
from minicnn import layers as L
from minicnn.functional.im2col import im2col
from minicnn.functional.reference import batchnorm_backward_stepwise

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "derivations"
# The index first, then every page of the folder (a new page is checked as soon as it exists).
PAGES = ["README.md"] + sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")


def read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


# -- parsing the example blocks ---------------------------------------------------------------

EXAMPLE_RE = re.compile(r"<!-- example: (\w+) -->\s*```text\n(.*?)```", re.S)
ASSIGN_RE = re.compile(r"^([A-Za-z_]\w*) = (.*)$")
NUMBER_RE = re.compile(r"[-+]?(\d+)(?:\.(\d*))?(?:[eE]([-+]?\d+))?")


def tolerance(token: str) -> float:
    """Half a unit in the last printed digit (at most 1e-3); ~0 for an integer."""
    m = NUMBER_RE.fullmatch(token)
    assert m is not None, token
    decimals = len(m.group(2) or "")
    exponent = int(m.group(3) or 0)
    if m.group(2) is None and m.group(3) is None:
        return 1e-12                                   # an integer: exact
    return min(0.5 * 10.0 ** (exponent - decimals), 1e-3) * (1 + 1e-6) + 1e-15


def parse_value(text: str) -> tuple[np.ndarray, np.ndarray]:
    """A literal such as ``[[1, -0.25], [2, 3]]`` -> (values, per-entry tolerances)."""
    values = np.asarray(ast.literal_eval(text), dtype=np.float64)
    tols = [tolerance(m.group(0)) for m in NUMBER_RE.finditer(text)]
    assert len(tols) == values.size, f"could not read the numbers of {text!r}"
    return values, np.asarray(tols).reshape(values.shape)


def parse_block(body: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``name = literal`` lines (continuation lines join the previous one; ``#`` comments)."""
    entries: dict[str, str] = {}
    last = None
    for raw in body.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        m = ASSIGN_RE.match(line)
        if m:
            last = m.group(1)
            assert last not in entries, f"{last} is defined twice"
            entries[last] = m.group(2)
        else:
            assert last is not None, f"a value line before any name: {raw!r}"
            entries[last] += " " + line.strip()
    return {name: parse_value(text) for name, text in entries.items()}


def all_examples() -> list[tuple[str, str, str]]:
    """(page, id, body) of every example block of every page."""
    found = []
    for page in PAGES:
        for m in EXAMPLE_RE.finditer(read(page)):
            found.append((page, m.group(1), m.group(2)))
    return found


def example_body(example_id: str) -> str:
    """The block of another example (a few examples reuse the inputs of an earlier one)."""
    return next(body for _, i, body in all_examples() if i == example_id)


class Example:
    """The numbers of one block; ``check`` compares a computed value with a printed one."""

    def __init__(self, body: str, where: str):
        self.entries = parse_block(body)
        self.where = where
        self.used: set[str] = set()

    def __getitem__(self, name: str) -> np.ndarray:
        """An input of the example (the layer computes the rest from it)."""
        self.used.add(name)
        return self.entries[name][0].copy()

    def check(self, name: str, computed) -> None:
        printed, tol = self.entries[name]
        self.used.add(name)
        computed = np.asarray(mc.backend.to_numpy(computed), dtype=np.float64)
        if computed.shape != printed.shape:
            computed = np.squeeze(computed)              # (1, 1, H, W) -> the printed (H, W)
        assert computed.shape == printed.shape, \
            f"{self.where}: {name} has shape {printed.shape} on the page, " \
            f"{computed.shape} computed"
        bad = np.abs(computed - printed) > tol
        assert not bad.any(), \
            f"{self.where}: {name} on the page is\n{printed}\nbut minicnn computes\n{computed}"

    def assert_all_used(self) -> None:
        unused = set(self.entries) - self.used
        assert not unused, f"{self.where}: names printed but never checked: {sorted(unused)}"


def nchw(a: np.ndarray) -> np.ndarray:
    """A printed H×W image as a (1, 1, H, W) batch."""
    return a[None, None]


# -- one check per example --------------------------------------------------------------------

def check_conv2d(ex: Example) -> None:
    x, W = ex["x"], ex["W"]
    conv = L.Conv2d(1, 1, W.shape)
    conv.W.data, conv.b.data = nchw(W), np.array([ex["b"]])
    y = conv(nchw(x))
    cols, _ = im2col(nchw(x), W.shape, (1, 1), ((0, 0), (0, 0)))
    ex.check("cols", cols)
    ex.check("y", y)
    dx = conv.backward(nchw(ex["dout"]))
    ex.check("dW", conv.W.grad)
    ex.check("db", conv.b.grad[0])
    ex.check("dx", dx)
    # The page's claims: dx is the full cross-correlation of dout with the flipped kernel,
    # dW the (valid) cross-correlation of x with dout.
    ex.check("W_flipped", W[::-1, ::-1])
    kh, kw = W.shape
    ex.check("dout_padded", np.pad(ex["dout"], ((kh - 1, kh - 1), (kw - 1, kw - 1))))
    ex.check("dx", scipy.signal.correlate2d(ex["dout_padded"], ex["W_flipped"], "valid"))
    ex.check("dW", scipy.signal.correlate2d(x, ex["dout"], "valid"))


def _check_pool(ex: Example, layer) -> None:
    y = layer(nchw(ex["x"]))
    ex.check("y", y)
    ex.check("dx", layer.backward(nchw(ex["dout"])))


def check_maxpool(ex: Example) -> None:
    _check_pool(ex, L.MaxPool2d(2))


def check_maxpool_overlap(ex: Example) -> None:
    _check_pool(ex, L.MaxPool2d(2, stride=1))


def check_avgpool(ex: Example) -> None:
    _check_pool(ex, L.AvgPool2d(2))


def _lecture_batchnorm() -> tuple[np.ndarray, L.BatchNorm2d]:
    """The lecture's batch (three 1×2×2 samples, read from the forward block) and a layer."""
    forward = Example(example_body("batchnorm_forward"), "")
    return forward["x"][:, None], L.BatchNorm2d(1, eps=1e-5, momentum=0.1)


def check_batchnorm_forward(ex: Example) -> None:
    x = ex["x"][:, None]
    bn = L.BatchNorm2d(1, eps=1e-5, momentum=1.0)       # momentum 1: running = this batch
    y = bn(x)                                            # gamma = 1, beta = 0: y = x_hat
    ex.check("x_hat", y[:, 0])
    ex.check("mu", bn.running_mean[0])
    m = x.size                                           # running_var is the unbiased one
    ex.check("var", bn.running_var[0] * (m - 1) / m)
    ex.check("sigma", 1.0 / bn.inv_std.ravel()[0])


def check_batchnorm_backward(ex: Example) -> None:
    x, bn = _lecture_batchnorm()
    bn.gamma.data, bn.beta.data = np.array([ex["gamma"]]), np.array([ex["beta"]])
    y = bn(x)
    ex.check("y", y[:, 0])
    ex.check("running_mean", bn.running_mean[0])
    ex.check("running_var", bn.running_var[0])
    dout = ex["dout"][:, None]
    dx = bn.backward(dout)
    ex.check("dbeta", bn.beta.grad[0])
    ex.check("dgamma", bn.gamma.grad[0])
    ex.check("dx", dx[:, 0])
    # The step-by-step chain rule of the page, in the page's variable names.
    m, eps, gamma = x.size, bn.eps, ex["gamma"]
    mu = x.mean()
    xmu = x - mu
    var = (xmu ** 2).mean()
    dx_hat = dout * gamma
    ex.check("dx_hat", dx_hat[:, 0])
    dvar = (dx_hat * xmu).sum() * -0.5 * (var + eps) ** -1.5
    ex.check("dvar", dvar)
    dmu = (-dx_hat / np.sqrt(var + eps)).sum() + dvar * (-2.0 * xmu).sum() / m
    ex.check("dmu", dmu)
    ex.check("dx", dx_hat / np.sqrt(var + eps) + dvar * 2.0 * xmu / m + dmu / m)
    ex.check("dx", batchnorm_backward_stepwise(dout, x, np.array([gamma]), eps)[0])


def check_softmax_ce(ex: Example) -> None:
    loss_fn = mc.losses.CrossEntropyLoss()
    ex.check("loss", loss_fn(ex["z"], ex["labels"].astype(np.int64)))
    ex.check("p", loss_fn.probs)
    ex.check("t", loss_fn.target)
    ex.check("dz", loss_fn.backward())
    ex.check("dz", (loss_fn.probs - ex["t"]) / len(ex["z"]))


def check_softmax_ce_smoothing(ex: Example) -> None:
    base = Example(example_body("softmax_ce"), "")
    loss_fn = mc.losses.CrossEntropyLoss(label_smoothing=float(ex["epsilon"]))
    ex.check("loss", loss_fn(base["z"], base["labels"].astype(np.int64)))
    ex.check("t", loss_fn.target)
    ex.check("dz", loss_fn.backward())


def check_dropout(ex: Example) -> None:
    layer = L.Dropout(float(ex["p"]), seed=int(ex["seed"]))
    x = ex["x"][None]
    ex.check("y", layer(x))
    ex.check("mask", layer.mask)
    ex.check("dx", layer.backward(ex["dout"][None]))
    layer.eval()
    assert layer(x) is x  # evaluation: the identity, as the page says


def check_residual(ex: Example) -> None:
    body = L.Linear(2, 2)
    body.W.data, body.b.data = ex["W"], ex["b"]
    block = L.Residual(body)
    x, dout = ex["x"][None], ex["dout"][None]
    ex.check("y", block(x))
    ex.check("dx", block.backward(dout))
    ex.check("dW", body.W.grad)
    ex.check("db", body.b.grad)
    ex.check("F", body.forward(x))
    ex.check("dF", body.backward(dout))
    ex.check("dS", block.shortcut.backward(dout))


def _run_optimizer(make: Callable, theta0: np.ndarray, grads: list[np.ndarray]):
    """θ after each step, and a copy of the optimizer's state after each step."""
    p = mc.Parameter(theta0.copy())
    opt = make([p])
    history = []
    for g in grads:
        p.grad = g.copy()
        opt.step()
        history.append((p.data.copy(), {k: np.copy(v) for k, v in opt.state[0].items()}))
    return history


def _sgd_inputs() -> tuple[Example, list[np.ndarray]]:
    sgd = Example(example_body("sgd"), "")
    return sgd, [sgd["grad1"], sgd["grad2"]]


def check_sgd(ex: Example) -> None:
    lr, mu, wd = float(ex["lr"]), float(ex["momentum"]), float(ex["weight_decay"])
    theta0 = ex["theta0"]
    hist = _run_optimizer(lambda ps: mc.optim.SGD(ps, lr, momentum=mu, weight_decay=wd),
                          theta0, [ex["grad1"], ex["grad2"]])
    ex.check("g1", ex["grad1"] + wd * theta0)
    ex.check("b1", hist[0][1]["b"])
    ex.check("theta1", hist[0][0])
    ex.check("g2", ex["grad2"] + wd * hist[0][0])
    ex.check("b2", hist[1][1]["b"])
    ex.check("theta2", hist[1][0])
    ex.check("theta2", ex["theta1"] - lr * ex["b2"])  # θ = θ - γ b


def check_sgd_nesterov(ex: Example) -> None:
    sgd, grads = _sgd_inputs()
    lr, mu, wd = float(sgd["lr"]), float(sgd["momentum"]), float(sgd["weight_decay"])
    hist = _run_optimizer(
        lambda ps: mc.optim.SGD(ps, lr, momentum=mu, nesterov=True, weight_decay=wd),
        sgd["theta0"], grads)
    ex.check("theta1", hist[0][0])
    ex.check("step1", (sgd["theta0"] - hist[0][0]) / lr)
    ex.check("g2", grads[1] + wd * hist[0][0])
    ex.check("b2", hist[1][1]["b"])
    ex.check("step2", (hist[0][0] - hist[1][0]) / lr)
    ex.check("step2", ex["g2"] + mu * ex["b2"])           # g + μ b
    ex.check("theta2", hist[1][0])


def check_adam(ex: Example) -> None:
    sgd, grads = _sgd_inputs()
    lr, beta1, beta2, eps = (float(ex[k]) for k in ("lr", "beta1", "beta2", "eps"))
    hist = _run_optimizer(lambda ps: mc.optim.Adam(ps, lr, betas=(beta1, beta2), eps=eps),
                          sgd["theta0"], grads)
    for t, (theta, state) in enumerate(hist, start=1):
        assert state["t"] == t
        ex.check(f"m{t}", state["m"])
        ex.check(f"v{t}", state["v"])
        ex.check(f"m_hat{t}", state["m"] / (1 - beta1 ** t))
        ex.check(f"v_hat{t}", state["v"] / (1 - beta2 ** t))
        ex.check(f"theta{t}", theta)
    # The page's formula θ = θ - γ m̂ / (sqrt(v̂) + ε), from the printed moments.
    ex.check("theta2", ex["theta1"] - lr * ex["m_hat2"] / (np.sqrt(ex["v_hat2"]) + eps))


def check_adamw(ex: Example) -> None:
    sgd, grads = _sgd_inputs()
    lr, wd = float(sgd["lr"]), float(ex["weight_decay"])
    hist = _run_optimizer(lambda ps: mc.optim.AdamW(ps, lr, weight_decay=wd),
                          sgd["theta0"], grads)
    ex.check("theta0_decayed", sgd["theta0"] * (1 - lr * wd))
    ex.check("theta1", hist[0][0])
    ex.check("theta1_decayed", hist[0][0] * (1 - lr * wd))
    ex.check("theta2", hist[1][0])


def _collect_checks() -> dict[str, Callable[[Example], None]]:
    """Every ``check_<example id>`` function of this file and of the ``derivation_checks_*.py``
    modules beside it (one per group of pages, so that this file does not grow without end)."""
    namespaces = [globals()]
    for path in sorted(Path(__file__).parent.glob("derivation_checks_*.py")):
        namespaces.append(vars(importlib.import_module(f"tests.{path.stem}")))
    checks: dict[str, Callable[[Example], None]] = {}
    for namespace in namespaces:
        for name, fn in namespace.items():
            if name.startswith("check_") and callable(fn) and fn.__module__ == namespace.get(
                    "__name__"):
                assert name[len("check_"):] not in checks, f"{name} is defined twice"
                checks[name[len("check_"):]] = fn
    return checks


CHECKS = _collect_checks()


@pytest.mark.parametrize("page,example_id,body", all_examples(),
                         ids=[f"{p}:{i}" for p, i, _ in all_examples()])
def test_worked_example_matches_minicnn(page, example_id, body):
    assert example_id in CHECKS, f"{page}: no check for example {example_id!r}"
    ex = Example(body, f"{page}, example {example_id}")
    CHECKS[example_id](ex)
    ex.assert_all_used()


def test_every_check_has_its_example_once():
    ids = [i for _, i, _ in all_examples()]
    assert sorted(ids) == sorted(CHECKS), "example blocks and checks differ"


def test_parse_block_reads_continuations_comments_and_tolerances():
    entries = parse_block("a = [[1, 2],   # first row\n     [3, 4.25]]\nb = -0.5\nc = 1e-8\n")
    np.testing.assert_array_equal(entries["a"][0], [[1, 2], [3, 4.25]])
    assert entries["a"][1][0, 0] < 1e-9 and entries["a"][1][1, 1] == pytest.approx(1e-3, rel=1e-5)
    assert entries["b"][0] == -0.5 and entries["c"][0] == 1e-8
    assert entries["c"][1] == pytest.approx(0.5e-8)
    ex = Example("y = 1.75\n", "here")
    with pytest.raises(AssertionError, match="y on the page"):
        ex.check("y", 1.7538)                              # 2 decimals: off by more than 1e-3
    Example("y = 1.754\n", "here").check("y", 1.7538)


# -- links to the code ------------------------------------------------------------------------

LINK_RE = re.compile(r"\[`([A-Za-z_][\w.]*)`\]\((\.\./\.\./minicnn/[\w/]+\.py)#L(\d+)-L(\d+)\)")
ANY_CODE_LINK_RE = re.compile(r"\]\((\.\./\.\./minicnn/[^)]*)\)")


def all_links() -> list[tuple[str, str, str, int, int]]:
    """(page, name, path, first, last) of every checked code link."""
    return [(page, m.group(1), m.group(2), int(m.group(3)), int(m.group(4)))
            for page in PAGES for m in LINK_RE.finditer(read(page))]


def definition_lines(path: Path, name: str) -> tuple[int, int]:
    """First (decorators included) and last line of ``def name``, ``class name`` or
    ``Class.method`` at the top level of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    scope: list[ast.stmt] = tree.body
    node = None
    for part in name.split("."):
        node = next((n for n in scope if isinstance(
            n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == part), None)
        if node is None:
            raise LookupError(f"no definition {name!r} in {path.relative_to(ROOT)}")
        scope = node.body if isinstance(node, ast.ClassDef) else []
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return first, node.end_lineno


@pytest.mark.parametrize("page,name,path,first,last", all_links(),
                         ids=[f"{p}:{n}" for p, n, *_ in all_links()])
def test_code_link_points_at_its_definition(page, name, path, first, last):
    target = (DOCS / path).resolve()
    assert target.is_file(), f"{page}: link to a missing file {path}"
    lines = target.read_text(encoding="utf-8").splitlines()
    keyword = "class" if name.split(".")[-1][:1].isupper() else "def"
    header = re.compile(rf"^\s*(async\s+)?{keyword}\s+{re.escape(name.split('.')[-1])}\b")
    assert any(header.match(line) for line in lines[first - 1:last]), \
        f"{page}: [{name}]({path}#L{first}-L{last}) does not contain its {keyword} line"
    actual = definition_lines(target, name)
    assert (first, last) == actual, \
        f"{page}: {name} is now at {path}#L{actual[0]}-L{actual[1]}, the page says " \
        f"#L{first}-L{last} (python -m tests.test_derivations --fix-links)"


def test_every_code_link_is_checked():
    for page in PAGES:
        text = read(page)
        checked = {m.group(0).split("](")[1][:-1] for m in LINK_RE.finditer(text)}
        for m in ANY_CODE_LINK_RE.finditer(text):
            assert m.group(1) in checked, \
                f"{page}: code link ({m.group(1)}) is not of the checked form " \
                f"[`Name.method`](../../minicnn/<file>.py#L<a>-L<b>)"


def test_pages_exist_are_indexed_and_cross_links_resolve():
    index = read("README.md")
    for page in PAGES[1:]:
        assert f"({page})" in index, f"README.md does not link to {page}"
        text = read(page)
        assert EXAMPLE_RE.search(text), f"{page} has no worked example"
        assert LINK_RE.search(text), f"{page} links to no code"
    for page in PAGES:
        for m in re.finditer(r"\]\(([\w./-]+\.md)(#[\w-]*)?\)", read(page)):
            assert (DOCS / m.group(1)).resolve().is_file(), f"{page}: broken link {m.group(1)}"


# -- maintenance: python -m tests.test_derivations --fix-links ---------------------------------

def fix_links(pages: list[str] | None = None) -> None:
    """Rewrite every checked link's range (of ``pages``, default all) from the current code."""
    for page in pages or PAGES:
        text = read(page)

        def fixed(m: re.Match) -> str:
            first, last = definition_lines((DOCS / m.group(2)).resolve(), m.group(1))
            return f"[`{m.group(1)}`]({m.group(2)}#L{first}-L{last})"

        new = LINK_RE.sub(fixed, text)
        if new != text:
            (DOCS / page).write_text(new, encoding="utf-8")
            print(f"updated {page}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fix-links"]:
        fix_links(sys.argv[2:])
    else:
        sys.exit("usage: python -m tests.test_derivations --fix-links [PAGE.md ...]")
