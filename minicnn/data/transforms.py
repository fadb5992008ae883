"""Data augmentation on whole batches, as array operations on NumPy or CuPy.

Every transform is called as ``t(x, rng)``: ``x`` a float batch (N, C, H, W) of the current
backend, ``rng`` a ``numpy.random.Generator``. It returns a new batch (the input is never
modified) of the same dtype and module.

How they stay fast: the *random parameters* (one crop offset, flip coin, box ... per sample,
N numbers) are drawn on the CPU from ``rng``, which makes them reproducible on both backends;
the *pixel work* is one vectorised operation over the whole batch (a gather from a strided
window view, a masked copy, a broadcast multiply), never a Python loop over images or pixels. Only
``GaussianNoise`` draws per-pixel randoms, on the batch's own device.

On the GPU a transform never waits for the device: only the N random parameters travel to it
(a few hundred bytes per batch), every index array and mask is built there from them, and
nothing is read back (no boolean-mask indexing, whose result size the host must learn).

The transforms expect images scaled to [0, 1] (what ``DataLoader`` gives them before its
optional normalisation): ``ColorJitter`` clips to [0, 1], ``GaussianNoise`` and the zero fill
of ``RandomCrop``/``Cutout`` are in those units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backend import get_array_module

__all__ = [
    "Transform",
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "RandomResizedCrop",
    "GaussianNoise",
    "Cutout",
    "ColorJitter",
]


def _check_batch(name: str, x: Any) -> Any:
    """Raise unless ``x`` is a float (N, C, H, W) array; return its array module."""
    if not hasattr(x, "dtype") or not hasattr(x, "ndim"):
        raise TypeError(f"{name}: expected an array batch (N, C, H, W), got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point batch, got dtype {x.dtype}; scale "
                        f"uint8 images first (minicnn.data.to_unit_range)")
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a batch of shape (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    return get_array_module(x)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    h, w = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if h < 1 or w < 1:
        raise ValueError(f"{name}: size must be positive, got {value!r}")
    return int(h), int(w)


def _coin(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    return rng.random(n) < p


class Transform:
    """Base class: ``__call__(x, rng)`` returns the transformed batch."""

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms one after the other, sharing the generator: ``t_k(...t_1(x))``."""

    def __init__(self, transforms: Sequence[Any]):
        self.transforms = list(transforms)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        rng = np.random.default_rng() if rng is None else rng
        for t in self.transforms:
            x = t(x, rng)
        return x


class RandomCrop(Transform):
    """Pad by ``padding`` on each side, then cut a random ``size`` window per sample.

    ``padding_mode`` (PyTorch's names): ``"constant"`` (the default) fills the border with
    zeros; ``"reflect"`` mirrors the image about its edge row/column without repeating it
    (NumPy's and PyTorch's "reflect": a row 1 2 3 padded by 2 is 3 2 1 2 3 2 1), so
    ``RandomCrop(32, padding=2, padding_mode="reflect")`` on 32 x 32 images is airbench's
    "translate by up to 2 pixels with reflect padding". Reflect needs padding < H and < W.
    The reflected batch is built on the device by one gather with index arrays made there
    (i -> (H-1) - |(H-1) - |i||), so nothing extra crosses to the device.

    On the GPU a batch costs three launches (the reflect gather, its contiguous copy, the
    window gather) and one host->device copy of 8·N bytes, the offsets as one (2, N) int32
    array: the index arrays that depend only on the shapes (the reflect map, arange(N)) are
    made once per shape on the batch's device and kept (``_index_cache``, dropped by copies
    and pickles).

    For sample n with offsets (dy_n, dx_n) drawn uniformly from
    [0, H + 2p - h] x [0, W + 2p - w]:

        y[n, c, i, j] = x_pad[n, c, dy_n + i, dx_n + j]

    How: a strided *view* ``win`` of shape (N, C, H+2p-h+1, W+2p-w+1, h, w) lists every
    window of every image without copying (``win[n, c, a, b]`` is the window at offset (a, b));
    one fancy index ``win[n, :, dy_n, dx_n]`` then copies just the chosen windows. That is ten
    times faster than gathering pixel by pixel with four index arrays.

    Shapes: (N, C, H, W) -> (N, C, h, w).
    """

    padding_modes = ("constant", "reflect")

    def __init__(self, size: int | Sequence[int], padding: int = 0,
                 padding_mode: str = "constant"):
        self.size = _pair(size, "RandomCrop")
        if padding < 0:
            raise ValueError(f"RandomCrop: padding must be >= 0, got {padding}")
        self.padding = int(padding)
        if padding_mode not in self.padding_modes:
            raise ValueError(f"RandomCrop: padding_mode must be 'constant' or 'reflect', got "
                             f"{padding_mode!r}")
        self.padding_mode = padding_mode

    @staticmethod
    def _reflect_index(xp: Any, size: int, p: int) -> Any:
        """The source row (or column) of each of the size + 2p padded ones, reflecting:
        i -> (size-1) - |(size-1) - |i||  for i = -p .. size+p-1."""
        i = xp.abs(xp.arange(-p, size + p))
        return (size - 1) - xp.abs((size - 1) - i)

    @staticmethod
    def _reflect_pad(x: Any, p: int, rows: Any = None, cols: Any = None) -> Any:
        """NumPy's ``pad(x, ((0, 0), (0, 0), (p, p), (p, p)), "reflect")`` as one gather on
        the batch's device; a fresh C-contiguous array. ``rows``/``cols``: the
        ``_reflect_index`` arrays, if already made."""
        xp = get_array_module(x)
        _, _, h, w = x.shape
        rows = RandomCrop._reflect_index(xp, h, p) if rows is None else rows
        cols = RandomCrop._reflect_index(xp, w, p) if cols is None else cols
        return xp.ascontiguousarray(x[:, :, rows[:, None], cols[None, :]])

    def _cached(self, xp: Any, key: tuple, make: Any) -> Any:
        """``make()``, made once per (array module, key) and kept: index arrays that depend
        only on shapes, so that per batch only the random offsets cross to the device."""
        cache = self.__dict__.setdefault("_index_cache", {})
        full_key = (xp.__name__, *key)
        if full_key not in cache:
            cache[full_key] = make()
        return cache[full_key]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_index_cache", None)  # device arrays: a cache, rebuilt on first use
        return state

    def __repr__(self) -> str:
        mode = "" if self.padding_mode == "constant" else f", padding_mode={self.padding_mode!r}"
        return f"RandomCrop(size={self.size!r}, padding={self.padding!r}{mode})"

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        xp = _check_batch("RandomCrop", x)
        rng = np.random.default_rng() if rng is None else rng
        n, c, h_in, w_in = x.shape
        p, (h, w) = self.padding, self.size
        if h > h_in + 2 * p or w > w_in + 2 * p:
            raise ValueError(f"RandomCrop: crop {h}x{w} larger than the padded image "
                             f"{h_in + 2 * p}x{w_in + 2 * p}")
        if self.padding_mode == "reflect" and p > 0:
            if p >= h_in or p >= w_in:
                raise ValueError(f"RandomCrop: reflect padding {p} must be smaller than the "
                                 f"image {h_in}x{w_in}")
            x_pad = self._reflect_pad(
                x, p, self._cached(xp, ("reflect", h_in, p),
                                   lambda: self._reflect_index(xp, h_in, p)),
                self._cached(xp, ("reflect", w_in, p), lambda: self._reflect_index(xp, w_in, p)))
        else:
            x_pad = xp.zeros((n, c, h_in + 2 * p, w_in + 2 * p), dtype=x.dtype)
            x_pad[:, :, p:p + h_in, p:p + w_in] = x  # fresh and C-contiguous, for as_strided
        s_n, s_c, s_h, s_w = x_pad.strides
        win = xp.lib.stride_tricks.as_strided(
            x_pad, shape=(n, c, x_pad.shape[2] - h + 1, x_pad.shape[3] - w + 1, h, w),
            strides=(s_n, s_c, s_h, s_w, s_h, s_w))
        dy = rng.integers(0, x_pad.shape[2] - h + 1, size=n)
        dx = rng.integers(0, x_pad.shape[3] - w + 1, size=n)
        # One copy of the (2, N) offsets (int32: 8·N bytes), not two int64 arrays.
        offsets = xp.asarray(np.stack([dy, dx]).astype(np.int32))
        samples = self._cached(xp, ("arange", n), lambda: xp.arange(n))
        # Advanced indices on axes 0, 2, 3 around a slice: the result is (N, C, h, w).
        return win[samples, :, offsets[0], offsets[1]]


def _flip(x: Any, rng: np.random.Generator | None, p: float, axis: int) -> Any:
    """Copy of ``x`` with each sample reversed along ``axis`` with probability p."""
    rng = np.random.default_rng() if rng is None else rng
    xp = get_array_module(x)
    flip = _coin(rng, len(x), p)
    if xp is np:  # a masked copy: only the chosen samples are touched (3x faster than where)
        out = x.copy()
        out[flip] = np.flip(x[flip], axis=axis)
        return out
    # On the GPU a boolean mask would make the host wait for its count: select instead.
    flip = xp.asarray(flip)[:, None, None, None]
    return xp.where(flip, xp.flip(x, axis=axis), x)


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p``: y[n, :, i, j] = x[n, :, i, W-1-j]."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        _check_batch("RandomHorizontalFlip", x)
        return _flip(x, rng, self.p, axis=3)


class RandomVerticalFlip(Transform):
    """Mirror each image top-bottom with probability ``p``: y[n, :, i, j] = x[n, :, H-1-i, j]."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        _check_batch("RandomVerticalFlip", x)
        return _flip(x, rng, self.p, axis=2)


class RandomResizedCrop(Transform):
    """Cut a random box per sample and resize it to ``size`` with bilinear interpolation.

    As in Inception / torchvision: the box covers a fraction s ~ U(scale) of the image area
    with aspect ratio r = w/h, log r ~ U(log ratio); up to 10 draws per sample, the first one
    that fits is used, else the whole image. Its corner is uniform over the valid positions.

    Resizing (align_corners=False convention): output pixel i of a box starting at y0 with
    height h samples the source row

        s_i = y0 + clip((i + 0.5) * h / out_h - 0.5, 0, h - 1)

    and interpolates between rows floor(s_i) and floor(s_i) + 1 with weight s_i - floor(s_i);
    the same for columns. Four gathers (the four neighbours) and a weighted sum do the whole
    batch.

    Shapes: (N, C, H, W) -> (N, C, out_h, out_w).
    """

    tries = 10

    def __init__(self, size: int | Sequence[int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size = _pair(size, "RandomResizedCrop")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"RandomResizedCrop: need 0 < scale[0] <= scale[1] <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomResizedCrop: need 0 < ratio[0] <= ratio[1], got {ratio}")
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)

    def boxes(self, n: int, h_in: int, w_in: int, rng: np.random.Generator) -> np.ndarray:
        """Draw n boxes (y0, x0, h, w) as an int array (n, 4): vectorised over samples."""
        area = h_in * w_in * rng.uniform(*self.scale, size=(n, self.tries))
        log_r = rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]),
                            size=(n, self.tries))
        aspect = np.exp(log_r)
        w = np.rint(np.sqrt(area * aspect)).astype(np.int64)
        h = np.rint(np.sqrt(area / aspect)).astype(np.int64)
        ok = (w >= 1) & (w <= w_in) & (h >= 1) & (h <= h_in)
        first = ok.argmax(axis=1)  # index of the first draw that fits (0 if none does)
        rows = np.arange(n)
        h, w = h[rows, first], w[rows, first]
        none = ~ok.any(axis=1)
        h[none], w[none] = h_in, w_in  # fallback: the whole image
        y0 = (rng.random(n) * (h_in - h + 1)).astype(np.int64)
        x0 = (rng.random(n) * (w_in - w + 1)).astype(np.int64)
        return np.stack([y0, x0, h, w], axis=1)

    @staticmethod
    def _grid(start: Any, length: Any, out: int) -> tuple[Any, Any, Any]:
        """Source indices (lo, hi) and weights for ``out`` samples over each [start, start+len).

        ``start``, ``length``: int arrays (N,) on the batch's device; the grids are built there
        (float64: they are N x out numbers, and both backends then agree exactly).
        """
        xp = get_array_module(start)
        s = (xp.arange(out) + 0.5)[None, :] * (length[:, None] / out) - 0.5
        s = xp.minimum(xp.maximum(s, 0.0), (length - 1)[:, None].astype(np.float64))
        lo = xp.floor(s).astype(np.int64)
        hi = xp.minimum(lo + 1, (length - 1)[:, None])
        return start[:, None] + lo, start[:, None] + hi, s - lo

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        xp = _check_batch("RandomResizedCrop", x)
        rng = np.random.default_rng() if rng is None else rng
        n, c, h_in, w_in = x.shape
        out_h, out_w = self.size
        # The boxes are the only thing that crosses to the device: (4, N) integers.
        y0, x0, h, w = xp.asarray(self.boxes(n, h_in, w_in, rng).T)
        y_lo, y_hi, wy = self._grid(y0, h, out_h)  # (N, out_h)
        x_lo, x_hi, wx = self._grid(x0, w, out_w)  # (N, out_w)
        # Gather through flat indices into the contiguous batch: element (n, c, r, q) sits at
        # (n * C + c) * H * W + r * W + q; one 1-d take is twice as fast as 4-d fancy indexing.
        flat = xp.ascontiguousarray(x).reshape(-1)
        base = (xp.arange(n * c) * (h_in * w_in)).reshape(n, c, 1, 1)

        def pixels(r: Any, q: Any) -> Any:
            """x[n, c, r[n, i], q[n, j]] for all n, c, i, j: shape (N, C, out_h, out_w)."""
            return flat[base + (r[:, None, :, None] * w_in + q[:, None, None, :])]

        wy = wy[:, None, :, None].astype(x.dtype)  # (N, 1, out_h, 1)
        wx = wx[:, None, None, :].astype(x.dtype)  # (N, 1, 1, out_w)
        top = pixels(y_lo, x_lo) * (1 - wx) + pixels(y_lo, x_hi) * wx
        bottom = pixels(y_hi, x_lo) * (1 - wx) + pixels(y_hi, x_hi) * wx
        return top * (1 - wy) + bottom * wy


class GaussianNoise(Transform):
    """Add white noise: y = x + std * e, e ~ N(0, 1) independently per value.

    The noise is drawn on the batch's device, in the batch's dtype. On NumPy it comes from
    ``rng`` itself. On CuPy from one device generator per transform, created at the first
    batch and seeded from ``rng`` (so a seeded loader gives the same noise run after run);
    it is not copied when the transform is pickled or deep-copied (a device generator cannot
    be): a copy seeds its own from ``rng`` at its first batch.
    """

    def __init__(self, std: float):
        if std < 0:
            raise ValueError(f"GaussianNoise: std must be >= 0, got {std}")
        self.std = float(std)
        self._device_rng: Any = None

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        xp = _check_batch("GaussianNoise", x)
        rng = np.random.default_rng() if rng is None else rng
        if xp is np:
            e = rng.standard_normal(x.shape, dtype=np.float64 if x.dtype == np.float64
                                    else np.float32)
        else:
            if self._device_rng is None:  # once: a new device generator per batch is slow
                self._device_rng = xp.random.RandomState(int(rng.integers(2**63)))
            e = self._device_rng.standard_normal(x.shape, dtype=x.dtype)
        return x + (self.std * e).astype(x.dtype, copy=False)

    def __getstate__(self) -> dict:
        state = dict(vars(self))
        state["_device_rng"] = None  # device state: re-seeded from rng after a copy
        return state

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std!r})"


class Cutout(Transform):
    """Zero a ``size`` x ``size`` square at a random centre in each image (DeVries & Taylor).

    The centre (cy, cx) is uniform over the image; the square is clipped at the border, so
    near an edge less is cut. The mask is the outer product of a row test and a column test:

        keep[n, i, j] = not (cy_n - size//2 <= i < cy_n - size//2 + size
                             and cx_n - size//2 <= j < cx_n - size//2 + size)
    """

    def __init__(self, size: int, p: float = 1.0):
        if size < 1:
            raise ValueError(f"Cutout: size must be positive, got {size}")
        self.size = int(size)
        self.p = float(p)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        xp = _check_batch("Cutout", x)
        rng = np.random.default_rng() if rng is None else rng
        n, _, h, w = x.shape
        top = rng.integers(0, h, size=n) - self.size // 2
        left = rng.integers(0, w, size=n) - self.size // 2
        apply = _coin(rng, n, self.p)
        # Only these 3 x N numbers cross to the device; the (N, H, W) mask is built there.
        top, left, apply = xp.asarray(np.stack([top, left, apply]))
        i, j = xp.arange(h), xp.arange(w)
        in_rows = (i >= top[:, None]) & (i < top[:, None] + self.size) & (apply[:, None] > 0)
        in_cols = (j >= left[:, None]) & (j < left[:, None] + self.size)
        cut = in_rows[:, :, None] & in_cols[:, None, :]  # (N, H, W)
        return xp.where(cut[:, None], x.dtype.type(0), x)


class ColorJitter(Transform):
    """Random brightness and contrast per image, for images in [0, 1].

    Brightness: y = clip(b * x, 0, 1), b ~ U[max(0, 1 - brightness), 1 + brightness].
    Contrast:   y = clip(c * (x - m) + m, 0, 1), c ~ U[max(0, 1 - contrast), 1 + contrast],
    with m the image's mean grey level (ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B for three
    channels, the plain mean otherwise), as in torchvision. Brightness is applied first.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0):
        if brightness < 0 or contrast < 0:
            raise ValueError(f"ColorJitter: brightness and contrast must be >= 0, got "
                             f"{brightness}, {contrast}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)

    @staticmethod
    def _factors(rng: np.random.Generator, n: int, amount: float) -> np.ndarray:
        return rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount, size=n)

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        xp = _check_batch("ColorJitter", x)
        rng = np.random.default_rng() if rng is None else rng
        n, c = x.shape[:2]
        if self.brightness > 0:
            b = xp.asarray(self._factors(rng, n, self.brightness), dtype=x.dtype)
            x = xp.clip(x * b[:, None, None, None], 0.0, 1.0)
        if self.contrast > 0:
            f = xp.asarray(self._factors(rng, n, self.contrast), dtype=x.dtype)
            if c == 3:
                luma = xp.asarray([0.299, 0.587, 0.114], dtype=x.dtype)[None, :, None, None]
                grey = (x * luma).sum(axis=1, keepdims=True)
            else:
                grey = x.mean(axis=1, keepdims=True)
            m = grey.mean(axis=(2, 3), keepdims=True)  # (N, 1, 1, 1)
            x = xp.clip((x - m) * f[:, None, None, None] + m, 0.0, 1.0)
        return x
