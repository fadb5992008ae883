"""The layer contract (``minicnn/layers/base.py``), checked for every layer minicnn exports and
every model of the zoo.

The layer tests are parametrised over the classes ``minicnn.layers`` exports, found at import
time, so a new layer is covered the moment it is exported: ``EXAMPLES`` must then say how to
build one and what input it takes (a test fails until it does). They check: backward before
forward is a clear ``RuntimeError``; no layer state holds a module object; ``copy.deepcopy``
and pickle work after a forward and the copy computes the same outputs; a ``state_dict``
round trip reproduces the outputs; and on the strict CuPy stand-in, a forward + backward
makes no host synchronisation and copies nothing from the host.

The zoo tests do the same for every model registered in ``minicnn.models.MODELS``, plus the
strict ``load_state_dict`` errors and the documented tuning recipe on one model.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import minicnn as mc
from minicnn import layers as L
from minicnn import models, tuning
from minicnn.backend import to_numpy
from minicnn.data.loader import DataLoader
from minicnn.layers.base import Layer

# -- one example per exported layer ----------------------------------------------------------

# class name -> (a factory for a small instance, the input shape it takes)
EXAMPLES: dict[str, tuple[Callable[[], Layer], tuple[int, ...]]] = {
    "Conv2d": (lambda: L.Conv2d(3, 4, 3, padding=1), (2, 3, 5, 5)),
    "ConvTranspose2d": (lambda: L.ConvTranspose2d(3, 4, 3, stride=2, padding=1,
                                                  output_padding=1), (2, 3, 4, 5)),
    "Concat": (lambda: L.Concat(L.Identity(), L.Sequential(L.Conv2d(3, 2, 3, padding=1), L.ReLU()),
                                L.MaxPool2d(3, stride=1, padding=1)), (2, 3, 4, 4)),
    "SqueezeExcite": (lambda: L.SqueezeExcite(4, 2), (2, 4, 3, 3)),
    "Upsample": (lambda: L.Upsample((2, 3), mode="bilinear"), (2, 3, 4, 5)),
    "AdaptiveAvgPool2d": (lambda: L.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
    "MaxPool2d": (lambda: L.MaxPool2d(2), (2, 3, 4, 6)),
    "AvgPool2d": (lambda: L.AvgPool2d(3, stride=2, padding=1), (2, 3, 5, 5)),
    "GlobalAvgPool2d": (lambda: L.GlobalAvgPool2d(), (2, 3, 4, 4)),
    "Linear": (lambda: L.Linear(5, 3), (4, 5)),
    "ReLU": (lambda: L.ReLU(), (3, 4)),
    "LeakyReLU": (lambda: L.LeakyReLU(0.1), (3, 4)),
    "Sigmoid": (lambda: L.Sigmoid(), (3, 4)),
    "Tanh": (lambda: L.Tanh(), (3, 4)),
    "SiLU": (lambda: L.SiLU(), (3, 4)),
    "GELU": (lambda: L.GELU(), (3, 4)),
    "BatchNorm1d": (lambda: L.BatchNorm1d(4), (5, 4)),
    "BatchNorm2d": (lambda: L.BatchNorm2d(3), (2, 3, 4, 4)),
    # without a communicator (one process) it is BatchNorm2d; tests/test_distributed.py
    # checks it across 2 ranks
    "SyncBatchNorm2d": (lambda: L.SyncBatchNorm2d(3), (2, 3, 4, 4)),
    "LayerNorm": (lambda: L.LayerNorm((3, 4)), (2, 3, 4)),
    "GroupNorm": (lambda: L.GroupNorm(2, 4), (2, 4, 3, 3)),
    "InstanceNorm2d": (lambda: L.InstanceNorm2d(3, affine=True), (2, 3, 4, 4)),
    "LocalResponseNorm": (lambda: L.LocalResponseNorm(4, alpha=0.5, beta=0.75, k=2.0),
                          (2, 5, 3, 3)),
    "Dropout": (lambda: L.Dropout(0.5, seed=3), (4, 6)),
    "PatchWhitening": (lambda: L.PatchWhitening(3, 2).fit(
        np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)),
        (2, 3, 5, 5)),
    "Flatten": (lambda: L.Flatten(), (2, 3, 2, 2)),
    "Identity": (lambda: L.Identity(), (3, 4)),
    "Sequential": (lambda: L.Sequential(L.Linear(4, 6), L.BatchNorm1d(6), L.ReLU(),
                                        L.Dropout(0.3, seed=1), L.Linear(6, 2)), (5, 4)),
    "Residual": (lambda: L.Residual(L.Sequential(L.Conv2d(3, 3, 3, padding=1),
                                                 L.BatchNorm2d(3), L.ReLU()),
                                    L.Conv2d(3, 3, 1)), (2, 3, 4, 4)),
}
CONTAINERS = ("Sequential", "Residual")  # their error names the first child that has no cache


def exported_layer_classes() -> list[type]:
    """Every public Layer subclass that ``minicnn.layers`` exports (Layer itself excluded)."""
    return sorted((obj for name, obj in vars(L).items()
                   if inspect.isclass(obj) and issubclass(obj, Layer) and obj is not Layer
                   and not name.startswith("_")), key=lambda c: c.__name__)


LAYERS = exported_layer_classes()


def example(cls: type, seed: int = 0) -> tuple[Layer, np.ndarray]:
    """A fresh instance of ``cls`` (weights from ``seed``) and a float32 input for it."""
    factory, shape = EXAMPLES[cls.__name__]
    mc.init.set_seed(seed)
    layer = factory()
    assert type(layer) is cls
    x = np.random.default_rng(100 + seed).standard_normal(shape).astype(np.float32)
    return layer, x


def test_every_exported_layer_has_an_example():
    missing = [c.__name__ for c in LAYERS if c.__name__ not in EXAMPLES]
    assert not missing, (f"add an example for {missing} to EXAMPLES in "
                         f"tests/test_layer_contract.py (a factory and an input shape)")
    stale = sorted(set(EXAMPLES) - {c.__name__ for c in LAYERS})
    assert not stale, f"EXAMPLES names layers minicnn.layers does not export: {stale}"


def _skip_without_example(cls: type) -> None:
    if cls.__name__ not in EXAMPLES:
        pytest.fail(f"no example for {cls.__name__}: see test_every_exported_layer_has_an_example")


def module_objects(value: Any, path: str, seen: set[int]) -> list[str]:
    """Paths inside ``value`` (a layer's state: tuples, lists, dicts, NamedTuples, arrays)
    that hold a module object (e.g. ``numpy`` or ``cupy``, which cannot be pickled)."""
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, types.ModuleType):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in module_objects(v, f"{path}[{k!r}]", seen)]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in module_objects(v, f"{path}[{i}]", seen)]
    if isinstance(value, (Layer, mc.Parameter)):
        return [p for k, v in vars(value).items() for p in module_objects(v, f"{path}.{k}", seen)]
    return []


def all_caches_empty(layer: Layer) -> bool:
    return all(m.cache is None for m in layer.modules())


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_backward_before_forward_is_a_clear_error(cls):
    _skip_without_example(cls)
    layer, x = example(cls)
    name = r"\w+" if cls.__name__ in CONTAINERS else cls.__name__
    with pytest.raises(RuntimeError, match=rf"{name}\.backward called before forward"):
        layer.backward(np.ones_like(x))


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_forward_then_backward_and_no_module_in_the_state(cls, training):
    _skip_without_example(cls)
    layer, x = example(cls)
    layer.train(training)
    y = layer(x)
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape and dx.dtype == x.dtype
    for m in layer.modules():  # containers keep nothing themselves: their children do
        if not list(m.children()):
            assert m.cache is not None, f"{type(m).__name__}.forward stored no cache"
    held = module_objects(layer, type(layer).__name__, set())
    assert not held, f"layer state holds a module object at {held} (cannot be pickled)"


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_after_forward_computes_the_same(cls, how):
    """A copy taken after a forward has no cache (backward first needs a forward) and then
    computes exactly what the original computes, in training mode too (Dropout's generator
    and BatchNorm's running statistics are copied)."""
    _skip_without_example(cls)
    layer, x = example(cls)
    layer(x)
    layer.backward(np.ones_like(layer(x)))
    clone = copy.deepcopy(layer) if how == "deepcopy" else pickle.loads(pickle.dumps(layer))
    assert all_caches_empty(clone)
    name = r"\w+" if cls.__name__ in CONTAINERS else cls.__name__
    with pytest.raises(RuntimeError, match=rf"{name}\.backward called before forward"):
        clone.backward(np.ones_like(x))
    for training in (True, False):
        layer.train(training)
        clone.train(training)
        y, y_clone = layer(x), clone(x)
        np.testing.assert_array_equal(y_clone, y)
        np.testing.assert_array_equal(clone.backward(np.ones_like(y)),
                                      layer.backward(np.ones_like(y)))
    for (k, a), (k2, b) in zip(layer.state_dict().items(), clone.state_dict().items(),
                               strict=True):
        assert k == k2
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
def test_state_dict_round_trip_reproduces_the_outputs(cls):
    _skip_without_example(cls)
    layer, x = example(cls, seed=0)
    layer(x)  # moves BatchNorm's running statistics away from their start
    other, _ = example(cls, seed=1)
    other.load_state_dict(layer.state_dict())
    for m in (layer, other):
        m.eval()
    np.testing.assert_array_equal(other(x), layer(x))


@pytest.mark.cupy
@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_no_host_sync_or_copy_on_the_device(strict_cupy, cls, training):
    """On the strict CuPy stand-in: a forward and a backward make no host synchronisation
    (no float()/bool()/boolean-mask index...) and bring nothing over from the host."""
    _skip_without_example(cls)
    mc.set_backend("numpy")
    reference, x_host = example(cls)  # on NumPy, the same weights
    expected = reference.train(training)(x_host)
    mc.set_backend("cupy")
    layer, _ = example(cls)
    layer.train(training)
    assert all(mc.backend.get_array_module(p.data) is not np for p in layer.parameters())
    x = mc.backend.to_device(x_host)
    with strict_cupy.record() as rec:
        y = layer(x)
        dout = mc.backend.get_xp().ones_like(y)
        layer.backward(dout)
        layer(x)  # a second step: nothing may be cached on the host after the first
        layer.backward(dout)
    assert rec.syncs == 0, f"{cls.__name__}: host syncs\n{rec.report('sync')}"
    assert rec.h2d_bytes == 0, f"{cls.__name__}: host->device copies\n{rec.report('h2d')}"
    # The same function as on NumPy (Dropout's masks differ between backends by design).
    if not (training and any(isinstance(m, L.Dropout) for m in layer.modules())):
        np.testing.assert_allclose(to_numpy(y), expected, rtol=1e-5, atol=1e-6)


# -- layers held in dicts, lists and tuples --------------------------------------------------

class Branches(Layer):
    """y = stack(a(x) + b(x)) with the sub-layers held in a dict, a list and a tuple."""

    def __init__(self):
        super().__init__()
        self.branches = {"a": L.Linear(3, 4), "b": L.Linear(3, 4)}
        self.stack = [L.Linear(4, 4), L.BatchNorm1d(4)]
        self.head = (L.ReLU(), L.Linear(4, 2))

    def forward(self, x):
        h = self.branches["a"](x) + self.branches["b"](x)
        for layer in (*self.stack, *self.head):
            h = layer(h)
        return h

    def backward(self, dout):
        for layer in reversed((*self.stack, *self.head)):
            dout = layer.backward(dout)
        return self.branches["a"].backward(dout) + self.branches["b"].backward(dout)


def test_dict_list_and_tuple_held_layers_are_found():
    mc.init.set_seed(0)
    model = Branches()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["branches.a.W", "branches.a.b", "branches.b.W", "branches.b.b",
                     "stack.0.W", "stack.0.b", "stack.1.gamma", "stack.1.beta",
                     "head.1.W", "head.1.b"]
    assert len(model.parameters()) == 10
    assert model.num_parameters() == 2 * (3 * 4 + 4) + (4 * 4 + 4) + 2 * 4 + (4 * 2 + 2)
    assert list(model.state_dict()) == names + ["stack.1.running_mean", "stack.1.running_var"]
    assert [n for n, _ in model.named_modules()] == [
        "", "branches.a", "branches.b", "stack.0", "stack.1", "head.0", "head.1"]
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    # Gradients reach every parameter, and a state dict round trip reproduces the outputs.
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    model.backward(np.ones_like(model(x)))
    assert all(p.grad is not None for p in model.parameters())
    mc.init.set_seed(1)
    other = Branches().load_state_dict(model.state_dict())
    np.testing.assert_array_equal(other.eval()(x), model.eval()(x))
    # astype reaches them too.
    model.astype(np.float64)
    assert all(a.dtype == np.float64 for a in model.state_dict().values())


# -- the zoo ---------------------------------------------------------------------------------

# Small versions of the zoo's models (any registered model not named here is built with its
# defaults, so a new one is covered too). BatchNorm and Dropout switched on where offered.
ZOO_KWARGS: dict[str, dict[str, Any]] = {
    "simple_cnn": dict(image_size=12, widths=(4, 8), hidden=16),
    "vgg": dict(widths=(4, 8, 8), hidden=16, batchnorm=True, dropout=0.5, image_size=16),
    "vgg16": dict(width=1 / 32, cifar=True, batchnorm=True, image_size=32),
    "lenet5": dict(),
    "resnet": dict(widths=(4, 8, 8), blocks=1),
    "airbench94": dict(widths=(8, 16, 16)),
}
ZOO = sorted(models.MODELS)


def zoo_model(name: str, seed: int) -> tuple[Layer, np.ndarray]:
    mc.init.set_seed(seed)
    model = models.build(name, ZOO_KWARGS.get(name, {}))
    x = np.random.default_rng(7).standard_normal((3, *model.input_shape)).astype(np.float32)
    models.fit_whitening(model, x)       # an unfitted PatchWhitening outputs zeros
    return model, x


def host_state(model: Layer) -> dict[str, np.ndarray]:
    return {k: to_numpy(v).copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ZOO)
def test_zoo_state_dict_round_trip(name):
    trained, x = zoo_model(name, seed=0)
    trained(x)  # training mode: BatchNorm's running statistics move
    fresh, _ = zoo_model(name, seed=1)
    trained.eval()
    fresh.eval()
    assert not np.allclose(fresh(x), trained(x))  # another seed: another function
    fresh.load_state_dict(trained.state_dict())
    np.testing.assert_array_equal(fresh(x), trained(x))
    assert host_state(fresh).keys() == host_state(trained).keys()


@pytest.mark.parametrize("name", ZOO)
def test_zoo_load_state_dict_strict_errors_leave_the_model_unchanged(name):
    source, x = zoo_model(name, seed=0)
    target, _ = zoo_model(name, seed=1)
    before = host_state(target)
    state = source.state_dict()
    keys = list(state)
    missing = {k: v for k, v in state.items() if k != keys[-1]}
    unexpected = {**state, "extra.W": np.zeros(3, np.float32)}
    misshaped = {**state, keys[0]: np.zeros((*np.shape(state[keys[0]]), 2), np.float32)}
    cases = [(missing, rf"missing keys \[{keys[-1]!r}\]"),
             (unexpected, r"unexpected keys \['extra\.W'\]"),
             (misshaped, rf"{keys[0]!r} has shape")]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(bad)
        after = host_state(target)
        for k in before:
            np.testing.assert_array_equal(after[k], before[k], err_msg=f"{k} changed")
    # Not strict: the keys that are there load, the missing one keeps its value.
    target.load_state_dict(missing, strict=False)
    after = host_state(target)
    np.testing.assert_array_equal(after[keys[0]], to_numpy(state[keys[0]]))
    np.testing.assert_array_equal(after[keys[-1]], before[keys[-1]])


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_zoo_deepcopy_and_pickle_after_forward(name, how):
    model, x = zoo_model(name, seed=0)
    model.backward(np.ones_like(model(x)))
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert all_caches_empty(clone)
    # Training mode first: the same Dropout masks and BatchNorm statistic updates, then eval.
    for training in (True, False):
        model.train(training)
        clone.train(training)
        np.testing.assert_array_equal(clone(x), model(x))
    for k, v in host_state(model).items():
        np.testing.assert_array_equal(host_state(clone)[k], v)


def test_tuning_recipe_order_on_one_model():
    """The documented order, on the same model: check the initial loss, then overfit a small
    batch (which trains a deep copy of the model after the check's forwards)."""
    model, _ = zoo_model("simple_cnn", seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, *model.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    before = host_state(model)
    check = tuning.check_initial_loss(model, DataLoader(x, y, 8, shuffle=False), warn=False)
    assert np.isfinite(check.loss)
    result = tuning.overfit_small_batch(model, x[:8], y[:8], steps=3, lr=1e-2)
    assert np.isfinite(result.loss) and result.steps >= 1
    for k, v in host_state(model).items():
        np.testing.assert_array_equal(v, before[k])  # copy=True: the model is untouched
