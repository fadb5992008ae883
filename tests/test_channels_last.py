"""Channels-last survives every layer on CuPy (issue 24, item 2).

minicnn's convolutions hand over NHWC memory viewed as (N, C, H, W), and the next
convolution's im2col reads it with unit stride over the channels. CuPy allocates a ufunc's
output C-ordered in the *logical* shape (NumPy keeps the input's memory order), so one
element-wise op that is not careful turns the layout back into NCHW, and every later pass
reads with stride C. The strict stand-in (tests/strict_device.py) allocates ufunc outputs as
CuPy does, so here, for every exported layer (the layer contract's examples,
tests/test_layer_contract.py, with a 4-D input where the layer takes any shape): a
channels-last input gives a channels-last output (and a channels-last gradient gives a
channels-last dx) wherever they are 4-D, and the numbers equal NumPy's.
"""

from __future__ import annotations

import numpy as np
import pytest

import minicnn as mc
from minicnn.backend import to_numpy
from tests.test_layer_contract import EXAMPLES, LAYERS

# Layers whose contract example is not 4-D but which take any shape: a 4-D input here.
FOUR_D_INPUTS = {name: (2, 3, 4, 5) for name in (
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "GELU", "Dropout", "Identity")}

# Layers that lose the layout (issue 24), each with its reason: an entry comes out when its
# layer keeps the layout (test_not_yet_still_fails says when one does).
# Each entry: (class name, "forward" | "backward").
NOT_YET = {
    # layers/reshape.py, Flatten.backward, by choice: dout (N, C·H·W) is in (c, h, w) order
    # (the order the next Linear's weights use), so a dx stored NHWC is a full transposing
    # copy: one more launch per step in 2conv and VGG-12, whose Flatten follows a max pool
    # whose backward kernel reads dout through its strides (and writes its dx channels-last
    # anyway). A Conv2d before a Flatten makes that copy itself (its (N·H·W, C) dout
    # matrix), so one here would only move it. dx stays the free view dout.reshape(x.shape).
    ("Flatten", "backward"),
}


def channels_last(a) -> bool:
    """True when the (N, C, H, W) array ``a`` is stored as NHWC (dense, channels fastest)."""
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


def channels_last_on_device(a: np.ndarray):
    """``a`` (N, C, H, W) on the device, stored NHWC."""
    return mc.to_device(np.ascontiguousarray(a.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)


def input_shape(name: str) -> tuple[int, ...]:
    return FOUR_D_INPUTS.get(name, EXAMPLES[name][1])


def test_the_four_d_inputs_name_exported_layers():
    assert set(FOUR_D_INPUTS) <= set(EXAMPLES)
    assert {name for name, _ in NOT_YET} <= set(EXAMPLES)


def test_channels_last_detects_nchw():
    x = np.zeros((2, 3, 4, 5), np.float32)
    assert not channels_last(x)
    assert channels_last(np.zeros((2, 4, 5, 3), np.float32).transpose(0, 3, 1, 2))


def forward_backward(name: str, training: bool, x_host: np.ndarray, dout_host=None):
    """(layer, y, dx) of the example ``name`` on the device (weights from seed 0), fed a
    channels-last x and a channels-last dout (of y's shape; where y is 4-D)."""
    mc.init.set_seed(0)
    layer = EXAMPLES[name][0]().train(training)
    y = layer(channels_last_on_device(x_host))
    if dout_host is None:
        dout_host = np.ones(y.shape, np.float32)
    dout = channels_last_on_device(dout_host) if y.ndim == 4 else mc.to_device(dout_host)
    return layer, y, layer.backward(dout)


@pytest.mark.cupy
@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_channels_last_in_channels_last_out(strict_cupy, cls, training):
    name = cls.__name__
    if name not in EXAMPLES:
        pytest.fail(f"no example for {name}: see tests/test_layer_contract.py")
    shape = input_shape(name)
    if len(shape) != 4:
        pytest.skip(f"{name} takes no (N, C, H, W) input")
    rng = np.random.default_rng(7)
    x_host = rng.standard_normal(shape).astype(np.float32)

    mc.set_backend("numpy")
    mc.init.set_seed(0)
    reference = EXAMPLES[name][0]().train(training)
    y_ref = reference(x_host)
    dout_host = rng.standard_normal(y_ref.shape).astype(np.float32)
    mc.set_backend("cupy")
    layer, y, dx = forward_backward(name, training, x_host, dout_host)

    if y.ndim == 4 and (name, "forward") not in NOT_YET:
        assert channels_last(y), f"{name}.forward: channels-last input, NCHW output"
    if dx is not None and dx.ndim == 4 and (name, "backward") not in NOT_YET:
        assert channels_last(dx), f"{name}.backward: channels-last dout, NCHW dx"

    dropout = training and any(isinstance(m, mc.layers.Dropout) for m in layer.modules())
    if not dropout:  # (Dropout's masks differ between the backends by design)
        np.testing.assert_allclose(to_numpy(y), y_ref, rtol=1e-5, atol=1e-5)
        dx_ref = reference.backward(dout_host)
        if dx is not None:
            np.testing.assert_allclose(to_numpy(dx), dx_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.cupy
@pytest.mark.parametrize("name, where", sorted(NOT_YET))
def test_not_yet_still_fails(strict_cupy, name, where):
    """Each NOT_YET entry still loses the layout: when one keeps it, this fails until the
    entry is removed from NOT_YET (so that the main test guards it from then on)."""
    x_host = np.random.default_rng(7).standard_normal(input_shape(name)).astype(np.float32)
    _, y, dx = forward_backward(name, True, x_host)
    out = y if where == "forward" else dx
    assert out.ndim == 4, f"{name}.{where}: not 4-D, so NOT_YET need not name it"
    if channels_last(out):
        pytest.fail(f"{name}.{where} keeps channels-last now: remove ({name!r}, {where!r}) "
                    f"from NOT_YET in tests/test_channels_last.py")
