"""Saliency and Grad-CAM (minicnn.explain, minicnn.plot) and the ``minicnn explain`` command.

- saliency is the numerical gradient of the class score (central differences, float64);
- Grad-CAM is its formula, with dS/dA taken by central differences at the layer's output;
- Grad-CAM lights up the region the answer depends on: exactly, for a hand-built detector,
  and for a small network trained on shapes at random places;
- the bilinear upsampling is PyTorch's (known values, a loop twin, torch when installed);
- explaining disturbs nothing (mode, input_grad, gradients, caches, the layers' methods);
- ``minicnn explain`` writes the picture for a ``minicnn train --smoke`` checkpoint, and its
  errors are one line with exit status 2.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn import cli, explain, losses, optim, plot, training
from minicnn import layers as L
from minicnn.backend import get_array_module, get_xp, to_numpy
from minicnn.gradcheck import numerical_gradient, relative_error
from minicnn.init import set_seed

needs_matplotlib = pytest.mark.skipif(not plot.matplotlib_available(),
                                      reason="matplotlib not installed")


# -- models and data ---------------------------------------------------------------------------

def small_net(dtype=np.float64, seed=0):
    """Conv, BatchNorm (eval, non-trivial statistics), ReLU, max pooling, a residual block with
    a projection shortcut, Dropout, global pooling, Linear: every kind of backward on the way
    from the score to x. Names: layers.0 .. layers.8; the default Grad-CAM layer is the ReLU
    after the residual block, layers.5: the last spatial output of the main path (the
    shortcut's conv runs later, Dropout only passes the maps on)."""
    set_seed(seed)
    bn = L.BatchNorm2d(4)
    rng = np.random.default_rng(seed)
    bn.running_mean = get_xp().asarray(rng.standard_normal(4) * 0.3, dtype=np.float32)
    bn.running_var = get_xp().asarray(rng.uniform(0.5, 2.0, 4), dtype=np.float32)
    model = L.Sequential(
        L.Conv2d(2, 4, 3, padding="same"), bn, L.ReLU(), L.MaxPool2d(2),
        L.Residual(L.Sequential(L.Conv2d(4, 5, 3, padding="same"), L.ReLU(),
                                L.Conv2d(5, 5, 3, padding="same")),
                   shortcut=L.Conv2d(4, 5, 1)),
        L.ReLU(), L.Dropout(0.5), L.GlobalAvgPool2d(), L.Linear(5, 3))
    return model.astype(dtype)


def scores(model, x, target):
    """S = Σ_n z[n, target[n]] in eval mode: what saliency and Grad-CAM differentiate."""
    with model.mode(training=False):
        return float(model.forward(x)[np.arange(len(x)), target].sum())


# -- saliency ------------------------------------------------------------------------------------

@given(n=st.integers(1, 2), h=st.integers(2, 7), w=st.integers(2, 7), seed=st.integers(0, 99))
def test_saliency_is_the_numerical_gradient_of_the_class_score(n, h, w, seed):
    model = small_net(seed=seed)
    x = np.random.default_rng(seed).standard_normal((n, 2, h, w))
    target = np.random.default_rng(seed + 1).integers(0, 3, n)

    g = explain.input_gradient(model, x, target)
    numeric = numerical_gradient(lambda: scores(model, x, target), x)
    assert g.shape == x.shape and relative_error(g, numeric) < 1e-6

    np.testing.assert_allclose(explain.saliency(model, x, target),
                               np.abs(numeric).max(axis=1), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(explain.saliency(model, x, target, mode="grad_x_input"),
                               (numeric * x).sum(axis=1), rtol=1e-5, atol=1e-9)


def test_target_none_explains_the_predicted_class_and_an_int_every_image():
    model = small_net()
    x = np.random.default_rng(3).standard_normal((4, 2, 6, 6))
    with model.mode(training=False):
        predicted = model.forward(x).argmax(axis=1)
    np.testing.assert_array_equal(explain.saliency(model, x),
                                  explain.saliency(model, x, predicted))
    np.testing.assert_array_equal(explain.saliency(model, x, 2),
                                  explain.saliency(model, x, [2, 2, 2, 2]))
    e = explain.explain(model, x)
    np.testing.assert_array_equal(e.target, predicted)
    assert e.layer == "layers.5"


def test_a_single_image_and_float32_keep_their_shape_and_dtype():
    model = small_net(np.float32)
    x = np.random.default_rng(0).standard_normal((2, 8, 8)).astype(np.float32)  # (C, H, W)
    for m in (explain.saliency(model, x, 1), explain.grad_cam(model, x, 1)):
        assert m.shape == (8, 8) and m.dtype == np.float32
    assert explain.input_gradient(model, x, 1).shape == (2, 8, 8)


# -- Grad-CAM ------------------------------------------------------------------------------------

# Not at layers.2, the ReLU before max pooling: its zeros tie in a pooling window, where the
# central difference has no derivative to find.
@pytest.mark.parametrize("split", [0, 1, 4, 5])
def test_grad_cam_is_its_formula_with_the_gradient_at_the_layer(split):
    model = small_net().eval()
    x = np.random.default_rng(split).standard_normal((2, 2, 8, 8))
    target = np.array([0, 2])
    tail, head = model[:split + 1], model[split + 1:]
    A = np.ascontiguousarray(tail.forward(x))               # (N, K, h, w)
    dA = numerical_gradient(
        lambda: float(head.forward(A)[np.arange(2), target].sum()), A)
    alpha = dA.mean(axis=(2, 3))                            # α_k: the spatial mean
    cam = np.maximum((alpha[:, :, None, None] * A).sum(axis=1), 0)

    raw = explain.grad_cam(model, x, target, f"layers.{split}", upsample=False,
                           normalize=False)
    assert relative_error(raw, cam) < 1e-6
    same = explain.grad_cam(model, x, target, model.layers[split], upsample=False,
                            normalize=False)
    np.testing.assert_array_equal(same, raw)               # a Layer object or its name

    up = explain.upsample_bilinear(cam, (8, 8))
    expected = up / up.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(explain.grad_cam(model, x, target, f"layers.{split}"),
                               expected, rtol=1e-6, atol=1e-9)


def block_detector():
    """A hand-built model whose answer depends on one region only: the block.

    Channel 0 of the conv is a 3x3 box filter minus 0.5 (> 0 where most of a pixel's
    neighbourhood is bright), channel 1 the same for dark; ReLU; global average pooling;
    class 0 = "a bright block" reads channel 0, class 1 = "a dark block" channel 1.
    """
    model = L.Sequential(L.Conv2d(1, 2, 3, padding="same"), L.ReLU(), L.GlobalAvgPool2d(),
                         L.Linear(2, 2))
    conv, dense = model.layers[0], model.layers[3]
    conv.W.data = np.stack([np.full((1, 3, 3), 1 / 9), np.full((1, 3, 3), -1 / 9)])
    conv.b.data = np.array([-0.5, -0.5])
    dense.W.data, dense.b.data = np.eye(2), np.zeros(2)
    return model.astype(np.float32)


@pytest.mark.parametrize("row, col, sign", [(1, 7, 1.0), (6, 2, 1.0), (3, 4, -1.0)])
def test_grad_cam_lights_up_exactly_the_region_the_answer_depends_on(row, col, sign):
    x = np.random.default_rng(row).uniform(-0.1, 0.1, (1, 1, 12, 12)).astype(np.float32)
    x[0, 0, row:row + 4, col:col + 4] += 2.0 * sign          # a 4x4 block, bright or dark
    near = np.zeros((12, 12), bool)                         # the block and its 1-pixel ring
    near[max(row - 1, 0):row + 5, max(col - 1, 0):col + 5] = True
    model = block_detector()
    cls = 0 if sign > 0 else 1

    cam = explain.grad_cam(model, x, cls)[0]               # default layer: the conv
    assert cam.max() == 1.0 and np.all(cam[~near] == 0)
    inside = cam[row + 1:row + 3, col + 1:col + 3]           # the block's 2x2 inside
    assert inside.max() == 1.0 and inside.min() > 0.9       # the peak, up to the noise
    # The other class has no evidence anywhere: an all-zero map, not noise stretched to 1.
    assert np.all(explain.grad_cam(model, x, 1 - cls) == 0)


def shapes(n, seed, size=16):
    """Noise with one bright shape at a random place; the class is the shape (a horizontal
    bar, a vertical bar, a square). Returns the images, labels and each shape's mask."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 1, size, size)).astype(np.float32)
    mask = np.zeros((n, size, size), bool)
    for i, (h, w) in enumerate([((1, 7), (7, 1), (3, 3))[c] for c in y]):
        r, c = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        x[i, 0, r:r + h, c:c + w] += 2.0
        mask[i, r:r + h, c:c + w] = True
    return x, y, mask


def test_grad_cam_of_a_trained_network_finds_the_shape_it_classifies():
    set_seed(0)
    model = L.Sequential(L.Conv2d(1, 8, 3, padding="same"), L.ReLU(), L.MaxPool2d(2),
                         L.Conv2d(8, 16, 3, padding="same"), L.ReLU(), L.GlobalAvgPool2d(),
                         L.Linear(16, 3))
    x, y, _ = shapes(768, seed=0)
    loss, opt = losses.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        for i in range(0, len(x), 32):
            loss.forward(model.forward(x[i:i + 32]), y[i:i + 32])
            model.backward(loss.backward())
            opt.step()
    x_test, y_test, mask = shapes(90, seed=1)
    with model.mode(training=False):
        assert (model.forward(x_test).argmax(axis=1) == y_test).mean() >= 0.9

    cam = explain.grad_cam(model, x_test, y_test)          # at layers.3, 8x8 -> 16x16
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    near = np.zeros_like(mask)                             # the shape and its 1-pixel ring
    for dy in range(3):
        for dx in range(3):
            near |= padded[:, dy:dy + 16, dx:dx + 16]
    share = (cam * near).sum(axis=(1, 2)) / cam.sum(axis=(1, 2))
    peak_inside = near.reshape(90, -1)[np.arange(90), cam.reshape(90, -1).argmax(axis=1)]
    assert np.median(share) > 3 * near.mean()              # chance: near.mean() (0.55 : 0.1)
    assert peak_inside.mean() > 0.6                        # (0.99 here)


def test_the_default_layer_is_the_last_rectified_maps_of_the_main_path():
    model = small_net()
    assert [n for n, _ in explain.conv_layers(model)] == [
        "layers.0", "layers.4.body.layers.0", "layers.4.body.layers.2"]
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8))
    # The rectified maps after the last block (Dropout and pooling pass maps on, the 1×1
    # shortcut conv runs last but is not the main path).
    assert explain.explain(model, x).layer == "layers.5"
    # At 2x2 the block runs at 1x1 (after max pooling): the ReLU before the pooling is the
    # last spatial output.
    assert explain.explain(model, x[:, :, :2, :2]).layer == "layers.2"


def test_bad_layers_targets_and_inputs_get_one_clear_error():
    model = small_net()
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8))
    with pytest.raises(explain.LayerChoiceError, match=r"no layer named 'layers\.40'; the "
                       r"convolutions are layers\.0, layers\.4\.body\.layers\.0, "
                       r"layers\.4\.body\.layers\.2"):
        explain.grad_cam(model, x, 0, "layers.40")
    with pytest.raises(explain.LayerChoiceError, match=r"'layers\.8' \(Linear\) outputs shape "
                                                       r"\(2, 3\), not feature maps"):
        explain.grad_cam(model, x, 0, "layers.8")
    with pytest.raises(explain.LayerChoiceError, match="Conv2d is not a layer of this model"):
        explain.grad_cam(model, x, 0, L.Conv2d(2, 2, 3))
    with pytest.raises(TypeError, match="a Layer of the model or its dotted name"):
        explain.grad_cam(model, x, 0, 3)
    dense = L.Sequential(L.Flatten(), L.Linear(2 * 8 * 8, 3))
    with pytest.raises(explain.LayerChoiceError, match="has no Conv2d layer"):
        explain.grad_cam(dense, x, 0)
    with pytest.raises(ValueError, match=r"target holds class 3, but the model has 3 classes"):
        explain.saliency(model, x, [0, 3])
    with pytest.raises(ValueError, match=r"target has shape \(3,\)"):
        explain.saliency(model, x, [0, 1, 2])
    with pytest.raises(TypeError, match="class indices"):
        explain.saliency(model, x, 0.5)
    with pytest.raises(ValueError, match="mode must be one of grad, grad_x_input"):
        explain.saliency(model, x, 0, mode="smooth")
    with pytest.raises(TypeError, match="floating-point image array"):
        explain.saliency(model, x.astype(np.uint8), 0)
    with pytest.raises(ValueError, match=r"got shape \(2, 2, 8, 8, 1, 1\)"):
        explain.saliency(model, x[..., None, None], 0)
    # Whatever went wrong, no layer keeps a wrapper.
    assert all("forward" not in vars(m) and "backward" not in vars(m) for m in model.modules())


# -- nothing is disturbed ------------------------------------------------------------------------

def test_explaining_in_the_middle_of_a_step_changes_nothing():
    model = small_net()
    model.layers[0].input_grad = False                      # as fit leaves the first layer
    model.layers[1].eval()                                  # a frozen BatchNorm in a training model
    for p in model.parameters():
        p.grad = np.full(p.shape, 7.0)
    batch = np.random.default_rng(1).standard_normal((3, 2, 8, 8))
    dout = np.random.default_rng(2).standard_normal((3, 3))
    twin = copy.deepcopy(model)                              # same weights and Dropout stream

    model.forward(batch)                                    # a training step, half done
    images = np.random.default_rng(3).standard_normal((2, 2, 8, 8))
    explain.explain(model, images, [0, 1])
    explain.saliency(model, images, 1, mode="grad_x_input")
    explain.grad_cam(model, images, 2, "layers.5")

    assert [m.training for m in model.modules()] == [m.training for m in twin.modules()]
    assert model.layers[0].input_grad is False
    assert all(np.all(p.grad == 7.0) for p in model.parameters())
    assert all("forward" not in vars(m) and "backward" not in vars(m) for m in model.modules())
    assert model.backward(dout) is None                     # the first layer still skips dx
    twin.forward(batch)
    twin.backward(dout)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)


# -- bilinear upsampling -------------------------------------------------------------------------

def test_bilinear_upsampling_has_pytorchs_values():
    m = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    # torch.nn.functional.interpolate(m[None], size=(4, 4), mode="bilinear",
    # align_corners=False)
    expected = [[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5],
                [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]]
    np.testing.assert_allclose(explain.upsample_bilinear(m, (4, 4))[0], expected)
    np.testing.assert_array_equal(explain.upsample_bilinear(m, (2, 2)), m)


def bilinear_twin(m, H, W):
    """The textbook loop: each output pixel from its four neighbours (align_corners=False)."""
    n, h, w = m.shape
    out = np.zeros((n, H, W))
    for i in range(H):
        for j in range(W):
            sy = min(max((i + 0.5) * h / H - 0.5, 0), h - 1)
            sx = min(max((j + 0.5) * w / W - 0.5, 0), w - 1)
            y0, x0 = int(sy), int(sx)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            ly, lx = sy - y0, sx - x0
            out[:, i, j] = ((1 - ly) * ((1 - lx) * m[:, y0, x0] + lx * m[:, y0, x1])
                            + ly * ((1 - lx) * m[:, y1, x0] + lx * m[:, y1, x1]))
    return out


@given(h=st.integers(1, 6), w=st.integers(1, 6), H=st.integers(1, 13), W=st.integers(1, 13),
       seed=st.integers(0, 99))
def test_bilinear_upsampling_equals_its_loop_twin(h, w, H, W, seed):
    m = np.random.default_rng(seed).standard_normal((2, h, w))
    np.testing.assert_allclose(explain.upsample_bilinear(m, (H, W)), bilinear_twin(m, H, W),
                               rtol=1e-12, atol=1e-12)


def test_bilinear_upsampling_equals_torch():
    torch = pytest.importorskip("torch")
    m = np.random.default_rng(0).standard_normal((3, 5, 7))
    for size in ((32, 32), (9, 20), (5, 7), (3, 4)):
        ref = torch.nn.functional.interpolate(torch.from_numpy(m)[None], size=size,
                                              mode="bilinear", align_corners=False)[0]
        np.testing.assert_allclose(explain.upsample_bilinear(m, size), ref.numpy(),
                                   rtol=1e-12, atol=1e-12)


# -- on the device -------------------------------------------------------------------------------

def test_maps_on_the_device_equal_the_host_ones(xp):
    model = small_net(np.float32)                           # on the backend under test
    host = copy.deepcopy(model).to("cpu")
    x = np.random.default_rng(0).standard_normal((3, 2, 8, 8)).astype(np.float32)
    e = explain.explain(model, xp.asarray(x), xp.asarray(np.array([0, 1, 2])))
    ref = explain.explain(host, x, [0, 1, 2])
    assert get_array_module(e.saliency) is xp and get_array_module(e.grad_cam) is xp
    assert e.saliency.dtype == e.grad_cam.dtype == np.float32
    np.testing.assert_allclose(to_numpy(e.saliency), ref.saliency, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_numpy(e.grad_cam), ref.grad_cam, rtol=1e-4, atol=1e-6)
    assert e.layer == ref.layer


# -- pictures ------------------------------------------------------------------------------------

@needs_matplotlib
def test_plot_explanations_draws_every_kind_of_map(tmp_path):
    model = small_net(np.float32)
    x = np.random.default_rng(0).standard_normal((3, 2, 8, 8)).astype(np.float32)
    maps = {"saliency": plot.saliency(model, x, 1),
            "x*grad": plot.saliency(model, x, 1, mode="grad_x_input"),  # signed
            "Grad-CAM": plot.grad_cam(model, x, 1)}
    fig = plot.plot_explanations(x, maps, [1, 0, 1], tmp_path / "grid.png",
                                 predictions=[1, 1, 1], class_names=["a", "b", "c"])
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert len(fig.axes) == 2 * 2 * 4                       # 2 images per row, 4 panels each
    images = (np.random.default_rng(1).random((3, 1, 8, 8)) * 255).astype(np.uint8)
    plot.plot_explanations(images, maps["Grad-CAM"], path=tmp_path / "one.png", per_row=3)
    assert (tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"map 'm' has shape \(3, 4, 4\); expected \(3, 8, 8\)"):
        plot.plot_explanations(x, {"m": np.zeros((3, 4, 4))})
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        plot.plot_explanations(x, maps, [0, 1])
    plot.pyplot().close("all")


# -- the command ---------------------------------------------------------------------------------

EXPLAIN = ["explain", "--smoke", "--backend", "numpy"]


@needs_matplotlib
def test_explain_command_writes_the_grid(cifar10_smoke_checkpoint, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert cli.main([*EXPLAIN, str(cifar10_smoke_checkpoint), "--out", str(out),
                     "--per-class", "1"]) == 0
    line = capsys.readouterr().out
    assert line == (f"wrote {out / 'explain.png'}: saliency and Grad-CAM of 10 cifar10 test "
                    f"images (1 per class); Grad-CAM at layers.7\n")
    assert (out / "explain.png").read_bytes()[:4] == b"\x89PNG"
    assert oct(os.stat(out / "explain.png").st_mode & 0o777) != "0o600"  # the usual mode

    assert cli.main([*EXPLAIN, str(cifar10_smoke_checkpoint), "--out", str(out), "--method",
                     "gradcam", "--layer", "layers.0"]) == 0
    assert "Grad-CAM of 19 cifar10 test images (2 per class); Grad-CAM at layers.0" in \
        capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["explain.png"]  # no temporary left


def explain_error(argv, capsys):
    """Run ``minicnn explain ...`` expecting a usage error; return its one stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minicnn explain: error: "), err
    return err.removeprefix("minicnn explain: error: ").strip()


@needs_matplotlib
def test_explain_command_errors_are_one_line(cifar10_smoke_checkpoint, tmp_path, capsys,
                                             monkeypatch):
    ckpt = str(cifar10_smoke_checkpoint)
    out = ["--out", str(tmp_path / "out")]
    assert explain_error([*EXPLAIN, ckpt, *out, "--layer", "layers.40"], capsys) == (
        "argument --layer: the model has no layer named 'layers.40'; the convolutions are "
        "layers.0, layers.4; any module of model.named_modules() whose output is "
        "(N, K, h, w) works")
    assert explain_error([*EXPLAIN, ckpt, *out, "--layer", "layers.9"], capsys).startswith(
        "argument --layer: layer 'layers.9' (Linear) outputs shape (19, 16), not feature maps")
    assert explain_error([*EXPLAIN, ckpt, "--per-class", "0"], capsys) == \
        "argument --per-class: must be >= 1, got 0"
    assert explain_error([*EXPLAIN, ckpt, "--method", "lime"], capsys).startswith(
        "argument --method: invalid choice: 'lime'")
    assert explain_error([*EXPLAIN, str(tmp_path / "none.npz")], capsys).startswith(
        "argument checkpoint: no such file")
    (tmp_path / "garbage.npz").write_text("garbage\n")
    assert explain_error([*EXPLAIN, str(tmp_path / "garbage.npz")], capsys).startswith(
        "argument checkpoint: ")
    (tmp_path / "file.txt").write_text("a file\n")
    assert explain_error([*EXPLAIN, ckpt, "--out", str(tmp_path / "file.txt")], capsys) == \
        f"argument --out: '{tmp_path / 'file.txt'}' is a file; expected a folder"
    bare = tmp_path / "bare.npz"                            # a checkpoint without a dataset
    training.save(bare, training.load(cifar10_smoke_checkpoint).model)
    assert "does not say which dataset it was trained on" in explain_error(
        [*EXPLAIN, str(bare)], capsys)
    monkeypatch.setattr(plot, "matplotlib_available", lambda: False)
    assert explain_error([*EXPLAIN, ckpt], capsys) == (
        "minicnn explain draws a picture and needs matplotlib: pip install 'minicnn[plot]' "
        "(or pip install matplotlib)")
    assert not (tmp_path / "out").exists()                 # nothing written by a failed run


@needs_matplotlib
@pytest.mark.cupy
def test_explain_command_on_the_cupy_backend(cifar10_smoke_checkpoint, tmp_path, capsys):
    from minicnn.backend import cupy_available

    if not cupy_available():
        pytest.skip("CuPy with a working GPU is not available")
    assert cli.main(["explain", "--smoke", "--backend", "cupy", str(cifar10_smoke_checkpoint),
                     "--out", str(tmp_path), "--per-class", "1"]) == 0
    assert "Grad-CAM at layers.7" in capsys.readouterr().out
    assert (tmp_path / "explain.png").read_bytes()[:4] == b"\x89PNG"
