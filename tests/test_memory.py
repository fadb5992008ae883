"""What a layer keeps between forward and backward, and the scratch arena (issue 28).

The rule (the layer contract, ``minicnn/layers/base.py``): the arrays reachable from a
layer's ``cache`` after forward take at most its input's bytes plus its output's (twice its
input for a convolution), parameters not counted. Checked for every layer ``minicnn.layers``
exports, with the examples of tests/test_layer_contract.py, in training and evaluation mode:
a layer that starts keeping a patch matrix, a padded copy or any other scratch fails here.

Scratch (patch matrices, padded copies) comes from one arena shared by all layers
(``minicnn.functional.scratch``), so what a model holds does not grow with the number of
its convolutions beyond their kept inputs; checked with tracemalloc, and on the strict CuPy
stand-in (``pytest -m cupy --strict-device``).
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

import minicnn as mc
from minicnn import layers as L
from minicnn.backend import to_numpy
from minicnn.functional.scratch import (
    matmul_into,
    release_scratch,
    scratch,
    scratch_nbytes,
    scratch_workspace,
)
from minicnn.layers.base import Layer
from tests.test_layer_contract import EXAMPLES, LAYERS, example

# -- counting what a cache holds --------------------------------------------------------------


def root(a: Any) -> Any:
    """The object that owns ``a``'s memory: follow ``.base`` (views, ``as_strided``'s)."""
    while getattr(a, "base", None) is not None:
        a = a.base
    return a


def arrays_in(value: Any) -> list[np.ndarray]:
    """Every NumPy array inside ``value`` (nested tuples, lists, dicts, NamedTuples)."""
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        return [a for v in value.values() for a in arrays_in(v)]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in arrays_in(v)]
    return []


def held_bytes(layer: Layer) -> int:
    """Bytes reachable from ``layer.cache``: each memory block once (a view and its base, or
    two views of one array, count once), the layer's parameters and buffers not at all."""
    own = {id(root(p.data)) for p in layer.parameters()}
    own |= {id(root(b)) for b in layer.buffers().values()}
    blocks = {id(r): r for r in map(root, arrays_in(layer.cache))
              if isinstance(r, np.ndarray) and id(r) not in own}
    return sum(r.nbytes for r in blocks.values())


def bound(layer: Layer, x_bytes: int, y_bytes: int) -> int:
    """The contract's bound: twice the input for a convolution, else input + output."""
    return 2 * x_bytes if isinstance(layer, L.Conv2d) else x_bytes + y_bytes


def record_io(model: Layer) -> dict[int, tuple[int, int]]:
    """Wrap each leaf module's forward to record (input bytes, output bytes) by module id."""
    seen: dict[int, tuple[int, int]] = {}
    for m in model.modules():
        if list(m.children()):
            continue

        def forward(x, m=m, inner=m.forward):
            y = inner(x)
            seen[id(m)] = (x.nbytes, y.nbytes)
            return y
        m.forward = forward
    return seen


# -- every exported layer ---------------------------------------------------------------------

@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_what_a_layer_keeps_is_within_the_bound(cls, training):
    if cls.__name__ not in EXAMPLES:
        pytest.fail(f"no example for {cls.__name__}: see tests/test_layer_contract.py")
    layer, x = example(cls)
    layer.train(training)
    io = record_io(layer)
    layer(x)
    for m in layer.modules():
        if id(m) not in io:
            continue                      # a container: its children keep what it needs
        x_bytes, y_bytes = io[id(m)]
        held = held_bytes(m)
        assert held <= bound(m, x_bytes, y_bytes), (
            f"{type(m).__name__} keeps {held} bytes between forward and backward; the "
            f"contract allows {bound(m, x_bytes, y_bytes)} (input {x_bytes}, output "
            f"{y_bytes}): scratch (patch matrices, padded copies) belongs in the arena")


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=2), dict(padding="valid")])
def test_conv_keeps_its_input_and_nothing_of_the_kernels_size(kwargs, layout):
    """Conv2d holds exactly its input (a reference): nothing KH·KW times larger."""
    x = np.random.default_rng(0).standard_normal((4, 8, 12, 12)).astype(np.float32)
    if layout == "nhwc":
        x = x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    conv = L.Conv2d(8, 8, 3, **kwargs)
    conv(x)
    assert held_bytes(conv) == x.nbytes
    assert conv.cache[0] is x


@pytest.mark.parametrize("layer, shape", [
    (lambda: L.MaxPool2d(3, stride=2, padding=1), (2, 4, 9, 9)),
    (lambda: L.MaxPool2d((2, 3), stride=1, padding=(1, 1)), (2, 3, 5, 6)),
    (lambda: L.AvgPool2d(3, stride=1, padding=1), (2, 3, 6, 6))])
def test_padded_pooling_keeps_no_padded_copy(layer, shape):
    """A padded max pool keeps x and y; the -inf padded copy is scratch, made again in
    backward (and gives the same dx as the loop twin)."""
    from minicnn.functional import reference as ref

    pool = layer()
    x = np.random.default_rng(1).standard_normal(shape)
    y = pool(x)
    assert held_bytes(pool) <= x.nbytes + y.nbytes
    dout = np.random.default_rng(2).standard_normal(y.shape)
    scratch(np, "x_pad", (3 * x.size,), np.float64)[...] = np.nan   # another layer's garbage
    dx = pool.backward(dout)
    twin = (ref.max_pool2d_backward(x, dout, pool.kernel_size, pool.stride, pool.padding)
            if isinstance(pool, L.MaxPool2d) else
            ref.avg_pool2d_backward(dout, x.shape, pool.kernel_size, pool.stride, pool.padding))
    np.testing.assert_allclose(dx, twin, rtol=1e-12, atol=1e-12)


# -- the arena --------------------------------------------------------------------------------

def test_the_arena_hands_out_one_buffer_per_name_grown_to_the_largest_request():
    release_scratch()
    a = scratch(np, "test_a", (4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and a.flags.c_contiguous
    b = scratch(np, "test_a", (2, 3), np.float64)           # smaller: the same memory
    assert root(b) is root(a)
    c = scratch(np, "test_b", (4, 5), np.float32)           # another name: another buffer
    assert root(c) is not root(a)
    assert scratch_nbytes(np) == 80 + 80
    d = scratch(np, "test_a", (100,), np.float32)           # larger: grows, once
    assert root(d) is not root(a) and scratch_nbytes(np) == 400 + 80
    assert root(scratch(np, "test_a", (10, 10), np.float32)) is root(d)
    workspace = scratch_workspace(np)
    assert root(workspace("test_a", (5,), np.int64)) is root(d)
    release_scratch()
    assert scratch_nbytes() == 0


@pytest.mark.parametrize("a_shape, b_shape", [((3, 7, 5), (3, 5, 1)), ((3, 1, 5), (3, 5, 4)),
                                              ((7, 5), (5, 4)), ((7, 1), (1, 1))])
def test_matmul_into_an_arena_view_ignores_what_the_arena_held(a_shape, b_shape):
    """A scratch view may hold inf / NaN bytes (the arena mixes dtypes); a matrix-vector
    product into it (BLAS gemv with beta = 0) must neither warn nor return NaN."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s).astype(np.float32) for s in (a_shape, b_shape))
    expected = np.matmul(a, b)
    for leftover in (np.inf, np.nan):
        out = scratch(np, "test_matmul", expected.shape, np.float32)
        out[...] = leftover
        assert matmul_into(a, b, out) is out          # RuntimeWarnings are errors here
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    release_scratch()


def conv_stack(depth: int, channels: int = 8) -> L.Sequential:
    return L.Sequential(*[L.Conv2d(channels, channels, 3, padding=1) for _ in range(depth)])


def held_after_forward(depth: int, x: np.ndarray) -> tuple[int, int]:
    """Bytes held (tracemalloc: everything allocated since the model was built) after the
    second forward of a ``depth``-conv stack (the first step warms the arena), and the
    arena's size."""
    release_scratch()
    tracemalloc.start()
    try:
        mc.init.set_seed(0)
        model = conv_stack(depth)
        model.backward(np.ones_like(model(x)))
        model(x)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held, scratch_nbytes(np)


def test_scratch_does_not_grow_with_the_number_of_convolutions():
    """Each extra convolution adds what it keeps (its input: one activation) and its
    parameters, not a patch matrix of its own (nine activations): the arena is one, sized
    for the largest layer, whatever the depth."""
    x = np.random.default_rng(0).standard_normal((4, 8, 16, 16)).astype(np.float32)
    (held_1, arena_1), (held_6, arena_6) = held_after_forward(1, x), held_after_forward(6, x)
    assert arena_1 == arena_6 > 9 * x.nbytes                 # x's patches, at least
    params = sum(p.data.nbytes for p in conv_stack(1).parameters())
    per_layer = (held_6 - held_1) / 5
    assert per_layer <= 1.5 * x.nbytes + params, (
        f"each conv layer adds {per_layer:.0f} bytes: more than its kept input "
        f"({x.nbytes}) and parameters ({params})")
    assert not any(hasattr(m, "_workspaces") for m in conv_stack(2).modules())


def test_a_second_backward_after_one_forward_gives_the_same_gradients():
    """Nothing a backward needs is scratch, so backward can run twice (e.g. for two losses
    summed by hand), with other layers' passes in between."""
    rng = np.random.default_rng(3)
    mc.init.set_seed(3)
    model = L.Sequential(L.Conv2d(3, 6, 3, padding=1), L.BatchNorm2d(6), L.ReLU(),
                         L.MaxPool2d(3, stride=2, padding=1), L.Conv2d(6, 6, 3, padding=1),
                         L.Conv2d(6, 4, 3, stride=2), L.Flatten(), L.Linear(4 * 1 * 1, 2))
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = model(x)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    dx = model.backward(dout)
    grads = [p.grad.copy() for p in model.parameters()]
    other = conv_stack(2, channels=6)
    other.backward(np.ones_like(other(rng.standard_normal((3, 6, 8, 8)).astype(np.float32))))
    np.testing.assert_array_equal(model.backward(dout), dx)
    for g, p in zip(grads, model.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, g)


@pytest.mark.cupy
def test_the_arena_on_the_device(xp):
    """The same code path on CuPy (the strict stand-in under --strict-device): a model's
    scratch is device memory, one buffer per name, reused from step to step, and the
    gradients equal NumPy's."""
    rng = np.random.default_rng(4)
    x_host = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)

    def model_and_grads(xp_):
        mc.set_backend("numpy" if xp_ is np else "cupy")
        mc.init.set_seed(4)
        model = L.Sequential(L.Conv2d(4, 4, 3, padding=1), L.ReLU(),
                             L.MaxPool2d(3, stride=1, padding=1), L.Conv2d(4, 8, 3, stride=2))
        x = xp_.asarray(x_host)
        held = []
        for _ in range(2):
            dx = model.backward(xp_.ones_like(model(x)))
            held.append(scratch_nbytes(xp_))
        assert held[1] == held[0] > 0                   # the second step allocated nothing
        return [to_numpy(dx)] + [to_numpy(p.grad) for p in model.parameters()]

    expected = model_and_grads(np)
    got = model_and_grads(xp)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
