"""The simple twins: slow, obviously correct versions of the fast code, which the tests compare
it with.

Every fast function of ``minicnn.functional`` that a layer calls says in its docstring which
function here it equals. These are written for reading, not for speed: loops over every
output pixel (or window, or matrix entry), straight from the formula, NumPy only, and they
compute in float64 whatever the input's dtype. Never use them for training.

Padding follows the functions they are twins of: ``((top, bottom), (left, right))`` for the
convolution and im2col (``Conv2d.pads``), ``(ph, pw)`` on both sides for pooling (the
``padding`` argument of ``MaxPool2d`` / ``AvgPool2d``).

Contents
--------
Convolution (docs/derivations/conv2d_im2col.md): ``im2col``, ``col2im``, ``conv2d_forward``,
``conv2d_backward``; and the textbook versions the benchmarks compare minicnn with
(``textbook_im2col``, ``textbook_col2im``, ``TextbookConv``).
Pooling (docs/derivations/pooling.md): ``padded_windows``, ``max_pool2d``,
``max_pool2d_backward``, ``avg_pool2d``, ``avg_pool2d_backward``.
Batch normalization (docs/derivations/batchnorm.md): ``batchnorm_forward``,
``batchnorm_backward_stepwise``.
Winograd convolution (docs/derivations/winograd.md): ``winograd_conv2d_tiles``, one tile and
one channel pair at a time.
Transposed convolution (docs/derivations/conv_transpose.md): ``conv_transpose2d_forward``,
``conv_transpose2d_backward``.
Grouped convolution (docs/derivations/conv2d_im2col.md): ``conv2d_grouped_forward``,
``conv2d_grouped_backward``.
Upsample and adaptive average pooling (docs/derivations/resampling.md): ``upsample2d``,
``upsample2d_backward``, ``adaptive_avg_pool2d``, ``adaptive_avg_pool2d_backward``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "im2col", "col2im", "conv2d_forward", "conv2d_backward",
    "padded_windows", "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "batchnorm_forward", "batchnorm_backward_stepwise",
    "textbook_im2col", "textbook_col2im", "TextbookConv", "winograd_conv2d_tiles",
    "conv_transpose2d_forward", "conv_transpose2d_backward",
    "conv2d_grouped_forward", "conv2d_grouped_backward",
    "upsample2d", "upsample2d_backward", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward",
]

Pads = tuple[tuple[int, int], tuple[int, int]]


def _pad(x: Any, padding: Pads, fill: float = 0.0) -> np.ndarray:
    """x (N, C, H, W) padded on H and W with ``fill``, as a float64 array."""
    (top, bottom), (left, right) = padding
    return np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)),
                  constant_values=fill)


def _out_size(size: int, kernel: int, stride: int) -> int:
    """The number of window positions along one axis of the padded input."""
    return (size - kernel) // stride + 1


# -- convolution ------------------------------------------------------------------------------

def im2col(x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
           padding: Pads) -> np.ndarray:
    """The patch matrix, one entry at a time.

    ``cols[(n, i, j), (a, b, c)] = x̃[n, c, i·sh + a, j·sw + b]`` with x̃ the zero-padded input:
    one row per output pixel (n, i, j), one column per kernel entry (a, b, c), the channel
    innermost. Twin of ``minicnn.functional.im2col.im2col``.

    Parameters
    ----------
    x : array (N, C, H, W)
    kernel_size, stride : (KH, KW), (sh, sw)
    padding : ((top, bottom), (left, right))

    Returns
    -------
    cols : float64 array (N·Ho·Wo, KH·KW·C)
    """
    x_p = _pad(x, padding)
    N, C, Hp, Wp = x_p.shape
    (kh, kw), (sh, sw) = kernel_size, stride
    Ho, Wo = _out_size(Hp, kh, sh), _out_size(Wp, kw, sw)
    cols = np.zeros((N * Ho * Wo, kh * kw * C))
    for n in range(N):
        for i in range(Ho):
            for j in range(Wo):
                for a in range(kh):
                    for b in range(kw):
                        for c in range(C):
                            row, col = (n * Ho + i) * Wo + j, (a * kw + b) * C + c
                            cols[row, col] = x_p[n, c, i * sh + a, j * sw + b]
    return cols


def col2im(cols: Any, x_shape: tuple[int, int, int, int], kernel_size: tuple[int, int],
           stride: tuple[int, int], padding: Pads) -> np.ndarray:
    """The adjoint of ``im2col``, one entry at a time: each entry added onto its pixel.

    ``dx̃[n, c, i·sh + a, j·sw + b] += cols[(n, i, j), (a, b, c)]`` for every entry, then the
    padding cropped. Twin of ``minicnn.functional.im2col.col2im``.

    Parameters
    ----------
    cols : array (N·Ho·Wo, KH·KW·C)
    x_shape : (N, C, H, W), the shape of the input of ``im2col``
    kernel_size, stride, padding : as given to ``im2col``

    Returns
    -------
    dx : float64 array (N, C, H, W)
    """
    N, C, H, W = x_shape
    (kh, kw), (sh, sw) = kernel_size, stride
    (top, bottom), (left, right) = padding
    Hp, Wp = H + top + bottom, W + left + right
    Ho, Wo = _out_size(Hp, kh, sh), _out_size(Wp, kw, sw)
    cols = np.asarray(cols, dtype=np.float64).reshape(N * Ho * Wo, kh * kw * C)
    dx_p = np.zeros((N, C, Hp, Wp))
    for n in range(N):
        for i in range(Ho):
            for j in range(Wo):
                for a in range(kh):
                    for b in range(kw):
                        for c in range(C):
                            row, col = (n * Ho + i) * Wo + j, (a * kw + b) * C + c
                            dx_p[n, c, i * sh + a, j * sw + b] += cols[row, col]
    return dx_p[:, :, top:top + H, left:left + W]


def conv2d_forward(x: Any, W: Any, b: Any, stride: tuple[int, int],
                   padding: Pads) -> np.ndarray:
    """The definition of ``Conv2d``'s output, one output pixel at a time.

    ``y[n, o, i, j] = b[o] + Σ_{c, a, b'} W[o, c, a, b'] · x̃[n, c, i·sh + a, j·sw + b']``
    (a cross-correlation: the kernel is not flipped), x̃ the zero-padded input.

    Parameters
    ----------
    x : array (N, C_in, H, W)
    W : array (C_out, C_in, KH, KW)
    b : array (C_out,) or None
    stride : (sh, sw)
    padding : ((top, bottom), (left, right)), as ``Conv2d.pads``

    Returns
    -------
    y : float64 array (N, C_out, Ho, Wo), Ho = (H + top + bottom - KH) // sh + 1
    """
    x_p = _pad(x, padding)
    W = np.asarray(W, dtype=np.float64)
    N, _, Hp, Wp = x_p.shape
    C_out, _, kh, kw = W.shape
    (sh, sw) = stride
    Ho, Wo = _out_size(Hp, kh, sh), _out_size(Wp, kw, sw)
    y = np.zeros((N, C_out, Ho, Wo))
    for n in range(N):
        for o in range(C_out):
            for i in range(Ho):
                for j in range(Wo):
                    window = x_p[n, :, i * sh:i * sh + kh, j * sw:j * sw + kw]  # (C_in, KH, KW)
                    y[n, o, i, j] = (W[o] * window).sum() + (0.0 if b is None else b[o])
    return y


def conv2d_backward(x: Any, W: Any, dout: Any, stride: tuple[int, int],
                    padding: Pads) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gradients of ``conv2d_forward``, one output pixel at a time.

    Output pixel (n, o, i, j) is Σ W[o] · (its window of x̃) + b[o], so its dout[n, o, i, j]
    flows back along every term::

        dW[o]                          += dout[n, o, i, j] · (the window of x̃)
        dx̃[n, :, window of (i, j)]     += dout[n, o, i, j] · W[o]
        db[o]                          += dout[n, o, i, j]

    and the padding of dx̃ is cropped. Twin of ``Conv2d.backward``: of
    ``conv2d_weight_grad`` (dW), ``conv2d_input_grad``, ``col2im_matmul`` and
    ``conv_input_grad`` (dx).

    Parameters
    ----------
    x : array (N, C_in, H, W), the forward's input
    W : array (C_out, C_in, KH, KW)
    dout : array (N, C_out, Ho, Wo)
    stride, padding : as for ``conv2d_forward``

    Returns
    -------
    dx : float64 array (N, C_in, H, W)
    dW : float64 array (C_out, C_in, KH, KW)
    db : float64 array (C_out,)
    """
    x_p = _pad(x, padding)
    W = np.asarray(W, dtype=np.float64)
    dout = np.asarray(dout, dtype=np.float64)
    N, _, H, Wd = np.shape(x)
    C_out, _, kh, kw = W.shape
    (sh, sw), ((top, _), (left, _)) = stride, padding
    dx_p, dW, db = np.zeros_like(x_p), np.zeros_like(W), np.zeros(C_out)
    for n in range(N):
        for o in range(C_out):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
                    dW[o] += dout[n, o, i, j] * x_p[n, :, rows, cols]
                    dx_p[n, :, rows, cols] += dout[n, o, i, j] * W[o]
                    db[o] += dout[n, o, i, j]
    return dx_p[:, :, top:top + H, left:left + Wd], dW, db


# -- the textbook convolution (benchmarks/layers.py's baseline) -------------------------------

def textbook_im2col(input_data: Any, filter_h: int, filter_w: int, stride: int = 1,
                    pad: int = 0) -> np.ndarray:
    """im2col as the "Deep Learning from Scratch" style courses write it.

    Fills a ``np.zeros`` buffer (float64) by looping over the kernel positions, then transposes
    it into the GEMM layout. Columns are in (c, kh, kw) order, not minicnn's (kh, kw, c).
    The baseline that ``benchmarks/layers.py`` compares minicnn against; minicnn never uses it.

    Returns (N·Ho·Wo, C·KH·KW).
    """
    N, C, H, W = input_data.shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((N, C, filter_h, filter_w, out_h, out_w))  # float64, as in the course
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            col[:, :, y, x, :, :] = img[:, :, y:y_max:stride, x:x_max:stride]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(N * out_h * out_w, -1)


def textbook_col2im(col: Any, input_shape: tuple[int, int, int, int], filter_h: int,
                    filter_w: int, stride: int = 1, pad: int = 0) -> np.ndarray:
    """col2im as the courses write it: the adjoint of ``textbook_im2col`` (same loop, ``+=``).

    Returns (N, C, H, W).
    """
    N, C, H, W = input_shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1))
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            img[:, :, y:y_max:stride, x:x_max:stride] += col[:, :, y, x, :, :]
    return img[:, :, pad:H + pad, pad:W + pad]


class TextbookConv:
    """Forward and backward of the courses' ``Convolution`` layer (``textbook_im2col``).

    ``W`` (C_out, C_in, KH, KW), ``b`` (C_out,), a square ``stride`` and ``pad``. ``forward(x)``
    returns y (N, C_out, Ho, Wo) and keeps what ``backward(dout)`` needs; backward returns dx
    and sets ``self.dW``, ``self.db``.
    """

    def __init__(self, W: Any, b: Any, stride: int = 1, pad: int = 0):
        self.W, self.b, self.stride, self.pad = W, b, stride, pad

    def forward(self, x: Any) -> np.ndarray:
        FN, C, FH, FW = self.W.shape
        N, C, H, Wd = x.shape
        out_h = 1 + (H + 2 * self.pad - FH) // self.stride
        out_w = 1 + (Wd + 2 * self.pad - FW) // self.stride
        col = textbook_im2col(x, FH, FW, self.stride, self.pad)
        col_W = self.W.reshape(FN, -1).T
        out = np.dot(col, col_W) + self.b
        self.x, self.col, self.col_W = x, col, col_W
        return out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)

    def backward(self, dout: Any) -> np.ndarray:
        FN, C, FH, FW = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, FN)
        self.db = np.sum(dout, axis=0)
        self.dW = np.dot(self.col.T, dout).transpose(1, 0).reshape(FN, C, FH, FW)
        dcol = np.dot(dout, self.col_W.T)
        return textbook_col2im(dcol, self.x.shape, FH, FW, self.stride, self.pad)


# -- pooling ----------------------------------------------------------------------------------

def padded_windows(x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int], fill: float) -> tuple[np.ndarray, tuple, list]:
    """The padded input, the output shape, and every pooling window one at a time.

    Parameters
    ----------
    x : array (N, C, H, W)
    kernel_size, stride : (KH, KW), (sh, sw)
    padding : (ph, pw), on both sides
    fill : the padding value (-inf for max pooling, 0 for average pooling)

    Returns
    -------
    x_p : float64 array (N, C, H + 2·ph, W + 2·pw)
    (N, C, Ho, Wo) : the output shape
    windows : list of ``(n, c, i, j, window)`` with
        ``window = x_p[n, c, i·sh:i·sh + KH, j·sw:j·sw + KW]`` (a view)
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    x_p = _pad(x, ((ph, ph), (pw, pw)), fill)
    N, C, Hp, Wp = x_p.shape
    Ho, Wo = _out_size(Hp, kh, sh), _out_size(Wp, kw, sw)
    windows = [(n, c, i, j, x_p[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw])
               for n in range(N) for c in range(C) for i in range(Ho) for j in range(Wo)]
    return x_p, (N, C, Ho, Wo), windows


def max_pool2d(x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int]) -> np.ndarray:
    """``y[n, c, i, j] = max`` of window (i, j) of x padded with -inf, one window at a time.

    Twin of ``MaxPool2d.forward`` (``minicnn.functional.pooling.window_max``). Returns a float64
    (N, C, Ho, Wo) array.
    """
    _, out_shape, windows = padded_windows(x, kernel_size, stride, padding, -np.inf)
    y = np.zeros(out_shape)
    for n, c, i, j, window in windows:
        y[n, c, i, j] = window.max()
    return y


def max_pool2d_backward(x: Any, dout: Any, kernel_size: tuple[int, int],
                        stride: tuple[int, int], padding: tuple[int, int]) -> np.ndarray:
    """dx of max pooling, one window at a time: dout goes to the window's first max.

    ``dx̃[n, c, i·sh + a*, j·sw + b*] += dout[n, c, i, j]`` with (a*, b*) = ``argmax`` of the
    window, which returns the first of tied entries in row-major order (PyTorch's rule);
    then the padding is cropped. Twin of ``MaxPool2d.backward``
    (``first_max_mask`` and ``max_pool_input_grad``).

    Parameters
    ----------
    x : array (N, C, H, W), the forward's input
    dout : array (N, C, Ho, Wo)
    kernel_size, stride, padding : (KH, KW), (sh, sw), (ph, pw)

    Returns
    -------
    dx : float64 array (N, C, H, W)
    """
    (sh, sw), (ph, pw) = stride, padding
    x_p, _, windows = padded_windows(x, kernel_size, stride, padding, -np.inf)
    dx_p = np.zeros_like(x_p)
    for n, c, i, j, window in windows:
        a, b = np.unravel_index(np.argmax(window), window.shape)
        dx_p[n, c, i * sh + a, j * sw + b] += dout[n, c, i, j]
    return dx_p[:, :, ph:ph + np.shape(x)[2], pw:pw + np.shape(x)[3]]


def avg_pool2d(x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int]) -> np.ndarray:
    """``y[n, c, i, j] = mean`` of window (i, j) of x padded with zeros (which count in the
    mean: every window divides by KH·KW), one window at a time.

    Twin of ``AvgPool2d.forward``. Returns a float64 (N, C, Ho, Wo) array.
    """
    _, out_shape, windows = padded_windows(x, kernel_size, stride, padding, 0.0)
    y = np.zeros(out_shape)
    for n, c, i, j, window in windows:
        y[n, c, i, j] = window.mean()
    return y


def avg_pool2d_backward(dout: Any, x_shape: tuple[int, int, int, int],
                        kernel_size: tuple[int, int], stride: tuple[int, int],
                        padding: tuple[int, int]) -> np.ndarray:
    """dx of average pooling, one window at a time: every entry gets dout / (KH·KW).

    ``dx̃[n, c, window (i, j)] += dout[n, c, i, j] / (KH·KW)``, then the padding is cropped.
    Twin of ``AvgPool2d.backward``. Returns a float64 (N, C, H, W) array.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    _, _, windows = padded_windows(np.zeros(x_shape), kernel_size, stride, padding, 0.0)
    N, C, H, W = x_shape
    dx_p = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    for n, c, i, j, _ in windows:
        dx_p[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw] += dout[n, c, i, j] / (kh * kw)
    return dx_p[:, :, ph:ph + H, pw:pw + W]


# -- batch normalization ----------------------------------------------------------------------

def batchnorm_forward(x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> np.ndarray:
    """BatchNorm's training forward, as the chain of small steps the derivation walks.

    Statistics over all axes except the channel axis 1 (m values per channel: N for (N, C),
    N·H·W for (N, C, H, W))::

        (1) mu    = (1/m) Σ x
        (2) xmu   = x - mu
        (3) var   = (1/m) Σ xmu²                 biased
        (4) std   = sqrt(var + eps)
        (5) x_hat = xmu / std
        (6) y     = gamma * x_hat + beta

    Twin of ``BatchNorm2d`` / ``BatchNorm1d`` in training mode (``center``, ``normalize``).

    Parameters
    ----------
    x : array (N, C) or (N, C, *)
    gamma, beta : arrays (C,)
    eps : float

    Returns
    -------
    y : float64 array, shape of x
    """
    x = np.asarray(x, dtype=np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)                   # (C,) -> broadcast per channel
    mu = x.mean(axis=axes, keepdims=True)                                     # (1)
    xmu = x - mu                                                              # (2)
    var = (xmu ** 2).mean(axis=axes, keepdims=True)                           # (3)
    std = np.sqrt(var + eps)                                                  # (4)
    x_hat = xmu / std                                                         # (5)
    return np.reshape(gamma, shape) * x_hat + np.reshape(beta, shape)        # (6)


def batchnorm_backward_stepwise(dout: Any, x: Any, gamma: Any,
                                eps: float = 1e-5) -> tuple[Any, Any, Any]:
    """BatchNorm's backward pass, step by step by the chain rule.

    The steps (1) to (6) of ``batchnorm_forward``, walked in reverse, each time multiplying
    the upstream gradient by the local derivative and summing over every path a variable
    feeds into::

        from (6):  dbeta  = Σ dout
                   dgamma = Σ dout * x_hat
                   dx_hat = dout * gamma
        from (5), (4) to var:
                   dvar   = Σ dx_hat * xmu * (-1/2) (var + eps)^(-3/2)
        from (5) and (3) to mu (through xmu directly, and through var):
                   dmu    = Σ dx_hat * (-1/std)  +  dvar * (1/m) Σ -2 xmu
                          = -(1/std) Σ dx_hat       (Σ xmu = 0: the second term vanishes)
        from (2), (3) and (1) to x (three paths: xmu, var, mu):
                   dx     = dx_hat / std  +  dvar * 2 xmu / m  +  dmu / m

    Substituting dvar and dmu gives the compact form the layers compute
    (``normalize_backward``, ``normalize_backward_centered``; docs/derivations/batchnorm.md)::

        dx = (gamma / (m sqrt(var + eps))) * (m dout - Σ dout - x_hat Σ dout * x_hat)

    Twin of ``BatchNorm2d.backward`` / ``BatchNorm1d.backward`` in training mode.

    Parameters
    ----------
    dout : array, shape of x
        dL/dy.
    x : array, (N, C) or (N, C, *)
        The forward input.
    gamma : array, (C,)
    eps : float

    Returns
    -------
    dx : array, shape of x
    dgamma, dbeta : arrays, (C,)
    """
    axes = (0,) + tuple(range(2, x.ndim))
    m = x.size // x.shape[1]
    gamma = gamma.reshape((1, -1) + (1,) * (x.ndim - 2))
    # forward, keeping every intermediate
    mu = x.mean(axis=axes, keepdims=True)                                     # (1)
    xmu = x - mu                                                              # (2)
    var = (xmu ** 2).mean(axis=axes, keepdims=True)                           # (3)
    std = np.sqrt(var + eps)                                                  # (4)
    x_hat = xmu / std                                                         # (5)
    # backward, in reverse order
    dbeta = dout.sum(axis=axes)                                               # (6)
    dgamma = (dout * x_hat).sum(axis=axes)                                    # (6)
    dx_hat = dout * gamma                                                     # (6)
    dvar = (dx_hat * xmu).sum(axis=axes, keepdims=True) * -0.5 * (var + eps) ** -1.5  # (5)(4)
    dmu = ((-dx_hat / std).sum(axis=axes, keepdims=True)
           + dvar * (-2.0 * xmu).sum(axis=axes, keepdims=True) / m)           # (5)(3)
    dx = dx_hat / std + dvar * 2.0 * xmu / m + dmu / m                        # (2)(3)(1)
    return dx, dgamma, dbeta


# -- Winograd convolution (docs/derivations/winograd.md) --------------------------------------

def winograd_conv2d_tiles(x: Any, W: Any, padding: Pads, BT: Any, G: Any,
                          AT: Any) -> np.ndarray:
    """Winograd's F(m×m, 3×3) as the textbook writes it: one tile, one channel pair at a time.

    For every m×m output tile, every output channel o and input channel c::

        Y_tile[o] += Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A      g = W[o, c] (3×3), d the α×α input
                                                     tile of channel c (α = m + 2)

    with the tiles of the zero-padded input taken every m pixels (zeros past its end) and the
    outputs past Ho, Wo dropped. It equals ``conv2d_forward(x, W, None, (1, 1), padding)``
    for any correct (Bᵀ, G, Aᵀ), and is the twin of ``minicnn.functional.winograd``'s
    ``winograd_conv2d``, which computes the same sums as GEMMs over all tiles and channels.

    Parameters
    ----------
    x : array (N, C_in, H, W)
    W : array (C_out, C_in, 3, 3)
    padding : ((top, bottom), (left, right))
    BT, G, AT : arrays (α, α), (α, 3), (m, α): the transforms (``winograd.BT[m]`` etc.)

    Returns
    -------
    y : float64 array (N, C_out, Ho, Wo), Ho = H + top + bottom - 2
    """
    BT, G, AT = (np.asarray(a, dtype=np.float64) for a in (BT, G, AT))
    m, alpha = AT.shape
    x_p = _pad(x, padding)
    W = np.asarray(W, dtype=np.float64)
    N, C_in, Hp, Wp = x_p.shape
    C_out = W.shape[0]
    Ho, Wo = _out_size(Hp, 3, 1), _out_size(Wp, 3, 1)
    th, tw = -(-Ho // m), -(-Wo // m)
    x_p = np.pad(x_p, ((0, 0), (0, 0), (0, th * m + 2 - Hp), (0, tw * m + 2 - Wp)))
    y = np.zeros((N, C_out, th * m, tw * m))
    for n in range(N):
        for ti in range(th):
            for tj in range(tw):
                for o in range(C_out):
                    for c in range(C_in):
                        d = x_p[n, c, ti * m:ti * m + alpha, tj * m:tj * m + alpha]
                        u = G @ W[o, c] @ G.T                  # (α, α)
                        v = BT @ d @ BT.T                      # (α, α)
                        y[n, o, ti * m:(ti + 1) * m, tj * m:(tj + 1) * m] += AT @ (u * v) @ AT.T
    return y[:, :, :Ho, :Wo]



# -- ConvTranspose2d (docs/derivations/conv_transpose.md) -------------------------------------

__all__ += ["conv_transpose2d_forward", "conv_transpose2d_backward"]


def conv_transpose2d_forward(x: Any, W: Any, b: Any, stride: tuple[int, int],
                             padding: tuple[int, int], output_padding: tuple[int, int] = (0, 0),
                             groups: int = 1) -> np.ndarray:
    """The definition of ``ConvTranspose2d``'s output, one input pixel at a time.

    Every input pixel x[n, c, i, j] scatters the kernel W[c] (C_out/groups, KH, KW), times its
    value, onto the full output at (i·sh, j·sw); the full output is then cropped by ``padding``
    on each side (zero rows/columns past its end where ``output_padding`` asks for them)::

        ỹ[n, o, i·sh + a, j·sw + b'] += x[n, c, i, j] · W[c, o, a, b']
        y[n, o, h, w] = b[o] + ỹ[n, o, h + ph, w + pw]

    Parameters
    ----------
    x : array (N, C_in, H, W)
    W : array (C_in, C_out/groups, KH, KW)
    b : array (C_out,) or None
    stride, padding, output_padding : (sh, sw), (ph, pw), (oph, opw)
    groups : int; input channel c feeds the output channels of its group

    Returns
    -------
    y : float64 array (N, C_out, Ho, Wo), Ho = (H - 1)·sh - 2·ph + KH + oph
    """
    x, W = np.asarray(x, dtype=np.float64), np.asarray(W, dtype=np.float64)
    N, C_in, H, Wd = x.shape
    _, C_og, kh, kw = W.shape
    (sh, sw), (ph, pw), (oph, opw) = stride, padding, output_padding
    Ho, Wo = (H - 1) * sh - 2 * ph + kh + oph, (Wd - 1) * sw - 2 * pw + kw + opw
    # the full output, large enough for every scattered kernel and for the output_padding
    full = np.zeros((N, C_og * groups, max((H - 1) * sh + kh, Ho + ph),
                     max((Wd - 1) * sw + kw, Wo + pw)))
    for n in range(N):
        for c in range(C_in):
            g = c // (C_in // groups)
            for i in range(H):
                for j in range(Wd):
                    full[n, g * C_og:(g + 1) * C_og, i * sh:i * sh + kh, j * sw:j * sw + kw] += \
                        x[n, c, i, j] * W[c]
    y = full[:, :, ph:ph + Ho, pw:pw + Wo].copy()
    if b is not None:
        y += np.asarray(b, dtype=np.float64)[:, None, None]
    return y


def conv_transpose2d_backward(x: Any, W: Any, dout: Any, stride: tuple[int, int],
                              padding: tuple[int, int], output_padding: tuple[int, int] = (0, 0),
                              groups: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gradients of ``conv_transpose2d_forward``, one input pixel at a time.

    Input pixel x[n, c, i, j] was scattered as x · W[c] onto the window at (i·sh, j·sw) of the
    full output, so it gathers back what dout holds there (dout padded by ``padding``, its
    output_padding rows cut to the full output's size)::

        dx[n, c, i, j] += Σ dout̃[n, group's o, window of (i, j)] · W[c]
        dW[c]          += x[n, c, i, j] · dout̃[n, group's o, window of (i, j)]
        db[o]           = Σ_{n, h, w} dout[n, o, h, w]

    Twin of ``ConvTranspose2d.backward``.

    Returns
    -------
    dx : float64 array (N, C_in, H, W)
    dW : float64 array (C_in, C_out/groups, KH, KW)
    db : float64 array (C_out,)
    """
    x, W = np.asarray(x, dtype=np.float64), np.asarray(W, dtype=np.float64)
    dout = np.asarray(dout, dtype=np.float64)
    N, C_in, H, Wd = x.shape
    _, C_og, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    Ho, Wo = dout.shape[2:]
    full = np.zeros((N, dout.shape[1], max((H - 1) * sh + kh, Ho + ph),
                     max((Wd - 1) * sw + kw, Wo + pw)))
    full[:, :, ph:ph + Ho, pw:pw + Wo] = dout        # dout̃: zeros where y was cropped
    dx, dW = np.zeros_like(x), np.zeros_like(W)
    for n in range(N):
        for c in range(C_in):
            g = c // (C_in // groups)
            for i in range(H):
                for j in range(Wd):
                    window = full[n, g * C_og:(g + 1) * C_og, i * sh:i * sh + kh,
                                  j * sw:j * sw + kw]
                    dx[n, c, i, j] += (window * W[c]).sum()
                    dW[c] += x[n, c, i, j] * window
    return dx, dW, dout.sum(axis=(0, 2, 3))


# -- grouped convolution: Conv2d(..., groups=G) (docs/derivations/conv2d_im2col.md) -----------

def conv2d_grouped_forward(x: Any, W: Any, b: Any, stride: tuple[int, int], padding: Pads,
                           groups: int) -> np.ndarray:
    """Grouped convolution by its definition: ``conv2d_forward`` of each group on its own.

    Group g takes input channels [g·Cg, (g+1)·Cg) and W's rows [g·Og, (g+1)·Og), and gives
    output channels [g·Og, (g+1)·Og) (Cg = C_in / G, Og = C_out / G). W (C_out, Cg, KH, KW).
    Twin of ``grouped_conv.grouped_conv2d`` and ``depthwise_conv2d``.
    """
    x = np.asarray(x, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    Cg, Og = x.shape[1] // groups, W.shape[0] // groups
    return np.concatenate(
        [conv2d_forward(x[:, g * Cg:(g + 1) * Cg], W[g * Og:(g + 1) * Og],
                        None if b is None else b[g * Og:(g + 1) * Og], stride, padding)
         for g in range(groups)], axis=1)


def conv2d_grouped_backward(x: Any, W: Any, dout: Any, stride: tuple[int, int], padding: Pads,
                            groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dW, db) of ``conv2d_grouped_forward``: ``conv2d_backward`` of each group, dx and
    dW concatenated along channels. Twin of ``grouped_conv2d_backward``."""
    x = np.asarray(x, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    Cg, Og = x.shape[1] // groups, W.shape[0] // groups
    parts = [conv2d_backward(x[:, g * Cg:(g + 1) * Cg], W[g * Og:(g + 1) * Og],
                             np.asarray(dout)[:, g * Og:(g + 1) * Og], stride, padding)
             for g in range(groups)]
    dx = np.concatenate([p[0] for p in parts], axis=1)
    dW = np.concatenate([p[1] for p in parts], axis=0)
    db = np.concatenate([p[2] for p in parts], axis=0)
    return dx, dW, db


# -- Upsample and AdaptiveAvgPool2d (docs/derivations/resampling.md) ---------------------------
# Twins of minicnn.functional.resample (resample / resample_backward with the matrices of
# nearest_matrix, linear_matrix, adaptive_avg_matrix): one output pixel at a time, each from
# PyTorch's index formulas, no matrices.

def _upsample_taps(i: int, n_in: int, scale: int, mode: str) -> list[tuple[int, float]]:
    """The input samples (index, weight) that output sample i of one axis reads."""
    if mode == "nearest":
        return [(min(i // scale, n_in - 1), 1.0)]          # src = floor(dst / scale)
    src = max((i + 0.5) / scale - 0.5, 0.0)                # align_corners=False
    lo = int(src)
    hi = lo + 1 if lo < n_in - 1 else lo
    lam = src - lo
    return [(lo, 1.0 - lam), (hi, lam)]


def upsample2d(x: Any, scale_factor: tuple[int, int], mode: str) -> np.ndarray:
    """Upsample's forward, one output pixel at a time:
    y[n, c, i, j] = Σ_{(a, wa) ∈ taps(i)} Σ_{(b, wb) ∈ taps(j)} wa·wb·x[n, c, a, b]."""
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    sh, sw = scale_factor
    y = np.zeros((N, C, H * sh, W * sw))
    for i in range(H * sh):
        for j in range(W * sw):
            for a, wa in _upsample_taps(i, H, sh, mode):
                for b, wb in _upsample_taps(j, W, sw, mode):
                    y[:, :, i, j] += wa * wb * x[:, :, a, b]
    return y


def upsample2d_backward(dout: Any, x_shape: tuple[int, ...], scale_factor: tuple[int, int],
                        mode: str) -> np.ndarray:
    """Upsample's dx: every output pixel hands dout times each of its weights back to the
    input sample it read (the scatter of ``upsample2d``'s gather)."""
    dout = np.asarray(dout, dtype=np.float64)
    N, C, H, W = x_shape
    sh, sw = scale_factor
    dx = np.zeros((N, C, H, W))
    for i in range(H * sh):
        for j in range(W * sw):
            for a, wa in _upsample_taps(i, H, sh, mode):
                for b, wb in _upsample_taps(j, W, sw, mode):
                    dx[:, :, a, b] += wa * wb * dout[:, :, i, j]
    return dx


def _adaptive_window(i: int, n_in: int, n_out: int) -> range:
    """Input indices of output i: floor(i·n_in/n_out) <= h < ceil((i+1)·n_in/n_out)."""
    return range((i * n_in) // n_out, -(-((i + 1) * n_in) // n_out))


def adaptive_avg_pool2d(x: Any, output_size: tuple[int, int]) -> np.ndarray:
    """AdaptiveAvgPool2d's forward: y[n, c, i, j] = mean of x[n, c] over window(i) × window(j)."""
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    oh, ow = output_size
    y = np.zeros((N, C, oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows, cols = _adaptive_window(i, H, oh), _adaptive_window(j, W, ow)
            y[:, :, i, j] = x[:, :, rows.start:rows.stop, cols.start:cols.stop].mean(axis=(2, 3))
    return y


def adaptive_avg_pool2d_backward(dout: Any, x_shape: tuple[int, ...]) -> np.ndarray:
    """AdaptiveAvgPool2d's dx: each output pixel spreads dout / (window size) over its window
    (adding where windows overlap)."""
    dout = np.asarray(dout, dtype=np.float64)
    N, C, H, W = x_shape
    oh, ow = dout.shape[2:]
    dx = np.zeros((N, C, H, W))
    for i in range(oh):
        for j in range(ow):
            rows, cols = _adaptive_window(i, H, oh), _adaptive_window(j, W, ow)
            share = dout[:, :, i, j] / (len(rows) * len(cols))
            dx[:, :, rows.start:rows.stop, cols.start:cols.stop] += share[:, :, None, None]
    return dx
