"""ONNX export and import (``minicnn.interop``), against the real ``onnx`` and ``onnxruntime``.

ONNX Runtime is the reference throughout: a file ``to_onnx`` writes must give minicnn's
evaluation-mode logits when ONNX Runtime runs it, and ``from_onnx`` of a file must give what
ONNX Runtime gives on that same file. Covered: every model of the zoo (and the ladder's
variants of vgg: residual, InstanceNorm, SiLU, GELU, LeakyReLU, whitening, pool-first),
every exportable layer, random Sequential models (hypothesis), files built with
``onnx.helper`` in the shapes PyTorch's exporter writes (Conv with BatchNorm folded into its
bias, Gemm with transB=1, Flatten and ``x.view(x.size(0), -1)``, GlobalAveragePool and
ReduceMean, Add residual blocks, SiLU and GELU spelled out, GroupNorm's pattern), malformed
files (one ``OnnxError`` each, naming the file), and the ``minicnn export`` command on a
checkpoint of ``minicnn train --smoke``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import cli, data, models, training
from minicnn import layers as L
from minicnn.interop import EXPORTERS, OnnxError, from_onnx, to_onnx
from minicnn.layers.base import Layer
from minicnn.presets import DATASETS, PRESETS, SMOKE_SIZES, resolve

onnx = pytest.importorskip("onnx", reason="pip install 'minicnn[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="pip install 'minicnn[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

# -- helpers ------------------------------------------------------------------------------------


def run_ort(path: Path | str, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's output for ``x`` (one thread: the suite shares two cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})[0]


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    """float32 agreement: 1e-4 relative to the output's scale."""
    got, expected = mc.to_numpy(got), mc.to_numpy(expected)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4,
                               atol=1e-4 * max(1.0, float(np.abs(expected).max())))


def randomize(model: Layer, seed: int = 0) -> Layer:
    """Non-trivial normalisation state (fresh BatchNorm is the identity in eval mode):
    random running statistics and affine parameters."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, (L.BatchNorm1d, L.BatchNorm2d)):
            C = m.num_features
            m.running_mean = (0.5 * rng.standard_normal(C)).astype(np.float32)
            m.running_var = rng.uniform(0.5, 2.0, C).astype(np.float32)
        for name, p in m.named_parameters():
            if name in ("gamma", "beta"):
                p.data = (p.data + 0.3 * rng.standard_normal(p.shape)).astype(np.float32)
    return model


def eval_logits(model: Layer, x: np.ndarray) -> np.ndarray:
    with model.mode(training=False):
        return mc.to_numpy(model.forward(x))


def round_trip(model: Layer, shape: tuple[int, ...], tmp_path: Path, opset: int = 17,
               batch: int = 3, seed: int = 0) -> tuple[Layer, Path]:
    """Export ``model``, check ONNX Runtime and ``from_onnx`` against minicnn; return the
    imported model and the file."""
    x = np.random.default_rng(100 + seed).standard_normal((batch, *shape)).astype(np.float32)
    expected = eval_logits(model, x)
    path = tmp_path / "model.onnx"
    to_onnx(model, path, shape, opset=opset)
    assert_close(run_ort(path, x), expected)
    imported = from_onnx(path)
    assert not imported.training
    assert_close(imported.forward(x), expected)
    return imported, path


def op_types(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


# -- the zoo --------------------------------------------------------------------------------

# Small versions of the zoo's models (a model registered later is built with its defaults).
ZOO_KWARGS = {
    "simple_cnn": dict(image_size=12, widths=(4, 8), hidden=16),
    "vgg": dict(widths=(4, 8, 8), hidden=16, batchnorm=True, dropout=0.5, image_size=16),
    "vgg16": dict(width=1 / 32, cifar=True, batchnorm=True, image_size=32),
    "lenet5": dict(),
    "resnet": dict(widths=(4, 8, 8), blocks=1),
    "densenet": dict(growth_rate=4, blocks=(2, 2, 2), image_size=16),
}
# The ladder's variants of vgg, and lenet5's modern form.
VARIANTS = [
    ("vgg", dict(widths=(4, 8), residual=True, batchnorm=True, hidden=None, global_pool=True,
                 image_size=12)),
    ("vgg", dict(widths=(4, 8), norm="instance", activation="silu", hidden=8, image_size=12)),
    ("vgg", dict(widths=(4, 8), activation="gelu", whiten=2, hidden=8, image_size=12)),
    ("vgg", dict(widths=(4, 8), depth=2, activation="leaky_relu", pool_first=True,
                 batchnorm=True, hidden=8, image_size=12)),
    ("vgg", dict(widths=(4,), activation="sigmoid", hidden=8, image_size=8)),
    ("lenet5", dict(in_channels=3, image_size=32, activation="relu", pool="max")),
]


def build(name: str, kwargs: dict, seed: int = 0) -> Layer:
    mc.init.set_seed(seed)
    model = models.build(name, kwargs)
    models.fit_whitening(model, np.random.default_rng(seed).standard_normal(
        (16, *model.input_shape)).astype(np.float32))  # vgg(whiten=2): its fixed filters
    return randomize(model, seed)


# Zoo models that to_onnx writes but from_onnx does not read back: none since Concat,
# SqueezeExcite, ConvTranspose2d and Upsample (issue 26's layers) go both ways. A model
# listed here gets the export-only check against ONNX Runtime instead of the round trip.
NOT_IMPORTED: set[str] = set()


@pytest.mark.parametrize("name", sorted(set(models.MODELS) - NOT_IMPORTED))
def test_every_zoo_model_round_trips_through_onnx_runtime(name, tmp_path):
    model = build(name, ZOO_KWARGS.get(name, {}))
    imported, _ = round_trip(model, model.input_shape, tmp_path)
    # the same architecture back: the same parameters, in the same order and shapes
    assert [p.shape for p in imported.parameters()] == [p.shape for p in model.parameters()]
    assert model.training  # export left the model's mode as it was


@pytest.mark.parametrize("up", ["transpose", "nearest", "bilinear"])
def test_unet_round_trips_with_each_upsampling(up, tmp_path):
    model = build("unet", dict(width=4, depth=2, up=up, image_size=16))
    imported, path = round_trip(model, model.input_shape, tmp_path, batch=2)
    assert ("ConvTranspose" if up == "transpose" else "Resize") in op_types(path)
    kinds = {type(m) for m in imported.modules()}
    assert (L.ConvTranspose2d if up == "transpose" else L.Upsample) in kinds
    assert L.Concat in kinds


@pytest.mark.parametrize("name, kwargs", VARIANTS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
@pytest.mark.parametrize("opset", [17, 20])
def test_zoo_variants_round_trip(name, kwargs, opset, tmp_path):
    model = build(name, kwargs)
    imported, path = round_trip(model, model.input_shape, tmp_path, opset=opset)
    kinds = [type(m) for m in imported.modules()]
    if kwargs.get("activation") == "gelu":
        assert ("Gelu" in op_types(path)) == (opset >= 20)
        assert L.GELU in kinds
    if kwargs.get("activation") == "silu":
        assert L.SiLU in kinds and "Sigmoid" in op_types(path)
    if kwargs.get("residual"):
        assert L.Residual in kinds


@pytest.mark.parametrize("dataset", sorted(PRESETS))
@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_the_presets_models_export(dataset, device, tmp_path):
    """What `minicnn train` trains by default (the main job's model.npz), at full size."""
    cfg = resolve(dataset, device, {}, smoke=False)
    model = build(cfg["model"], cfg["model_kwargs"])
    round_trip(model, DATASETS[dataset]["shape"], tmp_path, batch=2)


# -- every layer ----------------------------------------------------------------------------

def mixed_model() -> Layer:
    """Every exportable layer kind at least once, with the awkward settings: an even kernel
    with padding "same" (the extra row at the bottom), rectangular kernels and strides,
    padded average pooling (the zeros counted), padded max pooling, GroupNorm on images and
    on features, LayerNorm over (C, H, W) and over features, BatchNorm1d, SyncBatchNorm2d,
    the tanh GELU, Dropout and Identity."""
    mc.init.set_seed(3)
    return randomize(L.Sequential(
        L.Conv2d(3, 4, 2, padding="same"), L.GroupNorm(2, 4), L.GELU("tanh"),
        L.AvgPool2d(3, stride=2, padding=1), L.MaxPool2d((2, 3), stride=1, padding=1),
        L.SyncBatchNorm2d(4), L.LayerNorm((4, 3, 2)), L.LeakyReLU(0.2),
        L.Conv2d(4, 6, (3, 1), stride=(2, 1), padding=(1, 0), bias=False),
        L.InstanceNorm2d(6), L.Tanh(), L.Flatten(), L.BatchNorm1d(24), L.LayerNorm(24),
        L.GroupNorm(3, 24), L.SiLU(), L.Linear(24, 5), L.Dropout(0.3, seed=1), L.Identity()),
        seed=3)


@pytest.mark.parametrize("opset", [17, 18, 20])
def test_every_layer_kind_round_trips(opset, tmp_path):
    model = mixed_model()
    exported = {type(m) for m in model.modules()}
    assert exported >= {c for c in EXPORTERS if c is not L.PatchWhitening} - {
        L.ReLU, L.Sigmoid, L.BatchNorm2d, L.GlobalAvgPool2d,  # those: in the zoo tests
        L.ConvTranspose2d, L.Upsample, L.AdaptiveAvgPool2d, L.SqueezeExcite,  # and below
        L.LocalResponseNorm}  # tests/test_local_response_norm.py
    imported, path = round_trip(model, (3, 4, 4), tmp_path, opset=opset)
    assert [type(m).__name__ for m in imported.layers][:3] == ["Conv2d", "GroupNorm", "GELU"]
    assert imported.layers[0].padding == "same"
    assert imported.layers[2].approximate == "tanh"


def test_linear_on_more_than_two_axes_is_matmul_and_add(tmp_path):
    mc.init.set_seed(0)
    model = L.Sequential(L.Linear(6, 5), L.ReLU(), L.Linear(5, 2, bias=False))
    imported, path = round_trip(model, (4, 6), tmp_path)
    assert op_types(path) == ["MatMul", "Add", "Relu", "MatMul"]
    assert [p.shape for p in imported.parameters()] == [(6, 5), (5,), (5, 2)]


def test_the_batch_axis_is_dynamic(tmp_path):
    model = build("resnet", ZOO_KWARGS["resnet"])
    path = tmp_path / "resnet.onnx"
    to_onnx(model, path, (3, 32, 32))
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        assert_close(run_ort(path, x), eval_logits(model, x))


def test_export_names_parameters_as_the_state_dict_does(tmp_path):
    model = build("lenet5", {})
    path = tmp_path / "lenet.onnx"
    proto = to_onnx(model, path, (1, 28, 28), metadata={"mean": [0.5]}, doc_string="LeNet")
    names = {t.name for t in proto.graph.initializer}
    assert {name for name, _ in model.named_parameters()} <= names
    W = next(t for t in proto.graph.initializer if t.name == "layers.7.W")
    np.testing.assert_array_equal(numpy_helper.to_array(W), model.layers[7].W.data)
    loaded = onnx.load(str(path))
    assert {p.key: p.value for p in loaded.metadata_props} == {"mean": "[0.5]"}
    assert loaded.doc_string == "LeNet" and loaded.producer_name == "minicnn"
    assert not list(tmp_path.glob(".tmp-*"))  # written through atomic_write


def test_export_keeps_every_modules_mode(tmp_path):
    model = build("vgg", ZOO_KWARGS["vgg"])
    bn = next(m for m in model.modules() if isinstance(m, L.BatchNorm2d))
    bn.eval()  # a frozen BatchNorm stays in evaluation mode when the model trains
    to_onnx(model, tmp_path / "m.onnx", model.input_shape)
    assert model.training and not bn.training
    assert all(m.cache is None for m in model.modules())  # the walk's forwards left nothing


class Doubler(Layer):
    """A layer minicnn cannot export (no ONNX counterpart registered)."""

    def forward(self, x):
        return 2 * x

    def backward(self, dout):
        return 2 * dout


def test_a_layer_without_onnx_counterpart_is_one_error_naming_its_path(tmp_path):
    model = L.Sequential(L.Conv2d(1, 2, 3), L.Residual(L.Sequential(Doubler(), L.ReLU())),
                         Doubler())
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an earlier file")
    with pytest.raises(ValueError) as info:
        to_onnx(model, path, (1, 5, 5))
    message = str(info.value)
    assert "layers.1.body.layers.0 (Doubler), layers.2 (Doubler)" in message
    assert "no ONNX counterpart" in message and "\n" not in message
    assert path.read_bytes() == b"an earlier file"  # nothing written


@pytest.mark.parametrize("shape, opset, words", [
    ((1, 4, 4), 17, "layer 'layers.0' (Conv2d) refuses its input of shape (1, 4, 4)"),
    ((3, 2, 2), 17, "layer 'layers.2' (MaxPool2d) refuses"),
    ((3, 0, 4), 17, "input_shape must be the shape of one sample"),
    ("3,8,8", 17, "input_shape must be"),
    ((3, 8, 8), 16, "opset must be an integer from 17"),
])
def test_export_argument_errors(shape, opset, words, tmp_path):
    model = L.Sequential(L.Conv2d(3, 2, 3, padding=1), L.ReLU(), L.MaxPool2d(3))
    with pytest.raises(ValueError, match="to_onnx: ") as info:
        to_onnx(model, tmp_path / "m.onnx", shape, opset=opset)
    assert words in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


# -- random models (hypothesis) ----------------------------------------------------------------

@st.composite
def sequential_models(draw):
    """A random small Sequential of images -> features, and its input shape."""
    C, H, W = draw(st.integers(1, 3)), draw(st.integers(4, 8)), draw(st.integers(4, 8))
    shape = (C, H, W)
    layers: list[Layer] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "bn", "act", "pool", "gn", "in", "res"]))
        if kind == "conv":
            k = draw(st.integers(1, 3))
            stride = draw(st.integers(1, 2))
            padding = draw(st.sampled_from(["same", 0, 1] if stride == 1 else [0, 1]))
            c_out = draw(st.integers(1, 4))
            if min(H, W) + 2 * (padding if isinstance(padding, int) else 0) < k:
                continue
            layers.append(L.Conv2d(C, c_out, k, stride=stride, padding=padding,
                                   bias=draw(st.booleans())))
        elif kind == "bn":
            layers.append(L.BatchNorm2d(C))
        elif kind == "gn":
            G = draw(st.sampled_from([g for g in (1, 2, 3) if C % g == 0]))
            layers.append(L.GroupNorm(G, C))
        elif kind == "in" and H * W > 1:
            layers.append(L.InstanceNorm2d(C, affine=draw(st.booleans())))
        elif kind == "pool" and min(H, W) >= 2:
            Pool = draw(st.sampled_from([L.MaxPool2d, L.AvgPool2d]))
            layers.append(Pool(2, stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, 1))))
        elif kind == "res":
            layers.append(L.Residual(L.Sequential(L.Conv2d(C, C, 3, padding=1), L.ReLU()),
                                     draw(st.sampled_from([None, L.Conv2d(C, C, 1)]))))
        else:
            layers.append(draw(st.sampled_from([L.ReLU, L.LeakyReLU, L.Sigmoid, L.Tanh, L.SiLU,
                                                L.GELU]))())
        probe = L.Sequential(*layers).eval().forward(np.zeros((1, *shape), np.float32))
        C, H, W = probe.shape[1:]
    if draw(st.booleans()):
        layers.append(L.GlobalAvgPool2d())
        features = C
    else:
        layers.append(L.Flatten())
        features = C * H * W
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["bn1d", "ln", "act", "drop"]))
        layers.append({"bn1d": lambda: L.BatchNorm1d(features),
                       "ln": lambda: L.LayerNorm(features),
                       "act": lambda: L.GELU("tanh"),
                       "drop": lambda: L.Dropout(0.5)}[kind]())
    layers.append(L.Linear(features, draw(st.integers(1, 4))))
    return L.Sequential(*layers), shape


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_and_shape=sequential_models(), seed=st.integers(0, 2**16),
       opset=st.sampled_from([17, 20]))
def test_random_sequential_models_round_trip(tmp_path_factory, model_and_shape, seed, opset):
    model, shape = model_and_shape
    rng = np.random.default_rng(seed)
    for p in model.parameters():  # fresh weights from this example's seed
        p.data = (0.5 * rng.standard_normal(p.shape)).astype(np.float32)
    randomize(model, seed)
    imported, _ = round_trip(model, shape, tmp_path_factory.mktemp("h"), opset=opset, seed=seed)
    assert [p.shape for p in imported.parameters()] == [p.shape for p in model.parameters()]


# -- files in the shapes PyTorch's exporter writes ------------------------------------------------

class GraphMaker:
    """A small ``onnx.helper`` wrapper: nodes named as torch.onnx.export names them."""

    def __init__(self, seed: int = 0):
        self.nodes: list = []
        self.inits: list = []
        self.rng = np.random.default_rng(seed)
        self.count = 0

    def init(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, *shape: int, scale: float = 0.3) -> str:
        return self.init(name, (scale * self.rng.standard_normal(shape)).astype(np.float32))

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str:
        outs = [f"{name}_output_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    def conv(self, x: str, prefix: str, c_in: int, c_out: int, k: int, stride: int = 1,
             pad: int | None = None) -> str:
        """A Conv with BatchNorm folded into it: weight and bias initializers."""
        pad = k // 2 if pad is None else pad
        self.count += 1
        return self.node("Conv", [x, self.weight(f"onnx::Conv_{100 + self.count}", c_out, c_in,
                                                 k, k),
                                  self.weight(f"onnx::Conv_{200 + self.count}", c_out)],
                         f"{prefix}/Conv", dilations=[1, 1], group=1, kernel_shape=[k, k],
                         pads=[pad] * 4, strides=[stride, stride])

    def save(self, path: Path, x: str, y: str, shape: tuple, opset: int,
             batch: int | str = "batch_size", out_dim: int = 10) -> Path:
        self.nodes[-1].output[0] = "output"
        for n in self.nodes:  # the last node's output renamed: rename its readers too
            n.input[:] = ["output" if i == y else i for i in n.input]
        graph = helper.make_graph(
            self.nodes, "main_graph",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, *shape])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, out_dim])],
            initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="pytorch", producer_version="2.3.0",
                                  ir_version=8)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
        return path


def torch_resnet(path: Path) -> Path:
    """torchvision's resnet shape at toy size, as torch.onnx.export (opset 17,
    do_constant_folding=True) writes it: BatchNorm folded into each Conv, MaxPool 3x3/2 with
    padding 1, basic blocks with identity and 1x1/2 projection shortcuts, Add, Relu,
    GlobalAveragePool, Flatten, Gemm with transB=1."""
    g = GraphMaker(seed=1)
    x = g.node("Relu", [g.conv("input", "/conv1", 3, 8, 3)], "/relu/Relu")
    x = g.node("MaxPool", [x], "/maxpool/MaxPool", ceil_mode=0, dilations=[1, 1],
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    for layer, (c_in, c_out, stride) in enumerate([(8, 8, 1), (8, 16, 2)], start=1):
        p = f"/layer{layer}/layer{layer}.0"
        y = g.node("Relu", [g.conv(x, f"{p}/conv1", c_in, c_out, 3, stride)], f"{p}/relu/Relu")
        y = g.conv(y, f"{p}/conv2", c_out, c_out, 3)
        shortcut = x if stride == 1 else g.conv(x, f"{p}/downsample/downsample.0", c_in,
                                                c_out, 1, stride, pad=0)
        x = g.node("Relu", [g.node("Add", [y, shortcut], f"{p}/Add")], f"{p}/relu_1/Relu")
    x = g.node("GlobalAveragePool", [x], "/avgpool/GlobalAveragePool")
    x = g.node("Flatten", [x], "/Flatten", axis=1)
    y = g.node("Gemm", [x, g.weight("fc.weight", 10, 16), g.weight("fc.bias", 10)],
               "/fc/Gemm", alpha=1.0, beta=1.0, transB=1)
    return g.save(path, "input", y, (3, 16, 16), opset=17)


def torch_vgg(path: Path, opset: int = 13) -> Path:
    """A VGG-style net as torch.onnx.export writes one without constant folding of the
    BatchNorms: BatchNormalization nodes (momentum 0.9), SiLU as Sigmoid + Mul, GELU as
    Div, Erf, Add, Mul, Mul, GroupNorm as Reshape, InstanceNormalization, Shape + Reshape,
    Mul, Add, AveragePool, the flatten of ``x.view(x.size(0), -1)`` (Shape, Gather,
    Unsqueeze, Concat, Reshape), Gemm with transB=1 and a Dropout-free classifier."""
    g = GraphMaker(seed=2)
    x = g.conv("x", "/features/features.0", 3, 6, 3)
    x = g.node("BatchNormalization", [x, g.weight("bn.weight", 6), g.weight("bn.bias", 6),
                                      g.weight("bn.running_mean", 6),
                                      g.init("bn.running_var",
                                             g.rng.uniform(0.5, 2, 6).astype(np.float32))],
               "/features/features.1/BatchNormalization", epsilon=1e-5, momentum=0.9)
    s = g.node("Sigmoid", [x], "/features/features.2/Sigmoid")
    x = g.node("Mul", [x, s], "/features/features.2/Mul")
    x = g.node("MaxPool", [x], "/features/features.3/MaxPool", kernel_shape=[2, 2],
               strides=[2, 2], pads=[0, 0, 0, 0])
    x = g.conv(x, "/features/features.4", 6, 6, 3)
    # GroupNorm(3, 6)
    grouped = g.node("Reshape", [x, g.init("onnx::Reshape_50", np.array([0, 3, -1]))],
                     "/features/features.5/Reshape")
    normed = g.node("InstanceNormalization",
                    [grouped, g.init("onnx::IN_51", np.ones(3, np.float32)),
                     g.init("onnx::IN_52", np.zeros(3, np.float32))],
                    "/features/features.5/InstanceNormalization", epsilon=1e-5)
    shape = g.node("Shape", [x], "/features/features.5/Shape")
    back = g.node("Reshape", [normed, shape], "/features/features.5/Reshape_1")
    x = g.node("Mul", [back, g.weight("onnx::Mul_53", 6, 1, 1)], "/features/features.5/Mul")
    x = g.node("Add", [x, g.weight("onnx::Add_54", 6, 1, 1)], "/features/features.5/Add")
    # GELU, exact, as the exporter spells it before opset 20
    d = g.node("Div", [x, g.init("onnx::Div_55", np.array(1.4142135381698608, np.float32))],
               "/features/features.6/Div")
    e = g.node("Erf", [d], "/features/features.6/Erf")
    a = g.node("Add", [e, g.init("onnx::Add_56", np.array(1.0, np.float32))],
               "/features/features.6/Add")
    m = g.node("Mul", [x, a], "/features/features.6/Mul")
    x = g.node("Mul", [m, g.init("onnx::Mul_57", np.array(0.5, np.float32))],
               "/features/features.6/Mul_1")
    x = g.node("AveragePool", [x], "/features/features.7/AveragePool", kernel_shape=[2, 2],
               strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0, count_include_pad=1)
    # x.view(x.size(0), -1)
    shape = g.node("Shape", [x], "/Shape")
    n = g.node("Gather", [shape, g.init("onnx::Gather_60", np.array(0))], "/Gather", axis=0)
    n = g.node("Unsqueeze", [n, g.init("onnx::Unsqueeze_61", np.array([0]))], "/Unsqueeze")
    target = g.node("Concat", [n, g.init("onnx::Concat_62", np.array([-1]))], "/Concat",
                    axis=0)
    x = g.node("Reshape", [x, target], "/Reshape")
    x = g.node("Gemm", [x, g.weight("classifier.0.weight", 12, 6 * 3 * 3),
                        g.weight("classifier.0.bias", 12)], "/classifier/classifier.0/Gemm",
               alpha=1.0, beta=1.0, transB=1)
    x = g.node("Relu", [x], "/classifier/classifier.1/Relu")
    y = g.node("Gemm", [x, g.weight("classifier.3.weight", 10, 12),
                        g.weight("classifier.3.bias", 10)], "/classifier/classifier.3/Gemm",
               alpha=1.0, beta=1.0, transB=1)
    return g.save(path, "x", y, (3, 12, 12), opset=opset)


def torch_fixed_batch(path: Path) -> Path:
    """An older export (opset 11) with the batch fixed to 1: auto_pad SAME_UPPER, the mean
    over H, W as ReduceMean(keepdims=1), Reshape to [1, -1], MatMul + Add, LeakyRelu."""
    g = GraphMaker(seed=3)
    x = g.node("Conv", ["input", g.weight("conv.weight", 5, 2, 3, 3)], "Conv_0",
               kernel_shape=[3, 3], auto_pad="SAME_UPPER")
    x = g.node("LeakyRelu", [x], "LeakyRelu_1", alpha=0.1)
    x = g.node("ReduceMean", [x], "ReduceMean_2", axes=[2, 3], keepdims=1)
    x = g.node("Reshape", [x, g.init("shape", np.array([1, -1]))], "Reshape_3")
    x = g.node("MatMul", [x, g.weight("fc.weight_t", 5, 4)], "MatMul_4")
    y = g.node("Add", [x, g.weight("fc.bias", 4)], "Add_5")
    return g.save(path, "input", y, (2, 7, 6), opset=11, batch=1, out_dim=4)


@pytest.mark.parametrize("maker, batch", [(torch_resnet, 3), (torch_vgg, 3),
                                          (torch_fixed_batch, 1)])
def test_files_in_pytorchs_shapes_load_with_the_right_numbers(maker, batch, tmp_path):
    path = maker(tmp_path / "torch.onnx")
    model = from_onnx(path)
    shape = model.input_shape
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    assert_close(model.forward(x), run_ort(path, x))
    # and minicnn writes it back out as a file ONNX Runtime agrees with
    to_onnx(model, tmp_path / "again.onnx", shape)
    assert_close(run_ort(tmp_path / "again.onnx", x), run_ort(path, x))


def test_pytorch_resnet_becomes_residual_blocks_with_transposed_gemm(tmp_path):
    path = torch_resnet(tmp_path / "resnet.onnx")
    model = from_onnx(path)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Residual", "ReLU", "Residual", "ReLU",
                     "GlobalAvgPool2d", "Linear"]
    first, second = model.layers[3], model.layers[5]
    assert isinstance(first.shortcut, L.Identity)          # identity shortcut
    assert [type(m).__name__ for m in second.shortcut.layers] == ["Conv2d"]  # projection
    assert second.shortcut.layers[0].stride == (2, 2)
    fc = model.layers[-1]
    weight = next(numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
                  if t.name == "fc.weight")
    np.testing.assert_array_equal(mc.to_numpy(fc.W.data), weight.T)  # (out, in) -> (in, out)
    assert model.summary is not None and model.input_shape == (3, 16, 16)


def test_pytorch_vgg_patterns_become_minicnn_layers(tmp_path):
    model = from_onnx(torch_vgg(tmp_path / "vgg.onnx"))
    assert [type(m).__name__ for m in model.layers] == [
        "Conv2d", "BatchNorm2d", "SiLU", "MaxPool2d", "Conv2d", "GroupNorm", "GELU",
        "AvgPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    bn = model.layers[1]
    assert bn.momentum == pytest.approx(0.1)  # ONNX's 0.9 weighs the old value


def test_fine_tuning_an_imported_model_with_transfer(tmp_path):
    """The docs' recipe: import, put a new head on, freeze the rest, train the head."""
    model = from_onnx(torch_resnet(tmp_path / "resnet.onnx"))
    head = training.replace_head(model, 3)
    training.freeze(*model.layers[:-1])
    opt = mc.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    loss_fn = mc.losses.CrossEntropyLoss()
    frozen = mc.to_numpy(model.layers[0].W.data).copy()
    model.train()
    losses = []
    for _ in range(30):
        losses.append(float(loss_fn.forward(model.forward(x), y)))
        model.backward(loss_fn.backward())
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    assert head.W.shape == (16, 3)
    np.testing.assert_array_equal(mc.to_numpy(model.layers[0].W.data), frozen)


def test_import_changes_no_global_state(tmp_path):
    path = torch_resnet(tmp_path / "resnet.onnx")
    mc.init.set_seed(5)
    before = mc.init.get_rng().bit_generator.state
    from_onnx(path)
    with pytest.raises(OnnxError):
        from_onnx(tmp_path / "missing.onnx")
    assert mc.init.get_rng().bit_generator.state == before  # weights made as zeros, not drawn


# -- malformed and unsupported files: one OnnxError each ----------------------------------------

def tiny_graph(nodes, inits, opset=17, shape=(3, 6, 6), out_shape=("N", "K")):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def conv_graph(weight_shape=(4, 3, 3, 3), **attrs):
    W = numpy_helper.from_array(np.ones(weight_shape, np.float32), "conv.weight")
    return tiny_graph([helper.make_node("Conv", ["x", "conv.weight"], ["y"], name="conv",
                                        **attrs)], [W])


def save(tmp_path, model, name="bad.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def expect_error(path, *words):
    with pytest.raises(OnnxError) as info:
        from_onnx(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for w in words:
        assert w in message, message
    assert isinstance(info.value, ValueError) and info.value.path == str(path)
    return message


def test_truncated_file(tmp_path):
    good = torch_resnet(tmp_path / "good.onnx")
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 7, 40):
        bad = tmp_path / f"cut{cut}.onnx"
        bad.write_bytes(data[:cut])
        expect_error(bad, "not an ONNX model, or one cut short")


@pytest.mark.parametrize("content", [b"hello, I am not a model\n", b"\x00\x01\x02" * 50, b""])
def test_files_that_are_not_onnx(content, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    expect_error(path, "empty" if not content else "not an ONNX model")


def test_missing_file_and_folder(tmp_path):
    expect_error(tmp_path / "nope.onnx", "no such file")
    expect_error(tmp_path, "is a folder")


def test_unknown_and_unsupported_operators_listed_at_once(tmp_path):
    nodes = [helper.make_node("FooBar", ["x"], ["a"], name="foo"),
             helper.make_node("Softmax", ["a"], ["b"], name="softmax"),
             helper.make_node("Concat", ["b", "b"], ["c"], name="cat", axis=1),
             helper.make_node("Softmax", ["c"], ["y"], name="softmax2")]
    message = expect_error(save(tmp_path, tiny_graph(nodes, [])), "unsupported operators: ")
    assert "FooBar (node 'foo'; not an ONNX operator)" in message
    assert "Softmax (nodes 'softmax', 'softmax2')" in message
    assert "minicnn models end in logits" in message  # the hint for a final softmax
    # Concat is read in shape arithmetic and, on the data path, along the channels only
    nodes = [helper.make_node("Concat", ["x", "x"], ["y"], name="cat", axis=2)]
    expect_error(save(tmp_path, tiny_graph(nodes, [])), "node 'cat' (Concat): concatenates "
                 "along axis 2; minicnn's Concat joins branches along the channels (axis=1)")


@pytest.mark.parametrize("weight_shape, attrs, words", [
    ((4, 2, 3, 3), {}, "initializer 'conv.weight' (the weight) has shape (4, 2, 3, 3), "
                       "expected (C_out, 3, KH, KW) for an input of 3 channels"),
    ((4, 3, 3), {}, "has shape (4, 3, 3), expected (C_out, 3, KH, KW)"),
    ((4, 3, 3, 3), dict(kernel_shape=[5, 5]), "kernel_shape [5, 5] differs from its weight's"),
    ((4, 3, 3, 3), dict(pads=[0, 0, 1, 1]), "minicnn's Conv2d pads both sides equally"),
    ((4, 3, 3, 3), dict(dilations=[2, 2]), "minicnn has no dilated windows"),
    ((4, 1, 3, 3), dict(group=3), "group=3"),
])
def test_conv_weights_and_attributes_that_do_not_fit(weight_shape, attrs, words, tmp_path):
    message = expect_error(save(tmp_path, conv_graph(weight_shape, **attrs)), words)
    assert "node 'conv' (Conv)" in message


def test_gemm_weight_of_the_wrong_shape(tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc",
                              transB=1)]
    inits = [numpy_helper.from_array(np.ones((10, 100), np.float32), "fc.weight"),
             numpy_helper.from_array(np.ones(10, np.float32), "fc.bias")]
    expect_error(save(tmp_path, tiny_graph(nodes, inits)), "node 'fc' (Gemm)",
                 "initializer 'fc.weight' (the weight B) has shape (10, 100), expected "
                 "(out, 108) for an input of 108 features")
    inits[1] = numpy_helper.from_array(np.ones(7, np.float32), "fc.bias")
    inits[0] = numpy_helper.from_array(np.ones((10, 108), np.float32), "fc.weight")
    expect_error(save(tmp_path, tiny_graph(nodes, inits)), "(the bias C) has shape (7,)")


def test_batchnorm_statistics_of_the_wrong_length(tmp_path):
    inits = [numpy_helper.from_array(np.ones(n, np.float32), name)
             for name, n in (("s", 3), ("b", 3), ("m", 4), ("v", 3))]
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                              name="bn")]
    expect_error(save(tmp_path, tiny_graph(nodes, inits)),
                 "node 'bn' (BatchNormalization): initializer 'm' (the mean) has shape (4,), "
                 "expected (3,)")


def test_initializer_whose_data_does_not_fill_its_shape(tmp_path):
    model = conv_graph()
    tensor = model.graph.initializer[0]
    tensor.raw_data = tensor.raw_data[:-8]
    expect_error(save(tmp_path, model), "initializer 'conv.weight' is malformed")


def test_missing_initializer(tmp_path):
    model = conv_graph()
    del model.graph.initializer[:]
    expect_error(save(tmp_path, model), "node 'conv' (Conv) reads 'conv.weight'",
                 "a missing initializer?")


@pytest.mark.parametrize("build_nodes, words", [
    (lambda: [helper.make_node("Relu", ["x"], [o], name=f"r{o}") for o in "abc"] +
     [helper.make_node("Sum", ["a", "b", "c"], ["y"], name="sum")], "unsupported operator"),
    (lambda: [helper.make_node("Relu", ["x"], ["a"], name="r1"),
              helper.make_node("Tanh", ["x"], ["b"], name="t1"),
              helper.make_node("Relu", ["x"], ["c"], name="r2"),
              helper.make_node("Add", ["a", "b"], ["d"], name="add1"),
              helper.make_node("Add", ["d", "c"], ["y"], name="add2")],
     "the value 'x' feeds 3 nodes"),
    (lambda: [helper.make_node("Relu", ["x"], ["a"], name="r1"),
              helper.make_node("Relu", ["x"], ["b"], name="r2"),
              helper.make_node("Mul", ["a", "b"], ["y"], name="mul")],
     "do not join in an Add (they meet in node 'mul' (Mul))"),
    (lambda: [helper.make_node("Mul", ["x", "k"], ["y"], name="scale")],
     "the element-wise function of 'x' that node 'scale' (Mul) computes is none of "
     "minicnn's activations"),
    (lambda: [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                               ceil_mode=1, strides=[2, 2])],
     "ceil_mode=1 changes the output size"),
    (lambda: [helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[3, 3],
                               pads=[1, 1, 1, 1])],
     "count_include_pad=0 with padding"),
    (lambda: [helper.make_node("Relu", ["x"], ["a"], name="r1"),
              helper.make_node("Relu", ["a"], ["b"], name="r2"),
              helper.make_node("Concat", ["a", "b", "x"], ["y"], name="cat", axis=1)],
     "the branches from 'x' to node 'cat' (Concat) share node 'r1' (Relu)"),
    (lambda: [helper.make_node("Resize", ["x", "", "k4"], ["y"], name="up", mode="cubic")],
     "node 'up' (Resize): mode='cubic'"),
])
def test_graphs_that_are_not_chains_and_residual_blocks(build_nodes, words, tmp_path):
    inits = [numpy_helper.from_array(np.array(3.0, np.float32), "k"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "k4")]
    shape = (3, 5, 5)
    expect_error(save(tmp_path, tiny_graph(build_nodes(), inits, shape=shape)), words)


def test_old_opsets_and_several_inputs(tmp_path):
    model = conv_graph()
    model.opset_import[0].version = 9
    expect_error(save(tmp_path, model), "opset 9 is older than minicnn reads (opset 11")
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"], name="add")], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    expect_error(save(tmp_path, helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)),
        "the graph has 2 inputs and 1 outputs; minicnn models have one of each")


def test_symbolic_image_size_needs_input_shape(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="r"),
         helper.make_node("GlobalAveragePool", ["a"], ["b"], name="gap"),
         helper.make_node("Flatten", ["b"], ["y"], name="flat")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    path = save(tmp_path, helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    expect_error(path, "unknown dimensions (3, '?', '?')", "pass input_shape=(C, H, W)")
    model = from_onnx(path, input_shape=(3, 9, 7))
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 7)).astype(np.float32)
    assert_close(model.forward(x), run_ort(path, x))
    with pytest.raises(OnnxError, match=r"input_shape \(4, 9, 7\) does not fit"):
        from_onnx(path, input_shape=(4, 9, 7))


# -- the command: minicnn export -----------------------------------------------------------------

def test_minicnn_export_matches_minicnn_evaluate(mnist_smoke_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert cli.main(["export", str(mnist_smoke_checkpoint), str(out), "--backend", "numpy"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: vgg for inputs (N, 1, 28, 28) float32, opset 17" in printed
    # the model `minicnn evaluate` loads, on the test images it evaluates (train --smoke's)
    ckpt = training.load(mnist_smoke_checkpoint)
    x_test, y_test = data.synthetic(SMOKE_SIZES["test"], (1, 28, 28), seed=1)
    loader = data.DataLoader(x_test, y_test, 1000, shuffle=False,
                             normalize=(ckpt.meta["mean"], ckpt.meta["std"]))
    x, y = next(iter(loader))
    logits = run_ort(out, mc.to_numpy(x))
    assert_close(logits, eval_logits(ckpt.model, x))
    assert cli.main(["evaluate", str(mnist_smoke_checkpoint), "--smoke", "--backend", "numpy"]) == 0
    accuracy = float(capsys.readouterr().out.split("accuracy ")[1].split("%")[0])
    assert accuracy == pytest.approx(100 * float((logits.argmax(1) == mc.to_numpy(y)).mean()),
                                     abs=0.01)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["dataset"] == '"mnist"' and meta["mean"] == str(ckpt.meta["mean"])
    assert from_onnx(out).input_shape == (1, 28, 28)


def test_minicnn_export_with_input_shape_and_opset(mnist_smoke_checkpoint, tmp_path):
    out = tmp_path / "sub" / "model.onnx"  # the folder is created
    assert cli.main(["export", str(mnist_smoke_checkpoint), str(out), "--input-shape", "1,28,28",
                     "--opset", "20", "--backend", "numpy"]) == 0
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 20
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [
        1, 28, 28]


@pytest.mark.parametrize("args, words", [
    (["missing.npz", "m.onnx"], "argument checkpoint: no such file: 'missing.npz'"),
    (["garbage.npz", "m.onnx"], "argument checkpoint: garbage.npz: not a minicnn checkpoint"),
    (["CKPT", "m.onnx", "--input-shape", "3x32"],
     "argument --input-shape: expected C,H,W such as 3,32,32 (positive integers, without the "
     "batch axis), got '3x32'"),
    (["CKPT", "m.onnx", "--input-shape", "1,0,28"], "argument --input-shape: expected C,H,W"),
    (["CKPT", "m.onnx", "--input-shape", "a,b,c"], "argument --input-shape: expected C,H,W"),
    (["CKPT", "m.onnx", "--input-shape", "3,28,28"],
     "argument --input-shape: the model does not take inputs of shape (N, 3, 28, 28): layer "
     "'layers.0' (Conv2d) refuses"),
    (["CKPT", "m.onnx", "--input-shape", "1,2,2"], "refuses its input"),
    (["CKPT", "."], "argument OUT.onnx: '.' is a folder; expected a file name such as "
                    "model.onnx"),
    (["CKPT", "m.onnx", "--opset", "16"], "argument --opset: must be >= 17, got 16"),
    (["CKPT", "m.onnx", "--opset", "999"], "argument --opset: must be <= "),
    (["CKPT"], "the following arguments are required: OUT.onnx"),
])
def test_minicnn_export_errors_are_one_line_exit_2(args, words, mnist_smoke_checkpoint, tmp_path,
                                                   monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.npz").write_text("garbage\n")
    args = [str(mnist_smoke_checkpoint) if a == "CKPT" else a for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as info:
        cli.main(["export", *args, "--backend", "numpy"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minicnn export: error: "), err
    assert words in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written



# -- issue 26's layers: ConvTranspose2d, Upsample, AdaptiveAvgPool2d, Concat, SqueezeExcite ----

def new_layer(kind: str) -> tuple[Layer, tuple[int, ...]]:
    """One of the new layers alone, with its input shape (seeded weights)."""
    mc.init.set_seed(7)
    return {
        "convT": (L.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1), (4, 5, 4)),
        "convT-grouped": (L.ConvTranspose2d(4, 6, (2, 3), stride=(2, 1), groups=2,
                                            bias=False), (4, 3, 5)),
        "nearest": (L.Upsample(2), (3, 4, 5)),
        "nearest-2x3": (L.Upsample((2, 3)), (2, 3, 4)),
        "bilinear": (L.Upsample(2, mode="bilinear"), (3, 4, 5)),
        "bilinear-3x2": (L.Upsample((3, 2), mode="bilinear"), (2, 5, 3)),
        "adaptive-1": (L.AdaptiveAvgPool2d(1), (3, 5, 7)),
        "adaptive-2x3": (L.AdaptiveAvgPool2d((2, 3)), (3, 4, 6)),
        "concat": (L.Concat(L.Identity(), L.Sequential(L.Conv2d(3, 2, 3, padding=1),
                                                       L.ReLU())), (3, 5, 5)),
        "concat-3": (L.Concat(L.Conv2d(3, 2, 1), L.Sequential(L.Conv2d(3, 2, 1), L.Tanh(),
                                                              L.Conv2d(2, 4, 3, padding=1)),
                              L.MaxPool2d(3, stride=1, padding=1)), (3, 5, 5)),
        "squeeze-excite": (L.SqueezeExcite(8, reduction=4), (8, 3, 3)),
    }[kind]


NEW_LAYERS = ["convT", "convT-grouped", "nearest", "nearest-2x3", "bilinear", "bilinear-3x2",
              "adaptive-1", "adaptive-2x3", "concat", "concat-3", "squeeze-excite"]
# What each writes, alone.
NEW_OPS = {"convT": ["ConvTranspose"], "convT-grouped": ["ConvTranspose"],
           "nearest": ["Resize"], "nearest-2x3": ["Resize"], "bilinear": ["Resize"],
           "bilinear-3x2": ["Resize"], "adaptive-1": ["GlobalAveragePool"],
           "adaptive-2x3": ["AveragePool"], "concat": ["Conv", "Relu", "Concat"],
           "concat-3": ["Conv", "Conv", "Tanh", "Conv", "MaxPool", "Concat"],
           "squeeze-excite": ["GlobalAveragePool", "Flatten", "Gemm", "Relu", "Gemm",
                              "Sigmoid", "Unsqueeze", "Mul"]}


@pytest.mark.parametrize("kind", NEW_LAYERS)
def test_each_new_layer_alone_round_trips(kind, tmp_path):
    layer, shape = new_layer(kind)
    imported, path = round_trip(randomize(layer), shape, tmp_path)
    assert op_types(path) == NEW_OPS[kind]
    assert [p.shape for p in imported.parameters()] == [p.shape for p in layer.parameters()]
    back = imported.layers[0]
    if kind.startswith("convT"):
        assert (back.stride, back.padding, back.output_padding, back.groups) == (
            layer.stride, layer.padding, layer.output_padding, layer.groups)
    elif kind in ("nearest", "nearest-2x3", "bilinear", "bilinear-3x2"):
        assert (back.scale_factor, back.interpolation) == (layer.scale_factor, layer.interpolation)
    elif kind == "adaptive-1":
        assert type(back) is L.AdaptiveAvgPool2d and back.output_size == (1, 1)
    elif kind == "adaptive-2x3":  # the same windows: kernel = stride = (2, 2)
        assert type(back) is L.AvgPool2d and back.kernel_size == (2, 2)
    elif kind.startswith("concat"):
        assert type(back) is L.Concat and len(back.branches) == len(layer.branches)
        assert [type(b) for b in back.branches][:1] == (
            [L.Identity] if kind == "concat" else [L.Sequential])
    else:
        assert type(back) is L.SqueezeExcite and back.hidden == layer.hidden


@pytest.mark.parametrize("opset", [17, 20])
def test_new_layers_inside_a_sequential_round_trip(opset, tmp_path):
    """All five in one model, nested: a Concat inside a Concat's branch (U-Net's skips), an
    SE block inside a Residual's body (EfficientNet's), BatchNorm and GELU between them."""
    mc.init.set_seed(11)
    inner = L.Concat(L.Identity(), L.Sequential(
        L.MaxPool2d(2), L.Conv2d(6, 6, 3, padding=1), L.Upsample(2, mode="bilinear")))
    model = randomize(L.Sequential(
        L.Conv2d(3, 6, 3, padding=1), L.BatchNorm2d(6), L.GELU(),
        L.Concat(L.Identity(), L.Sequential(L.MaxPool2d(2), inner,
                                            L.ConvTranspose2d(12, 6, 2, stride=2))),
        L.Residual(L.Sequential(L.Conv2d(12, 12, 1), L.SiLU(), L.SqueezeExcite(12, 4))),
        L.Upsample(2), L.AdaptiveAvgPool2d((2, 2)), L.Flatten(), L.Linear(48, 5)), seed=11)
    imported, path = round_trip(model, (3, 8, 8), tmp_path, opset=opset)
    assert [type(m).__name__ for m in imported.layers] == [
        "Conv2d", "BatchNorm2d", "GELU", "Concat", "Residual", "Upsample", "AvgPool2d",
        "Flatten", "Linear"]
    assert [p.shape for p in imported.parameters()] == [p.shape for p in model.parameters()]
    kinds = {type(m) for m in imported.modules()}
    assert {L.ConvTranspose2d, L.SqueezeExcite, L.Concat, L.Upsample} <= kinds


def test_adaptive_pool_that_onnx_cannot_write_is_one_error(tmp_path):
    model = L.Sequential(L.Conv2d(3, 2, 1), L.AdaptiveAvgPool2d((2, 3)))
    with pytest.raises(ValueError) as info:
        to_onnx(model, tmp_path / "m.onnx", (3, 5, 7))
    assert "layer 'layers.1' (AdaptiveAvgPool2d) maps 5×7 to 2×3" in str(info.value)
    assert not (tmp_path / "m.onnx").exists()
    to_onnx(model, tmp_path / "m.onnx", (3, 4, 9))  # 2 and 3 divide 4 and 9: AveragePool
    assert op_types(tmp_path / "m.onnx") == ["Conv", "AveragePool"]


def test_pytorch_style_resize_and_conv_transpose(tmp_path):
    """What torch.onnx.export writes for nn.Upsample(scale_factor=2) (Resize with sizes from
    shape arithmetic: opset 11's roi and empty scales) and nn.ConvTranspose2d with
    output_shape."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "B"),
             numpy_helper.from_array(np.array([], np.float32), "roi"),
             numpy_helper.from_array(np.array([], np.float32), "empty"),
             numpy_helper.from_array(np.array([2, 2], np.int64), "two")]
    nodes = [helper.make_node("ConvTranspose", ["x", "W", "B"], ["a"], name="up1",
                              strides=[2, 2], pads=[1, 1, 1, 1], output_shape=[8, 10]),
             helper.make_node("Shape", ["a"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "zero", "two64"], ["nc"], name="slice"),
             helper.make_node("Shape", ["a"], ["s2"], name="shape2"),
             helper.make_node("Slice", ["s2", "two64", "four"], ["hw"], name="slice2"),
             helper.make_node("Mul", ["hw", "two"], ["hw2"], name="mul"),
             helper.make_node("Concat", ["nc", "hw2"], ["sizes"], name="sizes", axis=0),
             helper.make_node("Resize", ["a", "roi", "empty", "sizes"], ["y"], name="up2",
                              mode="linear", coordinate_transformation_mode="pytorch_half_pixel")]
    inits += [numpy_helper.from_array(np.array([v], np.int64), n)
              for n, v in (("zero", 0), ("two64", 2), ("four", 4))]
    path = save(tmp_path, tiny_graph(nodes, inits, opset=11, shape=(3, 4, 5),
                                     out_shape=("N", 2, 16, 20)), "torch.onnx")
    model = from_onnx(path)
    assert [type(m).__name__ for m in model.layers] == ["ConvTranspose2d", "Upsample"]
    assert model.layers[0].output_padding == (1, 1) and model.layers[1].interpolation == "bilinear"
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    assert_close(model.forward(x), run_ort(path, x))


# -- Upsample by any scale or to a size (PyTorch's rules; Resize with float32 scales) -------

@pytest.mark.parametrize("layer, shape", [
    (L.Upsample(1.5), (2, 5, 6)),
    (L.Upsample((2.6, 0.5), mode="bilinear"), (2, 7, 8)),
    (L.Upsample(size=(7, 9)), (2, 4, 5)),
    (L.Upsample(size=(11, 3), mode="bilinear"), (2, 4, 5)),
    (L.Upsample(2.5, recompute_scale_factor=True), (2, 3, 5)),
    # 17 rows × 1.2 = 20: float32(1.2) > 1.2, so ONNX's 18 / 1.2f lands below 15 where
    # PyTorch reads row 15; the export writes the float32 just below (one ulp).
    (L.Upsample((1.2, 2)), (1, 17, 3)),
    # 1.1 keeps 6 columns (PyTorch copies that axis): written as scale 1.
    (L.Upsample((2.5, 1.1)), (1, 3, 6)),
], ids=["nearest-1.5", "bilinear-2.6x0.5", "nearest-size", "bilinear-size", "recompute",
        "nearest-17x1.2", "nearest-kept-axis"])
def test_upsample_by_any_scale_or_size_round_trips(layer, shape, tmp_path):
    imported, path = round_trip(layer, shape, tmp_path)
    assert op_types(path) == ["Resize"]
    back = imported.layers[0]
    assert type(back) is L.Upsample and back.interpolation == layer.interpolation
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    assert imported.forward(x).shape == layer.forward(x).shape


def test_upsample_export_scale_is_checked_against_onnx_rule():
    """The written float32 scale reproduces PyTorch's pixels under ONNX's division."""
    from minicnn.functional.resample import nearest_matrix
    from minicnn.interop.export import onnx_resize_matrix, onnx_resize_size
    # 18 / float32(1.2) = 14.99999... -> row 14, PyTorch reads 15: float32(1.2) alone fails.
    scale = np.float32(1.2)
    assert onnx_resize_matrix(17, 20, scale, "nearest")[18].argmax() == 14
    assert nearest_matrix(np, 17, 20, np.float64, 1.2)[18].argmax() == 15
    below = np.nextafter(scale, np.float32(0))
    assert onnx_resize_size(17, below) == 20
    np.testing.assert_array_equal(onnx_resize_matrix(17, 20, below, "nearest"),
                                  nearest_matrix(np, 17, 20, np.float64, 1.2))


def test_upsample_that_onnx_cannot_write_is_one_error(tmp_path):
    """26 rows to 4: PyTorch reads row floor(2 · 6.5) = 13; ONNX reads floor(2 / s) for the
    float32 s, and s >= 4/26 (the output length) puts that below 13."""
    model = L.Sequential(L.Conv2d(3, 2, 1), L.Upsample(size=(4, 4)))
    with pytest.raises(ValueError) as info:
        to_onnx(model, tmp_path / "m.onnx", (3, 26, 8))
    message = str(info.value)
    assert "layer 'layers.1' (Upsample(size=4, mode='nearest')) takes 26 to 4 rows" in message
    assert "no float32 scale reads the same input rows" in message
    assert not (tmp_path / "m.onnx").exists()
    to_onnx(L.Sequential(L.Conv2d(3, 2, 1), L.Upsample(size=(4, 4), mode="bilinear")),
            tmp_path / "m.onnx", (3, 26, 8))   # bilinear: the weights agree to rounding


@pytest.mark.parametrize("mode, coords, sizes", [
    ("nearest", "asymmetric", [7, 9]), ("linear", "pytorch_half_pixel", [7, 3]),
    ("linear", "half_pixel", [5, 12])])
def test_resize_with_non_integer_sizes_imports(mode, coords, sizes, tmp_path):
    """A Resize to sizes that are no multiple of H, W (constant sizes, as written by
    torch.onnx.export for nn.Upsample(size=...) at a fixed batch): Upsample(size=...)."""
    inits = [numpy_helper.from_array(np.array([1, 3, *sizes], np.int64), "sizes")]
    attrs = dict(nearest_mode="floor") if mode == "nearest" else {}
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="up", mode=mode,
                              coordinate_transformation_mode=coords, **attrs)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, *sizes])],
        initializer=inits)
    path = save(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                            ir_version=8), "sizes.onnx")
    model = from_onnx(path)
    (layer,) = model.layers
    assert type(layer) is L.Upsample
    x = np.random.default_rng(2).standard_normal((1, 3, 4, 5)).astype(np.float32)
    assert_close(model.forward(x), run_ort(path, x))


def test_resize_at_an_exact_tie_imports_with_onnx_pixels(tmp_path):
    """26 rows to 4 with nearest: ONNX reads row floor(2 / (4/26)) = 12 (the float32
    division lands below 13), PyTorch's rule for size=4 reads 13. The importer picks the
    layer that reads ONNX's pixels: the file's float32 scale, whose float32 reciprocal
    (6.4999995) puts output 2 at 12.99999 under PyTorch's rule too."""
    inits = [numpy_helper.from_array(np.array([1, 3, 4, 8], np.int64), "sizes")]
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="up",
                              mode="nearest", coordinate_transformation_mode="asymmetric",
                              nearest_mode="floor")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 26, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 8])],
        initializer=inits)
    path = save(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                            ir_version=8), "tie.onnx")
    (layer,) = from_onnx(path).layers
    assert layer.size is None and layer.scale_factor[0] == float(np.float32(4) / np.float32(26))
    x = np.random.default_rng(3).standard_normal((1, 3, 26, 8)).astype(np.float32)
    assert_close(layer.forward(x), run_ort(path, x))
    assert not np.array_equal(L.Upsample(size=(4, 8)).forward(x), run_ort(path, x))


def test_resize_with_scales_that_round_differently_is_one_error(tmp_path):
    """5 · float32(1.8) is 8.99999976: 9 rows for ONNX Runtime (float32), 8 for ONNX's
    shape inference (float64). minicnn refuses the ambiguity."""
    inits = [numpy_helper.from_array(np.array([1, 1, 1.8, 2], np.float32), "scales")]
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up",
                              mode="nearest", coordinate_transformation_mode="asymmetric",
                              nearest_mode="floor")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
        initializer=inits)
    path = save(tmp_path, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                            ir_version=8), "round.onnx")
    expect_error(path, "the output size of 5×4 rounds differently")
