"""Seeing inside a trained model: saliency maps and Grad-CAM, from the hand-written backward.

Both maps answer "which pixels made the model say class c?" with one forward and one
backward pass of the model itself; no autograd, no second implementation. Page:
docs/explain.md. Tests: tests/test_explain.py.

The score. Both explain the class score S_c = z_c, the *logit* of class c (the input of the
softmax), as Simonyan et al. (2014) and Selvaraju et al. (2017) do. The probability p_c or
log p_c would mix in the other classes (d log p_c = dz_c - Σ_j p_j dz_j) and saturate when
the model is sure (p_c ≈ 1 makes dp_c ≈ 0). A batch is explained at once: the backward
starts from the one-hot upstream gradient

    dout[n, j] = 1 if j == target[n] else 0          (N, num_classes)

which is the gradient of S = Σ_n z[n, target[n]]. In eval mode no layer mixes the images of
a batch (BatchNorm uses its running statistics), so the slice n of each gradient is the
gradient of image n's own score.

Saliency (Simonyan, Vedaldi & Zisserman 2014). ``model.backward(dout)`` returns

    g = dS/dx                                        (N, C, H, W)

and the map is M[n, i, j] = max_c |g[n, c, i, j]| (``mode="grad"``): how much a small change
of that pixel moves the score. ``mode="grad_x_input"`` gives Σ_c g·x instead (signed: the
first-order share of each pixel in z_c(x) - z_c(0); x is the normalised input, so 0 is the
mean image).

Grad-CAM (Selvaraju et al. 2017). At a convolutional layer with output A (N, K, h, w) the same
backward passes through dS/dA on its way down. Each channel k gets the weight

    α[n, k] = 1/(h·w) Σ_ij dS/dA[n, k, i, j]         (the spatial mean)

and the map is cam = ReLU(Σ_k α[n, k] A[n, k]) (N, h, w): the channels that raise the score,
where they fire. It is upsampled onto the image's (H, W) bilinearly (``upsample_bilinear``,
PyTorch's align_corners=False) and divided by its maximum per image, so it lies in [0, 1]
(an image with no positive evidence at that layer gets a map of zeros). Its resolution is
the layer's: an 8x8 map upsampled to 32x32 is smooth, not sharp.

How A and dS/dA are caught: the layer's ``forward`` and ``backward`` are wrapped for the one
pass (``_Tap``: instance attributes that shadow the class's methods, removed afterwards), so
any layer of any container (nested Sequentials, Residual blocks) can be explained; the model
is not taken apart.

Nothing is disturbed (``explaining``): the model runs in eval mode, layers whose dL/dx is
switched off (``fit`` does that to the first layer) compute it for the pass, and afterwards
every module's mode, ``input_grad`` flag and cache and every parameter's ``.grad`` are what
they were. Arrays stay on the input's device (NumPy or CuPy); the maps have x's dtype.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import get_array_module, to_numpy
from .layers import AvgPool2d, Conv2d, Dropout, Identity, Layer, MaxPool2d, Residual

__all__ = ["saliency", "grad_cam", "explain", "input_gradient", "Explanation",
           "LayerChoiceError", "resolve_layer", "conv_layers", "upsample_bilinear",
           "explaining", "SALIENCY_MODES"]

SALIENCY_MODES = ("grad", "grad_x_input")


class LayerChoiceError(ValueError):
    """The layer asked for Grad-CAM cannot be used: not in the model, or its output is not
    (N, K, h, w) feature maps. The message lists the layers that can."""


# -- the one pass ----------------------------------------------------------------------------

@contextlib.contextmanager
def explaining(model: Layer, input_grad: bool = True) -> Iterator[Layer]:
    """``with explaining(model):`` — eval mode, dL/dx on everywhere; all restored afterwards.

    Inside the block every module is in eval mode and (with ``input_grad``) every layer whose
    ``input_grad`` is False (``fit`` switches it off at the first layer) computes dL/dx
    again; Grad-CAM alone does not need dL/dx and passes ``input_grad=False``. On leaving,
    each module gets back its own mode, ``input_grad`` flag and ``cache``, and each
    ``Parameter`` its ``.grad`` (a backward pass overwrites them): explaining a model in the
    middle of training changes nothing the next training step reads.
    """
    grads = [(p, p.grad) for p in model.parameters()]
    caches = [(m, m.__dict__.get("cache")) for m in model.modules()]
    switched = [m for m in model.modules()
                if input_grad and getattr(m, "input_grad", True) is False]
    with model.mode(training=False):
        for m in switched:
            m.input_grad = True
        try:
            yield model
        finally:
            for m in switched:
                m.input_grad = False
            for p, g in grads:
                p.grad = g
            for m, cache in caches:
                m.cache = cache


# Pooling resamples the maps of the layer before it, Dropout and Identity pass them on (in
# eval mode): never the default Grad-CAM layer.
_PASS_ON = (MaxPool2d, AvgPool2d, Dropout, Identity)


class _Tap:
    """Catches one layer's output A and the gradient dS/dA its backward receives.

    The layer's ``forward`` and ``backward`` are replaced by wrappers stored as instance
    attributes (they shadow the class's methods; containers call ``layer.forward(x)``, so
    they reach the wrappers); ``remove()`` deletes them again. ``step`` is the position of
    the layer's forward in the pass (execution order); the gradient is kept only when
    ``keep_grad`` is set, so that tapping many layers to choose one costs no memory.
    """

    def __init__(self, name: str, layer: Layer, clock: Iterator[int]):
        self.name, self.layer = name, layer
        self.A: Any = None
        self.dA: Any = None
        self.step = -1
        self.keep_grad = False
        self._before = {k: layer.__dict__[k] for k in ("forward", "backward")
                        if k in layer.__dict__}
        forward, backward = layer.forward, layer.backward

        def tapped_forward(x: Any) -> Any:
            self.A = forward(x)
            self.step = next(clock)
            return self.A

        def tapped_backward(dout: Any) -> Any:
            if self.keep_grad:
                self.dA = dout
            return backward(dout)

        layer.forward, layer.backward = tapped_forward, tapped_backward

    def remove(self) -> None:
        for key in ("forward", "backward"):
            self.layer.__dict__.pop(key, None)
        self.layer.__dict__.update(self._before)


def _targets(target: Any, logits: Any) -> Any:
    """The class of each image as an int64 array (N,) on the logits' device.

    None: the predicted class (argmax of the logits); an int: that class for every image;
    a sequence or array of N ints: one class per image.
    """
    xp = get_array_module(logits)
    n, k = logits.shape
    if target is None:
        return logits.argmax(axis=1)
    t = to_numpy(target)  # N small integers: checked on the host
    if t.dtype.kind not in "iu":
        raise TypeError(f"explain: target must be class indices (integers), got dtype "
                        f"{t.dtype}")
    if t.ndim == 0:
        t = np.full(n, int(t))
    if t.shape != (n,):
        raise ValueError(f"explain: target has shape {t.shape}; expected one class per image, "
                         f"({n},), or a single int")
    bad = t[(t < 0) | (t >= k)]
    if bad.size:
        raise ValueError(f"explain: target holds class {int(bad[0])}, but the model has {k} "
                         f"classes (0..{k - 1})")
    return xp.asarray(t.astype(np.int64))


def _score_backward(model: Layer, x: Any, target: Any, taps: list[_Tap],
                    choose: Any = None) -> tuple[Any, Any, Any]:
    """One forward, the one-hot dout of the class scores, one backward: (logits, target, dx).

    ``choose(taps)`` runs between the two passes (the outputs are known, the gradients not
    yet) and sets ``keep_grad`` on the tap(s) whose dS/dA is wanted.
    """
    logits = model.forward(x)
    if logits.ndim != 2:
        raise ValueError(f"explain: the model's output has shape {tuple(logits.shape)}; "
                         f"expected class scores (N, num_classes)")
    t = _targets(target, logits)
    if choose is not None:
        choose(taps)
    xp = get_array_module(logits)
    dout = xp.zeros_like(logits)
    dout[xp.arange(len(t)), t] = 1           # dS/dz for S = Σ_n z[n, t_n]
    dx = model.backward(dout)
    return logits, t, dx


def _batch(x: Any, name: str) -> tuple[Any, bool]:
    """x as a float batch (N, C, H, W); True when a single image (C, H, W) was given."""
    if not hasattr(x, "ndim") or getattr(x, "dtype", np.dtype("O")).kind != "f":
        raise TypeError(f"{name}: expected a floating-point image array (N, C, H, W) or "
                        f"(C, H, W), normalised as in training; got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim == 3:
        return x[None], True
    if x.ndim != 4:
        raise ValueError(f"{name}: expected images of shape (N, C, H, W) or (C, H, W), got "
                         f"shape {tuple(x.shape)}")
    return x, False


# -- saliency --------------------------------------------------------------------------------

def input_gradient(model: Layer, x: Any, target: Any = None) -> Any:
    """dS/dx: the gradient of each image's class score with respect to its pixels.

    Parameters
    ----------
    model : Layer
        A classifier: x (N, C, H, W) -> logits (N, num_classes).
    x : array (N, C, H, W) or (C, H, W)
        Images as the model takes them (normalised as in training), on the model's device.
    target : None, int or N ints
        The class to explain per image; None: the predicted class.

    Returns
    -------
    g : array, the shape of x
        g[n] = dz[n, target[n]] / dx[n], from one ``model.backward``.
    """
    xb, single = _batch(x, "input_gradient")
    with explaining(model):
        _, _, dx = _score_backward(model, xb, target, [])
    return dx[0] if single else dx


def _saliency_map(dx: Any, x: Any, mode: str) -> Any:
    if mode == "grad":
        return abs(dx).max(axis=1)                 # max_c |dS/dx_c|
    return (dx * x).sum(axis=1)                     # Σ_c x_c · dS/dx_c


def _check_mode(mode: str) -> None:
    if mode not in SALIENCY_MODES:
        raise ValueError(f"saliency: mode must be one of {', '.join(SALIENCY_MODES)}, got "
                         f"{mode!r}")


def saliency(model: Layer, x: Any, target: Any = None, mode: str = "grad") -> Any:
    """The saliency map of each image for its target class (Simonyan et al. 2014).

    Parameters
    ----------
    model, x, target
        As in ``input_gradient``.
    mode : "grad" or "grad_x_input"
        ``"grad"``: M = max_c |dS/dx_c|, how sensitive the score is to each pixel (>= 0).
        ``"grad_x_input"``: M = Σ_c x_c · dS/dx_c, signed (positive: the pixel's value
        raises the score relative to the mean image, x = 0).

    Returns
    -------
    M : array (N, H, W), or (H, W) for a single image; x's dtype and device. Not normalised:
        it has the score's units per unit of x.
    """
    _check_mode(mode)
    xb, single = _batch(x, "saliency")
    with explaining(model):
        _, _, dx = _score_backward(model, xb, target, [])
    m = _saliency_map(dx, xb, mode)
    return m[0] if single else m


# -- Grad-CAM --------------------------------------------------------------------------------

def conv_layers(model: Layer) -> list[tuple[str, Layer]]:
    """``(dotted name, layer)`` of the model's ``Conv2d`` layers on the main path (not inside
    a ``Residual``'s shortcut), in ``named_modules`` order: the layers an error suggests."""
    shortcut = {id(m) for r in model.modules() if isinstance(r, Residual)
                for m in r.shortcut.modules()}
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, Conv2d) and id(m) not in shortcut]


def _layer_names(model: Layer) -> str:
    convs = [name for name, _ in conv_layers(model)]
    shown = ", ".join(convs[-8:]) if convs else "none"
    more = f" (last 8 of {len(convs)})" if len(convs) > 8 else ""
    return (f"the convolutions are {shown}{more}; any module of model.named_modules() whose "
            f"output is (N, K, h, w) works")


def resolve_layer(model: Layer, layer: Any) -> tuple[str, Layer]:
    """``(dotted name, module)`` for ``layer``: a module of ``model`` or its dotted name.

    Raises ``LayerChoiceError`` (a ValueError) for a name the model does not have or a module
    that is not part of it, listing the convolutions; TypeError for anything else.
    """
    named = model.named_modules()
    if isinstance(layer, str):
        for name, m in named:
            if name == layer and name:
                return name, m
        raise LayerChoiceError(f"grad_cam: the model has no layer named {layer!r}; "
                               f"{_layer_names(model)}")
    if isinstance(layer, Layer):
        for name, m in named:
            if m is layer:
                if not name:
                    raise LayerChoiceError(f"grad_cam: layer is the model itself; name one "
                                           f"of its layers: {_layer_names(model)}")
                return name, m
        raise LayerChoiceError(f"grad_cam: {type(layer).__name__} is not a layer of this "
                               f"model; {_layer_names(model)}")
    raise TypeError(f"grad_cam: layer must be a Layer of the model or its dotted name (str), "
                    f"got {type(layer).__name__}")


def _default_candidates(model: Layer) -> list[tuple[str, Layer]]:
    """Where the default Grad-CAM layer is looked for: every module of the main path (not the
    model itself, not inside a ``Residual``'s shortcut, not pooling, Dropout or Identity)."""
    shortcut = {id(m) for r in model.modules() if isinstance(r, Residual)
                for m in r.shortcut.modules()}
    return [(name, m) for name, m in model.named_modules()
            if name and id(m) not in shortcut and not isinstance(m, _PASS_ON)]


def _pick_default(taps: list[_Tap]) -> None:
    """The last main-path module to run whose output is still spatial (h·w > 1), pooling
    aside: the rectified feature maps of the last convolution block, as in the paper (the
    ReLU after the last Conv2d; in a ResNet, the last Residual block's output)."""
    spatial = [t for t in taps if t.A is not None and t.A.ndim == 4
               and t.A.shape[2] * t.A.shape[3] > 1]
    if not spatial:
        raise LayerChoiceError("grad_cam: no layer of the model has a spatial output (h·w > 1) "
                               "for this input; pass layer= a module whose output is "
                               "(N, K, h, w)")
    max(spatial, key=lambda t: t.step).keep_grad = True


def _pick_given(taps: list[_Tap]) -> None:
    tap = taps[0]
    if tap.A is None:
        raise LayerChoiceError(f"grad_cam: layer {tap.name!r} did not run in the forward pass")
    if tap.A.ndim != 4:
        raise LayerChoiceError(f"grad_cam: layer {tap.name!r} ({type(tap.layer).__name__}) "
                               f"outputs shape {tuple(tap.A.shape)}, not feature maps "
                               f"(N, K, h, w); choose a layer before Flatten / global "
                               f"pooling")
    tap.keep_grad = True


def _cam(A: Any, dA: Any) -> Any:
    """ReLU(Σ_k α_k A_k) with α_k the spatial mean of dS/dA_k: (N, K, h, w) -> (N, h, w)."""
    xp = get_array_module(A)
    alpha = dA.mean(axis=(2, 3))                          # (N, K)
    return xp.maximum((alpha[:, :, None, None] * A).sum(axis=1), 0)


def _normalize_peak(cam: Any) -> Any:
    """Divide each map by its maximum (maps that are all 0 stay 0): values in [0, 1]."""
    xp = get_array_module(cam)
    peak = cam.max(axis=(1, 2), keepdims=True)
    return cam / xp.where(peak > 0, peak, 1)


def _grad_cam_pass(model: Layer, xb: Any, target: Any, layer: Any
                   ) -> tuple[Any, Any, Any, Any, str]:
    """(logits, target, dx, raw cam (N, h, w), layer name) from one forward and backward."""
    clock = itertools.count()
    if layer is None:
        if not conv_layers(model):
            raise LayerChoiceError("grad_cam: the model has no Conv2d layer; pass layer= a "
                                   "module whose output is (N, K, h, w)")
        taps = [_Tap(name, m, clock) for name, m in _default_candidates(model)]
        choose = _pick_default
    else:
        taps = [_Tap(*resolve_layer(model, layer), clock)]
        choose = _pick_given
    try:
        logits, t, dx = _score_backward(model, xb, target, taps, choose)
    finally:
        for tap in reversed(taps):
            tap.remove()
    (tap,) = [tap for tap in taps if tap.keep_grad]
    if tap.dA is None:
        raise LayerChoiceError(f"grad_cam: no gradient reached layer {tap.name!r} in the "
                               f"backward pass")
    return logits, t, dx, _cam(tap.A, tap.dA), tap.name


def grad_cam(model: Layer, x: Any, target: Any = None, layer: Any = None, *,
             upsample: bool = True, normalize: bool = True) -> Any:
    """The Grad-CAM map of each image for its target class (Selvaraju et al. 2017).

    Parameters
    ----------
    model, x, target
        As in ``input_gradient``.
    layer : Layer, str or None
        The layer whose output A (N, K, h, w) is weighed: a module of the model or its dotted
        name from ``model.named_modules()`` (``"layers.4"``). None: the last ``Conv2d`` that
        runs, not counting residual shortcuts, whose output is still spatial (h·w > 1). For a
        ResNet the block's output (the ReLU after a ``Residual``) is a common choice too.
    upsample : bool
        Resize the map onto x's (H, W) (bilinear, align_corners=False); else keep (h, w).
    normalize : bool
        Divide each map by its maximum, so it lies in [0, 1].

    Returns
    -------
    cam : array (N, H, W) (or (N, h, w)); (H, W) for a single image; x's dtype and device.
        cam = ReLU(Σ_k α_k A_k), α_k = mean_ij dS/dA_k[i, j].
    """
    return explain(model, x, target, layer, saliency_mode=None, upsample=upsample,
                   normalize=normalize).grad_cam


# -- both at once ----------------------------------------------------------------------------

@dataclass
class Explanation:
    """What ``explain`` computed for a batch (arrays on x's device).

    logits : (N, num_classes); target : (N,) the classes explained; saliency, grad_cam :
    (N, H, W) or None when not asked for; layer : the Grad-CAM layer's dotted name.
    """

    logits: Any
    target: Any
    saliency: Any = None
    grad_cam: Any = None
    layer: str | None = None


def explain(model: Layer, x: Any, target: Any = None, layer: Any = None, *,
            saliency_mode: str | None = "grad", grad_cam: bool = True,
            upsample: bool = True, normalize: bool = True) -> Explanation:
    """Saliency and Grad-CAM of a batch from a single forward and backward pass.

    The same backward that returns dS/dx passes through dS/dA at the Grad-CAM layer, so both
    maps cost one pass. ``saliency_mode=None`` skips the saliency map, ``grad_cam=False``
    Grad-CAM; the other arguments are those of ``saliency`` and ``grad_cam``. A single image
    (C, H, W) gives maps (H, W).
    """
    if saliency_mode is not None:
        _check_mode(saliency_mode)
    xb, single = _batch(x, "explain")
    with explaining(model, input_grad=saliency_mode is not None):
        if grad_cam:
            logits, t, dx, cam, name = _grad_cam_pass(model, xb, target, layer)
        else:
            (logits, t, dx), cam, name = _score_backward(model, xb, target, []), None, None
    sal = None if saliency_mode is None else _saliency_map(dx, xb, saliency_mode)
    if cam is not None:
        if upsample:
            cam = upsample_bilinear(cam, xb.shape[2:])
        if normalize:
            cam = _normalize_peak(cam)
        cam = cam.astype(xb.dtype, copy=False)
    if single:
        logits, t = logits[0], t[0]
        sal = None if sal is None else sal[0]
        cam = None if cam is None else cam[0]
    return Explanation(logits, t, sal, cam, name)


# -- bilinear upsampling ---------------------------------------------------------------------

def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """R (n_out, n_in) with out = R @ in: linear interpolation, align_corners=False.

    Output sample i sits at source coordinate s_i = (i + 0.5)·n_in/n_out - 0.5, clamped to
    [0, n_in - 1]; it takes (1 - λ) of source floor(s_i) and λ = s_i - floor(s_i) of the next.
    """
    s = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    s = np.clip(s, 0.0, n_in - 1)
    lo = np.floor(s).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    lam = s - lo
    R = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(R, (rows, lo), 1.0 - lam)
    np.add.at(R, (rows, hi), lam)
    return R


def upsample_bilinear(maps: Any, size: tuple[int, int]) -> Any:
    """Resize maps (N, h, w) to (N, H, W) bilinearly, as PyTorch's
    ``F.interpolate(..., mode="bilinear", align_corners=False)``.

    Bilinear interpolation is linear in each axis: out = R_h · map · R_wᵀ with the
    interpolation matrices R_h (H, h) and R_w (W, w) of ``_interpolation_matrix``. They are
    built on the host (H·h + W·w numbers) and sent to the maps' device once.
    """
    xp = get_array_module(maps)
    H, W = (int(s) for s in size)
    h, w = maps.shape[-2:]
    R_h = xp.asarray(_interpolation_matrix(h, H), dtype=maps.dtype)
    R_w = xp.asarray(_interpolation_matrix(w, W), dtype=maps.dtype)
    return R_h @ maps @ R_w.T
