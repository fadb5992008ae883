"""Pictures of a training run: curves, confusion matrix, per-class accuracy, filters, feature
maps, and what a model looks at (saliency, Grad-CAM).

matplotlib is an optional extra (``pip install 'minicnn[plot]'``); it is imported only when a
picture is drawn (``pyplot()``), with the "Agg" backend when no display is available. Every
function draws into a new figure, saves it to ``path`` when given (``save_figure``: written
atomically, mode 0644 under the usual umask, like every file minicnn writes), and returns
the figure.

``confusion_matrix`` and ``per_class_accuracy`` are plain NumPy and need no matplotlib;
neither do ``saliency`` and ``grad_cam`` (from ``minicnn.explain``, docs/explain.md), which
return the maps as arrays for ``plot_explanations`` to draw.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._io import atomic_write
from .backend import get_xp, to_numpy
from .explain import grad_cam, saliency
from .layers import Conv2d

__all__ = ["plot_history", "confusion_matrix", "per_class_accuracy", "plot_confusion_matrix",
           "plot_per_class_accuracy", "plot_filters", "plot_feature_maps",
           "matplotlib_available", "pyplot", "save_figure", "saliency", "grad_cam",
           "plot_explanations"]


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401, PLC0415 (optional dependency)
    except ImportError:
        return False
    return True


# Backends that open windows: without a display on Linux they fail at the first figure.
_GUI_BACKENDS = ("tkagg", "tkcairo", "qtagg", "qtcairo", "qt5agg", "qt5cairo", "gtk3agg",
                 "gtk3cairo", "gtk4agg", "gtk4cairo", "wxagg", "wxcairo", "wx")


def pyplot() -> Any:
    """``matplotlib.pyplot``; a window backend is switched to "Agg" on a Linux machine with no
    display. Any other backend is left alone: Jupyter's inline backend keeps showing figures
    (matplotlib itself already picks Agg when it finds no display at start).

    Raises ImportError with the install command when matplotlib is missing.
    """
    try:
        import matplotlib  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise ImportError("minicnn.plot needs matplotlib: pip install 'minicnn[plot]' "
                          "(or pip install matplotlib)") from None
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless and matplotlib.get_backend().lower() in _GUI_BACKENDS:
        matplotlib.use("Agg")  # draw to files only
    import matplotlib.pyplot as plt  # noqa: PLC0415 (optional dependency)

    return plt


def save_figure(fig: Any, path: str | os.PathLike | None, dpi: int = 120) -> Any:
    """Tighten the layout of ``fig``, write it to ``path`` (when given) and return it.

    A figure made with its own layout engine (``layout="constrained"``) keeps it.

    The format comes from the file name's extension, as in ``fig.savefig(path)`` (none:
    matplotlib's default format, whose extension is appended). The file is written with
    ``minicnn._io.atomic_write``: whole or not at all, with the mode a new file gets.
    """
    if fig.get_layout_engine() is None:  # a figure made with layout="constrained" keeps it
        fig.tight_layout()
    if path is not None:
        path = os.fspath(path)
        fmt = os.path.splitext(path)[1][1:].lower()
        if not fmt:
            fmt = pyplot().rcParams["savefig.format"]
            path = f"{path.rstrip('.')}.{fmt}"
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    return fig


def _series(values: Sequence[Any]) -> np.ndarray:
    """A list with None entries (no validation that epoch) as floats with NaN gaps."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def plot_history(history: Any, path: str | os.PathLike | None = None,
                 title: str | None = None) -> Any:
    """Training vs validation loss (left) and accuracy (right), per epoch.

    ``history`` is a ``History``, its ``.history`` dict, or a ``history.json`` dict.
    """
    plt = pyplot()
    h = getattr(history, "history", None) or history.get("history", history)
    epochs = getattr(history, "epoch", None) or (history.get("epoch") if isinstance(
        history, dict) else None) or list(range(1, len(h["loss"]) + 1))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, _series(h[key]), "o-", label=f"train {label}", markersize=3)
        val = _series(h.get(f"val_{key}", []))
        if val.size and not np.all(np.isnan(val)):
            seen = ~np.isnan(val)  # fit(validation_freq=n): a line through the validated epochs
            ax.plot(np.asarray(epochs)[seen], val[seen], "s-", label=f"validation {label}",
                    markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    val_acc = _series(h.get("val_acc", []))
    if val_acc.size and not np.all(np.isnan(val_acc)):
        best = int(np.nanargmax(val_acc))
        ax_acc.set_title(f"best validation accuracy {val_acc[best]:.2%} (epoch {epochs[best]})")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int | None = None) -> np.ndarray:
    """C[i, j] = number of samples of true class i predicted as class j (int64, (K, K))."""
    y_true = to_numpy(y_true).astype(np.int64).ravel()
    y_pred = to_numpy(y_pred).astype(np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"confusion_matrix: y_true has {y_true.size} labels, y_pred "
                         f"{y_pred.size}")
    k = num_classes or int(max(y_true.max(initial=-1), y_pred.max(initial=-1)) + 1)
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix: C[i, i] / Σ_j C[i, j] (NaN if absent)."""
    totals = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(cm) / totals, np.nan)


def _class_names(k: int, names: Sequence[str] | None) -> list[str]:
    return list(names) if names is not None else [str(i) for i in range(k)]


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str] | None = None,
                          path: str | os.PathLike | None = None, normalize: bool = True) -> Any:
    """The confusion matrix as an image; rows are true classes, normalised to 1 by default."""
    plt = pyplot()
    k = cm.shape[0]
    names = _class_names(k, class_names)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    fig, ax = plt.subplots(figsize=(1 + 0.6 * k, 1 + 0.55 * k))
    im = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                text = f"{shown[i, j]:.2f}" if normalize else f"{int(shown[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > 0.5 * shown.max() else "black")
    ax.set_title(f"accuracy {np.trace(cm) / max(cm.sum(), 1):.2%}")
    return save_figure(fig, path)


def plot_per_class_accuracy(cm: np.ndarray, class_names: Sequence[str] | None = None,
                            path: str | os.PathLike | None = None) -> Any:
    """A bar per class: the fraction of its test images classified correctly."""
    plt = pyplot()
    acc = per_class_accuracy(cm)
    names = _class_names(len(acc), class_names)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(acc)), 3.5))
    ax.bar(range(len(acc)), acc, color="tab:blue")
    ax.axhline(np.trace(cm) / max(cm.sum(), 1), color="tab:red", ls="--", label="overall")
    ax.set_xticks(range(len(acc)), names, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend()
    return save_figure(fig, path)


def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _first_conv(model: Any) -> Any:
    for m in model.modules():
        if isinstance(m, Conv2d):
            return m
    raise ValueError("plot_filters: the model has no Conv2d layer")


def plot_filters(model_or_weights: Any, path: str | os.PathLike | None = None,
                 max_filters: int = 64) -> Any:
    """The first convolution's filters, one tile each (RGB when it has 3 input channels).

    Accepts a model (its first ``Conv2d``) or a weight array (C_out, C_in, KH, KW). Each
    filter is scaled to [0, 1] on its own, so the tiles show patterns, not magnitudes.
    """
    plt = pyplot()
    W = model_or_weights
    if not hasattr(W, "shape"):
        W = _first_conv(W).W.data
    W = to_numpy(W)[:max_filters].astype(np.float64)
    lo = W.min(axis=(1, 2, 3), keepdims=True)
    hi = W.max(axis=(1, 2, 3), keepdims=True)
    W = (W - lo) / np.maximum(hi - lo, 1e-12)
    rows, cols = _grid(len(W))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.8, rows * 0.8), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(W):
            tile = W[i].transpose(1, 2, 0) if W.shape[1] == 3 else W[i].mean(axis=0)
            ax.imshow(tile, cmap=None if W.shape[1] == 3 else "gray", interpolation="nearest")
    fig.suptitle(f"first-layer filters ({W.shape[1]}x{W.shape[2]}x{W.shape[3]})")
    return save_figure(fig, path)


def plot_feature_maps(model: Any, image: Any, layer_index: int = 0,
                      path: str | os.PathLike | None = None, max_maps: int = 32) -> Any:
    """The feature maps of one image after layer ``layer_index`` of a ``Sequential``.

    ``image`` has shape (C, H, W) (normalised like the training data). The model runs in eval
    mode; its modes are restored afterwards.
    """
    plt = pyplot()
    with model.mode(training=False):
        x = get_xp().asarray(np.asarray(to_numpy(image), dtype=np.float32)[None])
        for layer in list(model)[:layer_index + 1]:
            x = layer.forward(x)
    maps = to_numpy(x)[0]
    if maps.ndim != 3:
        raise ValueError(f"plot_feature_maps: layer {layer_index} outputs shape "
                         f"{tuple(maps.shape)} per image, not (C, H, W) feature maps")
    maps = maps[:max_maps]
    rows, cols = _grid(len(maps))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.2), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(maps):
            ax.imshow(maps[i], cmap="viridis")
    name = type(list(model)[layer_index]).__name__
    fig.suptitle(f"feature maps after layer {layer_index} ({name}), {maps.shape[1]}x"
                 f"{maps.shape[2]}")
    return save_figure(fig, path)


# -- what the model looks at (minicnn.explain) -------------------------------------------------

def _display_images(images: Any) -> np.ndarray:
    """Images (N, C, H, W) or (N, H, W) as floats in [0, 1] for ``imshow``: (N, H, W, 3) or
    (N, H, W). uint8 is divided by 255; floats (normalised inputs) are stretched to [0, 1]
    per image."""
    img = to_numpy(images)
    if img.ndim == 4:
        img = img.transpose(0, 2, 3, 1)                  # (N, H, W, C)
        img = img[..., 0] if img.shape[-1] == 1 else img
        img = img if img.ndim == 3 or img.shape[-1] == 3 else img.mean(axis=-1)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    img = img.astype(np.float64)
    axes = tuple(range(1, img.ndim))
    lo, hi = img.min(axis=axes, keepdims=True), img.max(axis=axes, keepdims=True)
    return (img - lo) / np.maximum(hi - lo, 1e-12)


def _label(names: Sequence[str] | None, k: int) -> str:
    return names[k] if names is not None and 0 <= k < len(names) else str(k)


def _per_image(values: Any, n: int, what: str) -> np.ndarray:
    values = to_numpy(values).astype(np.int64).ravel()
    if len(values) != n:
        raise ValueError(f"plot_explanations: {len(values)} {what} for {n} images")
    return values


def plot_explanations(images: Any, maps: Any, labels: Any = None,
                      path: str | os.PathLike | None = None, *, predictions: Any = None,
                      class_names: Sequence[str] | None = None,
                      overlay: Sequence[str] = ("Grad-CAM",), per_row: int | None = None,
                      title: str | None = None) -> Any:
    """A grid of images, each followed by its explanation maps (one panel per map).

    Parameters
    ----------
    images : array (N, C, H, W) or (N, H, W)
        What is shown: uint8 pictures, or the model's (normalised) inputs, which are
        stretched to [0, 1] per image. RGB when C is 3, gray otherwise.
    maps : dict name -> array (N, H, W), or one array
        The maps, drawn in order right of each image, e.g. ``{"saliency":
        plot.saliency(model, x, y), "Grad-CAM": plot.grad_cam(model, x, y)}`` (NumPy or
        CuPy). Maps named in ``overlay`` are drawn over the image (jet, half transparent,
        range [0, 1]: Grad-CAM's); the others alone, each scaled to its own maximum
        (``hot``; a signed map, e.g. gradient x input, in ``bwr`` around 0).
    labels, predictions : N ints, optional
        Written over each image (``true cat`` / ``pred dog``, red when they differ).
    class_names : sequence of str, optional
        Names for the labels (default: the numbers).
    per_row : int, optional
        Images per row (default: about the square root of N).
    title : str, optional
        The figure's title.
    """
    plt = pyplot()
    if not isinstance(maps, dict):
        maps = {"map": maps}
    shown = _display_images(images)
    n, hw = len(shown), shown.shape[1:3]
    if n == 0:
        raise ValueError("plot_explanations: no images")
    arrays = {}
    for name, m in maps.items():
        m = to_numpy(m).astype(np.float64)
        if m.shape != (n, *hw):
            raise ValueError(f"plot_explanations: map {name!r} has shape {m.shape}; expected "
                             f"({n}, {hw[0]}, {hw[1]}), one map per image of its size")
        arrays[name] = m
    labels, predictions = (None if v is None else _per_image(v, n, what)
                           for v, what in ((labels, "labels"), (predictions, "predictions")))
    per_row = max(1, min(n, per_row or math.ceil(math.sqrt(n))))
    panels = 1 + len(arrays)
    rows = math.ceil(n / per_row)
    fig, axes = plt.subplots(rows, per_row * panels, squeeze=False, layout="constrained",
                             figsize=(1.25 * per_row * panels, 1.45 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    gray = "gray" if shown.ndim == 3 else None
    for i in range(n):
        row, first = divmod(i, per_row)
        cell = axes[row, first * panels:(first + 1) * panels]
        cell[0].imshow(shown[i], cmap=gray, vmin=0, vmax=1)
        words = []
        if labels is not None:
            words.append(f"true {_label(class_names, int(labels[i]))}")
        if predictions is not None:
            words.append(f"pred {_label(class_names, int(predictions[i]))}")
        wrong = labels is not None and predictions is not None and labels[i] != predictions[i]
        cell[0].set_title("\n".join(words), fontsize=7, color="tab:red" if wrong else "black")
        for ax, (name, m) in zip(cell[1:], arrays.items(), strict=True):
            if name in overlay:
                ax.imshow(shown[i], cmap=gray, vmin=0, vmax=1)
                ax.imshow(m[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            elif m[i].min() < 0:
                bound = max(float(np.abs(m[i]).max()), 1e-12)
                ax.imshow(m[i], cmap="bwr", vmin=-bound, vmax=bound)
            else:
                ax.imshow(m[i], cmap="hot", vmin=0, vmax=max(float(m[i].max()), 1e-12))
            ax.set_title(name, fontsize=7)
    if title:  # wrapped to the figure's width (about 13 characters an inch at 9 points)
        width = fig.get_size_inches()[0]
        fig.suptitle(textwrap.fill(title, max(20, int(13 * width))), fontsize=9)
    return save_figure(fig, path)
