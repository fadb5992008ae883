"""Winograd's minimal filtering: a 3×3 stride-1 convolution with 2.25× or 4× fewer multiplies.

Derivation: docs/derivations/winograd.md
Tests: tests/test_winograd.py

One dimension first. F(m, 3) computes m outputs of a 3-tap cross-correlation,
``y_i = Σ_k d_{i+k} g_k`` (i < m), from α = m + 2 inputs d and the 3 taps g, as

    y = Aᵀ [ (G g) ⊙ (Bᵀ d) ]        Bᵀ (α, α), G (α, 3), Aᵀ (m, α)

with α multiplies (the ⊙) instead of 3·m. In 2-D the same is nested along both axes: an
α×α input tile d gives an m×m output tile

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A.

Over channels the ⊙ becomes a sum of products, so for each of the α² positions ξ of the
transformed tile it is a matrix product (Lavin & Gray 2016, arXiv:1509.09308): with the tiles
flattened to α² entries and the Kronecker products Bᵀ⊗Bᵀ (α², α²), G⊗G (α², 9),
Aᵀ⊗Aᵀ (m², α²),

    V[ξ, t, c]  = Σ_ν (Bᵀ⊗Bᵀ)[ξ, ν] · d[ν, t, c]        input transform   (α², P, C_in)
    U[ξ, c, o]  = Σ_κ (G⊗G)[ξ, κ] · W[o, c, κ]           weight transform  (α², C_in, C_out)
    M[ξ]        = V[ξ] @ U[ξ]                            α² GEMMs         (α², P, C_out)
    Y[μ, t, o]  = Σ_ξ (Aᵀ⊗Aᵀ)[μ, ξ] · M[ξ, t, o]        output transform  (m², P, C_out)

for the P = N·⌈Ho/m⌉·⌈Wo/m⌉ tiles t of the padded input (overlapping: α×α tiles taken every
m pixels). The α² GEMMs do C_in·C_out·α² multiplies per tile where im2col's GEMM does
C_in·C_out·9·m²: 16/36 for F(2×2, 3×3), 36/144 for F(4×4, 3×3). The transforms are small
GEMMs over the α² axis, one each.

Where Bᵀ, G, Aᵀ come from (``toom_cook_matrices``)
--------------------------------------------------
A linear convolution s = g * h of g (3 taps) with h (m taps) is the product of the polynomials
g(x) h(x), of degree m + 1, fixed by its values at α = m + 2 points. Evaluate both at α - 1
finite points p_j and at "∞" (the leading coefficient), multiply the α values pairwise and
interpolate back (Lagrange, the Chinese remainder theorem for the moduli x - p_j, plus the
leading term times M(x) = Π_j (x - p_j)). Evaluation is a Vandermonde matrix, so

    A[j, i] = p_j^i    (A[∞, i] = 1 if i = m - 1 else 0)       evaluates h,  A (α, m)
    G[j, k] = p_j^k / N_j,  N_j = Π_{k≠j} (p_j - p_k)           evaluates g,  G (α, 3)
    C[:, j] = coefficients of Π_{k≠j} (x - p_k),  C[:, ∞] = coefficients of M(x)

and s = C [(G g) ⊙ (A h)] (the Lagrange denominators N_j are moved into G, so C is an integer
matrix). The cross-correlation y_i = Σ_k d_{i+k} g_k is the *transpose* of h ↦ g * h, so
transposing the whole product gives y = Aᵀ [(G g) ⊙ (Cᵀ d)]: Bᵀ = Cᵀ. With the points
0, 1, -1, ∞ this gives F(2, 3); with 0, ±1, ±2, ∞, F(4, 3), where the matrices have entries up
to 8 and 1/24 and float32 loses about ten times more than with F(2, 3) (measured in
docs/derivations/winograd.md). ``BT``, ``G``, ``AT`` below are Lavin & Gray's published
matrices: for F(4, 3) exactly the construction, for F(2, 3) the construction with the signs
of the points 0 and ∞ moved from one matrix to another (any such move leaves y unchanged).

Backward: every step is linear, so its gradient is the transposed map
----------------------------------------------------------------------
With dY the output gradient cut into the same m×m tiles (zeros past Ho, Wo):

    dM[ξ]       = Σ_μ (Aᵀ⊗Aᵀ)[μ, ξ] · dY[μ]       = (A⊗A) · dY
    dU[ξ]       = V[ξ]ᵀ @ dM[ξ]                     (the forward's V, kept in ``cache``)
    dW[o, c, κ] = Σ_ξ (G⊗G)[ξ, κ] · dU[ξ, c, o]    = (G⊗G)ᵀ · dU
    dV[ξ]       = dM[ξ] @ U[ξ]ᵀ
    dd[ν]       = Σ_ξ (Bᵀ⊗Bᵀ)[ξ, ν] · dV[ξ]        = (B⊗B) · dV

and each input pixel collects the gradients of all its copies in the overlapping tiles
(the adjoint of the gather, like ``col2im``), with the padding cropped. The three GEMM
stages have the forward's reduced multiply count.

The twins: ``winograd_conv2d`` equals ``reference.conv2d_forward`` with ``b = None`` and
stride 1, and ``reference.winograd_conv2d_tiles`` (the formula above, one tile and one
channel pair at a time); ``winograd_conv2d_backward`` equals the dx and dW of
``reference.conv2d_backward``. Both are written in ``xp``: on CuPy a forward is a padded
copy, one gather, four GEMM launches (one batched over ξ) and one output copy; a backward,
one copy, five GEMM launches (two batched) and four strided writes. The transform matrices
are copied to a device once per dtype and kept (``winograd_transforms``), never per call.
What the backward keeps, V, is α²/m² times the input (2.25× for F(4×4, 3×3)), where im2col
keeps its 9× larger patch matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..backend import get_array_module
from .im2col import Pads, output_size
from .precision import gemm_input, gemm_inputs
from .scratch import matmul_into

__all__ = ["BT", "G", "AT", "toom_cook_matrices", "winograd_transforms", "winograd_applies",
           "winograd_conv2d", "winograd_conv2d_backward", "winograd_is_faster"]

Workspace = Callable[[str, tuple[int, ...], Any], Any]

# Lavin & Gray's matrices in float64 (exact but for 1/6, 1/12 and 1/24, rounded once), keyed
# by the output tile size m. Rows of BT / G and columns of AT are the
# interpolation points in the order 0, 1, -1 (, 2, -2), ∞.
BT = {
    2: np.array([[1, 0, -1, 0],
                 [0, 1, 1, 0],
                 [0, -1, 1, 0],
                 [0, 1, 0, -1]], dtype=np.float64),
    4: np.array([[4, 0, -5, 0, 1, 0],
                 [0, -4, -4, 1, 1, 0],
                 [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0],
                 [0, 2, -1, -2, 1, 0],
                 [0, 4, 0, -5, 0, 1]], dtype=np.float64),
}
G = {
    2: np.array([[1, 0, 0],
                 [1 / 2, 1 / 2, 1 / 2],
                 [1 / 2, -1 / 2, 1 / 2],
                 [0, 0, 1]], dtype=np.float64),
    4: np.array([[1 / 4, 0, 0],
                 [-1 / 6, -1 / 6, -1 / 6],
                 [-1 / 6, 1 / 6, -1 / 6],
                 [1 / 24, 1 / 12, 1 / 6],
                 [1 / 24, -1 / 12, 1 / 6],
                 [0, 0, 1]], dtype=np.float64),
}
AT = {
    2: np.array([[1, 1, 1, 0],
                 [0, 1, -1, -1]], dtype=np.float64),
    4: np.array([[1, 1, 1, 1, 1, 0],
                 [0, 1, -1, 2, -2, 0],
                 [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]], dtype=np.float64),
}


def toom_cook_matrices(points: Sequence[float], m: int,
                       r: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bᵀ, G, Aᵀ of F(m, r) from its α - 1 finite interpolation points (and ∞), float64.

    The construction of the module docstring: with α = m + r - 1 and N_j = Π_{k≠j}(p_j - p_k),

        Aᵀ[i, j] = p_j^i                 (column ∞: 1 in the last row)            (m, α)
        G[j, k]  = p_j^k / N_j           (row ∞: 1 in the last column)            (α, r)
        Bᵀ[j, :] = coefficients of Π_{k≠j}(x - p_k), lowest degree first         (α, α)
        Bᵀ[∞, :] = coefficients of Π_k (x - p_k)

    so that ``Aᵀ @ ((G @ g) * (Bᵀ @ d))`` is the cross-correlation of d (α,) with g (r,), for
    any distinct points. ``toom_cook_matrices([0, 1, -1], 2)`` is ``BT[2], G[2], AT[2]`` up to
    a sign per point; the tests check both against the definition.
    """
    p = np.asarray(points, dtype=np.float64)
    alpha = m + r - 1
    if len(p) != alpha - 1 or len(set(p.tolist())) != len(p):
        raise ValueError(f"F({m}, {r}) needs {alpha - 1} distinct finite points, got {points!r}")
    AT_ = np.zeros((m, alpha))
    AT_[:, :-1] = p[None, :] ** np.arange(m)[:, None]
    AT_[m - 1, -1] = 1.0
    G_ = np.zeros((alpha, r))
    BT_ = np.zeros((alpha, alpha))
    for j in range(alpha - 1):
        others = np.delete(p, j)
        G_[j] = p[j] ** np.arange(r) / np.prod(p[j] - others)
        BT_[j, :-1] = np.poly(others)[::-1]          # np.poly: highest degree first
    G_[-1, -1] = 1.0
    BT_[-1] = np.poly(p)[::-1]
    return BT_, G_, AT_


_TRANSFORMS: dict[tuple[Any, ...], tuple[Any, Any, Any, Any]] = {}


def winograd_transforms(xp: Any, dtype: Any, m: int, like: Any = None) -> tuple[Any, Any, Any]:
    """(Bᵀ⊗Bᵀ, G⊗G, Aᵀ⊗Aᵀ) of F(m×m, 3×3) as ``xp`` arrays of ``dtype``: (α², α²), (α², 9),
    (m², α²).

    Rows and columns are the tile entries flattened row-major: ``(Bᵀ⊗Bᵀ)[(i, j), (k, l)] =
    Bᵀ[i, k] · Bᵀ[j, l]``, so ``(Bᵀ⊗Bᵀ) @ d.ravel() = (Bᵀ @ d @ B).ravel()`` for one α×α
    tile d. Computed in float64 and cast once. On a GPU they are copied to the device once per
    (device of ``like``, dtype, m) and kept for the process: no later call copies them.
    """
    dtype = np.dtype(dtype)
    device = getattr(like, "device", None)
    key = (xp.__name__, str(getattr(device, "id", device)), dtype.str, m)
    entry = _TRANSFORMS.get(key)
    if entry is None or entry[0] is not xp:
        host = (np.kron(BT[m], BT[m]), np.kron(G[m], G[m]), np.kron(AT[m], AT[m]))
        entry = _TRANSFORMS[key] = (xp, *(xp.asarray(a.astype(dtype)) for a in host))
    return entry[1], entry[2], entry[3]


def winograd_applies(kernel_size: tuple[int, int], stride: tuple[int, int], pads: Pads) -> bool:
    """Whether ``winograd_conv2d`` computes this convolution: a 3×3 kernel, stride 1 and a
    zero padding of at most 2 = K - 1 on every side (more only adds outputs that see nothing
    but zeros; ``flipped_pads`` sets the same limit for Conv2d's dx)."""
    return (tuple(kernel_size) == (3, 3) and tuple(stride) == (1, 1)
            and all(0 <= p <= 2 for side in pads for p in side))


def _buffer(xp: Any, workspace: Workspace | None, name: str, shape: tuple[int, ...],
            dtype: Any) -> Any:
    """``workspace(name, shape, dtype)``, or a fresh ``xp.empty`` without one."""
    if workspace is None:
        return xp.empty(shape, dtype=dtype)
    return workspace(name, shape, dtype)


def _tiling(x_shape: tuple[int, ...], pads: Pads, m: int) -> tuple[int, int, int, int]:
    """(Ho, Wo, th, tw): the output size and the number of m×m output tiles along H and W."""
    Ho, Wo = output_size(x_shape, (3, 3), (1, 1), pads, "winograd_conv2d")
    return Ho, Wo, -(-Ho // m), -(-Wo // m)


def _input_transform(x: Any, pads: Pads, m: int, workspace: Workspace | None) -> Any:
    """V = (Bᵀ⊗Bᵀ) @ d (α², P, C_in): the transformed input tiles ("winograd_V").

    The padded input is copied channels-last into a buffer exactly large enough for the
    th×tw tiles (zeros past the padding when Ho or Wo is not a multiple of m); its
    overlapping α×α tiles are gathered by one strided copy,
    ``d[(a, b), (n, ti, tj), c] = x_p[n, ti·m + a, tj·m + b, c]``; then one GEMM.
    """
    xp = get_array_module(x)
    N, C_in, H, Wd = x.shape
    (top, _), (left, _) = pads
    _, _, th, tw = _tiling(x.shape, pads, m)
    alpha, P = m + 2, N * th * tw
    BB = winograd_transforms(xp, x.dtype, m, like=x)[0]
    x_p = _buffer(xp, workspace, "winograd_x_pad", (N, th * m + 2, tw * m + 2, C_in), x.dtype)
    x_p[:, :top], x_p[:, top + H:], x_p[:, :, :left], x_p[:, :, left + Wd:] = 0, 0, 0, 0
    x_p[:, top:top + H, left:left + Wd, :] = x.transpose(0, 2, 3, 1)
    s_n, s_h, s_w, s_c = x_p.strides
    tiles = xp.lib.stride_tricks.as_strided(
        x_p, shape=(alpha, alpha, N, th, tw, C_in),
        strides=(s_h, s_w, s_n, m * s_h, m * s_w, s_c))
    d = _buffer(xp, workspace, "winograd_d", (alpha * alpha, P, C_in), x.dtype)
    xp.copyto(d.reshape(alpha, alpha, N, th, tw, C_in), tiles)
    V = _buffer(xp, workspace, "winograd_V", (alpha * alpha, P, C_in), x.dtype)
    matmul_into(BB, d.reshape(alpha * alpha, P * C_in), V.reshape(alpha * alpha, P * C_in))
    return V


def _weight_transform(W: Any, m: int, dtype: Any, workspace: Workspace | None) -> Any:
    """U = (G⊗G) @ W (α², C_in, C_out): the transformed filters ("winograd_U")."""
    xp = get_array_module(W)
    C_out, C_in = W.shape[:2]
    alpha = m + 2
    GG = winograd_transforms(xp, dtype, m, like=W)[1]
    W9 = W.astype(dtype, copy=False).transpose(2, 3, 1, 0).reshape(9, C_in * C_out)
    U = _buffer(xp, workspace, "winograd_U", (alpha * alpha, C_in, C_out), dtype)
    matmul_into(GG, W9, U.reshape(alpha * alpha, C_in * C_out))
    return U


def winograd_conv2d(x: Any, W: Any, pads: Pads, m: int = 4, workspace: Workspace | None = None,
                    keep: str = "tiles") -> tuple[Any, dict[str, Any]]:
    """A 3×3 stride-1 convolution (no bias) by Winograd's F(m×m, 3×3).

    Equals ``reference.conv2d_forward(x, W, None, (1, 1), pads)`` (and ``Conv2d``'s output
    without b)::

        y[n, o, i, j] = Σ_{c, a, b} W[o, c, a, b] · x̃[n, c, i + a, j + b]

    computed tile by tile as ``Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` summed over the channels
    (module docstring): the padded input is copied channels-last, its overlapping α×α tiles
    (α = m + 2, one every m pixels) gathered by one strided copy into d (α², P·C_in), then

        V = (Bᵀ⊗Bᵀ) @ d            (α², P, C_in)      one GEMM
        U = (G⊗G) @ W              (α², C_in, C_out)   one small GEMM
        M[ξ] = V[ξ] @ U[ξ]         (α², P, C_out)      α² GEMMs, one batched call
        Y = (Aᵀ⊗Aᵀ) @ M            (m², P, C_out)      one GEMM

    and Y's m×m tiles are laid side by side into y. When Ho or Wo is not a multiple of m,
    the tiling reaches past the padded input (read as zeros) and the extra outputs are cut.

    Parameters
    ----------
    x : array (N, C_in, H, W), any memory layout
    W : array (C_out, C_in, 3, 3), cast to x's dtype
    pads : ((top, bottom), (left, right)), zero padding, each at most 2 (``winograd_applies``)
    m : 2 or 4
        The output tile: F(2×2, 3×3) (16 multiplies per tile and channel pair instead of 36)
        or F(4×4, 3×3) (36 instead of 144, a larger float32 error).
    workspace : callable ``(name, shape, dtype) -> array``, optional
        Reusable buffers (``Layer.workspace``): "winograd_x_pad", "winograd_d", "winograd_V",
        "winograd_U", "winograd_M", "winograd_Y" (and "winograd_y_full" when the output is
        cut). With ``keep="tiles"`` the cache holds V and U, so their buffers must live
        until the backward (a layer's own, not a shared scratch arena); every other buffer
        is dead when the call returns.
    keep : "tiles" or "input"
        What the cache keeps for the backward: V and U (no recomputation; V is α²/m² times
        x), or x and W themselves (references; the backward computes V and U again, at the
        cost of one more gather and two transform GEMMs, and all buffers are scratch).

    Returns
    -------
    y : array (N, C_out, Ho, Wo), x's dtype, stored channels-last (a view of a C-contiguous
        (N, Ho, Wo, C_out) array, like ``Conv2d``'s output); Ho = H + top + bottom - 2
    cache : dict of arrays and shapes, for ``winograd_conv2d_backward``: ``V`` and ``U``, or
        ``x`` and ``W``; ``x_shape``, ``pads``, ``m``
    """
    xp = get_array_module(x)
    if m not in BT:
        raise ValueError(f"winograd_conv2d: m must be 2 or 4, got {m!r}")
    if keep not in ("tiles", "input"):
        raise ValueError(f"winograd_conv2d: keep must be 'tiles' or 'input', got {keep!r}")
    if not winograd_applies(tuple(W.shape[2:]), (1, 1), pads):
        raise ValueError(f"winograd_conv2d: needs a 3×3 kernel and paddings of at most 2, "
                         f"got W of shape {tuple(W.shape)} and pads {pads}")
    N = x.shape[0]
    C_out = W.shape[0]
    Ho, Wo, th, tw = _tiling(x.shape, pads, m)
    alpha, P = m + 2, N * th * tw
    AA = winograd_transforms(xp, x.dtype, m, like=x)[2]

    V = _input_transform(x, pads, m, workspace)
    U = _weight_transform(W, m, x.dtype, workspace)
    V, U = gemm_inputs(V, U)              # the α² GEMMs' inputs in the precision policy's format
    M = _buffer(xp, workspace, "winograd_M", (alpha * alpha, P, C_out), x.dtype)
    matmul_into(V, U, M)
    Y = _buffer(xp, workspace, "winograd_Y", (m * m, P * C_out), x.dtype)
    matmul_into(AA, M.reshape(alpha * alpha, P * C_out), Y)

    # y[n, ti·m + a, tj·m + b, o] = Y[(a, b), (n, ti, tj), o]
    tiles_out = Y.reshape(m, m, N, th, tw, C_out).transpose(2, 3, 0, 4, 1, 5)
    if (Ho, Wo) == (th * m, tw * m):
        y = xp.empty((N, Ho, Wo, C_out), dtype=x.dtype)
        y.reshape(N, th, m, tw, m, C_out)[...] = tiles_out
    else:
        full = _buffer(xp, workspace, "winograd_y_full", (N, th, m, tw, m, C_out), x.dtype)
        full[...] = tiles_out
        y = full.reshape(N, th * m, tw * m, C_out)[:, :Ho, :Wo].copy()   # never the buffer
    cache = {"x_shape": tuple(x.shape), "pads": pads, "m": m}
    if keep == "tiles":
        cache.update(V=V, U=U)
    else:
        cache.update(x=x, W=W)
    return y.transpose(0, 3, 1, 2), cache


def winograd_conv2d_backward(dout: Any, cache: dict[str, Any], need_dx: bool = True,
                             need_dW: bool = True,
                             workspace: Workspace | None = None) -> tuple[Any, Any]:
    """dx and dW of ``winograd_conv2d``, in the Winograd domain (the forward's maps transposed).

    Equals the dx and dW of ``reference.conv2d_backward(x, W, dout, (1, 1), pads)``::

        dW[o, c, a, b] = Σ_{n, i, j} dout[n, o, i, j] · x̃[n, c, i + a, j + b]
        dx[n, c, h, w] = Σ_{o, a, b} dout[n, o, h + top - a, w + left - b] · W[o, c, a, b]

    computed by transposing each linear step of the forward (module docstring)::

        dM = (Aᵀ⊗Aᵀ)ᵀ @ dY          (α², P, C_out)    dY: dout in m×m tiles, zero past Ho, Wo
        dU[ξ] = V[ξ]ᵀ @ dM[ξ]      (α², C_in, C_out)  -> dW = (G⊗G)ᵀ @ dU
        dV[ξ] = dM[ξ] @ U[ξ]ᵀ      (α², P, C_in)      -> dd = (Bᵀ⊗Bᵀ)ᵀ @ dV

    with V and U from the cache (or computed again from x and W, ``keep="input"``). Then dd's
    overlapping α×α tiles are added back onto the padded input (the adjoint of the forward's
    gather) and the padding is cut. Tiles one every m pixels overlap by two rows and
    columns, so in blocks of m×m pixels each block receives four parts: its own tile's
    top-left m×m (written), the last two rows of the tile above, the last two columns of the
    tile to the left and the bottom-right 2×2 of the one diagonally above (added): four
    strided writes, whatever the number of tiles.

    Parameters
    ----------
    dout : array (N, C_out, Ho, Wo), any memory layout
    cache : the dict returned by ``winograd_conv2d``
    need_dx, need_dW : bool
        Skip dx (the network's first layer) or dW (a frozen weight); the skipped one is None.
    workspace : callable, optional
        The forward's buffers: dY, dM and dV go into those of Y, M and d, dU and dd into
        those of U and V (each dead by then). When the cache holds V and U, they are thus
        overwritten and set to None: a second backward after the same forward raises.

    Returns
    -------
    dx : array (N, C_in, H, W) stored channels-last, or None
    dW : array (C_out, C_in, 3, 3), C-contiguous, or None
    """
    xp = get_array_module(dout)
    m, x_shape, pads = cache["m"], cache["x_shape"], cache["pads"]
    kept_tiles = "V" in cache
    if kept_tiles and (cache["V"] is None or cache["U"] is None):
        raise RuntimeError("winograd_conv2d_backward: called a second time after one forward; "
                           "its tiles were reused for the first dx: run the forward again")
    N, C_in, H, Wd = x_shape
    C_out = dout.shape[1]
    (top, _), (left, _) = pads
    Ho, Wo, th, tw = _tiling(x_shape, pads, m)
    alpha, P, dtype = m + 2, N * th * tw, dout.dtype
    BB, GG, AA = winograd_transforms(xp, dtype, m, like=dout)

    # dY[(a, b), (n, ti, tj), o] = dout[n, o, ti·m + a, tj·m + b], zero past the output.
    dout_nhwc = dout.transpose(0, 2, 3, 1)
    if (Ho, Wo) != (th * m, tw * m):
        full = xp.zeros((N, th * m, tw * m, C_out), dtype=dtype)
        full[:, :Ho, :Wo] = dout_nhwc
        dout_nhwc = full
    dY = _buffer(xp, workspace, "winograd_Y", (m * m, P * C_out), dtype)
    dY.reshape(m, m, N, th, tw, C_out)[...] = (
        dout_nhwc.reshape(N, th, m, tw, m, C_out).transpose(2, 4, 0, 1, 3, 5))
    dM = _buffer(xp, workspace, "winograd_M", (alpha * alpha, P, C_out), dtype)
    matmul_into(AA.T, dY, dM.reshape(alpha * alpha, P * C_out))

    if kept_tiles:
        V, U = cache["V"], cache["U"]
        if workspace is not None:          # their buffers take dU and dd below
            cache["V"] = cache["U"] = None
    else:
        V = _input_transform(cache["x"], pads, m, workspace)
        U = _weight_transform(cache["W"], m, dtype, workspace)
    reuse = workspace is not None or not kept_tiles
    # The α² GEMMs' inputs in the precision policy's format (V and U are when kept; the
    # rounded copies are new arrays, so the buffers below may still take dU and dd).
    dM_g, U_g, V_g = gemm_input(dM), gemm_input(U), gemm_input(V)
    if need_dx:
        dV = _buffer(xp, workspace, "winograd_d", (alpha * alpha, P, C_in), dtype)
        matmul_into(dM_g, U_g.transpose(0, 2, 1), dV)
    dW = None
    if need_dW:
        dU = U if reuse else xp.empty_like(U)                       # U is dead after dV
        matmul_into(V_g.transpose(0, 2, 1), dM_g, dU)             # (α², C_in, C_out)
        dW9 = GG.T @ dU.reshape(alpha * alpha, C_in * C_out)        # (9, C_in·C_out)
        dW = xp.ascontiguousarray(dW9.reshape(3, 3, C_in, C_out).transpose(3, 2, 0, 1))
    if not need_dx:
        return None, dW

    dd = V if reuse else xp.empty_like(V)                           # V is dead after dU
    matmul_into(BB.T, dV.reshape(alpha * alpha, P * C_in),
                dd.reshape(alpha * alpha, P * C_in))

    # The adjoint of the gather: blocks of m×m pixels, (th + 1) × (tw + 1) of them.
    dd = dd.reshape(alpha, alpha, N, th, tw, C_in).transpose(2, 3, 0, 4, 1, 5)
    dx_p = xp.empty((N, (th + 1) * m, (tw + 1) * m, C_in), dtype=dtype)
    blocks = dx_p.reshape(N, th + 1, m, tw + 1, m, C_in)
    blocks[:, th], blocks[:, :th, :, tw] = 0, 0             # reached only by the overlaps
    blocks[:, :th, :, :tw] = dd[:, :, :m, :, :m]            # each tile's own m×m
    blocks[:, 1:, :2, :tw] += dd[:, :, m:, :, :m]           # its last two rows, to the block below
    blocks[:, :th, :, 1:, :2] += dd[:, :, :m, :, m:]        # last two columns, to the right
    blocks[:, 1:, :2, 1:, :2] += dd[:, :, m:, :, m:]        # the 2×2 corner, diagonally
    dx = dx_p[:, top:top + H, left:left + Wd]
    return dx.transpose(0, 3, 1, 2), dW


def winograd_is_faster(C_in: int, C_out: int, H: int, W: int, N: int,
                       blas_threads: int = 1) -> int | None:
    """The "auto" rule: the m of F(m×m, 3×3) that beats im2col for this layer, or None.

    For a 3×3 stride-1 convolution (``winograd_applies``) with an output of N × H × W pixels
    (H, W: the output's height and width, the input's for padding 1), computed with
    ``blas_threads`` BLAS threads (``backend.blas_threads()``; 1 in each thread-rank of
    ``run_in_threads``). The rule is measured, not derived: training steps (forward +
    backward) in float32 on NumPy with 1 and 2 BLAS threads, the tables "Winograd
    convolution" of docs/benchmarks.md (``python benchmarks/ab.py --only winograd_rule``).
    F(4×4, 3×3) was faster wherever

    - both channel counts are at least 8 (with 3 input channels, an RGB first layer, the
      transforms cost more than the few multiplies they save),
    - each BLAS thread has at least 512 output pixels, N·H·W / blas_threads ≥ 512, and at
      least 1024 for a layer of more than 2¹⁶ channel pairs C_in·C_out (256 → 512 and
      wider): the weight transform and the α² GEMM calls do not shrink with the image, so
      at 4×4 or with small batches they dominate (U, α²·C_in·C_out floats, is 19 MB at
      256 → 512 and 38 MB at 512 → 512), and each of the α² calls pays every BLAS thread's
      start and finish,
    - the 4×4 output tiles are at least three-quarters used, H·W ≥ 0.75 · 16 · ⌈H/4⌉·⌈W/4⌉
      (at 9×9, 10×10 or 13×13 a third or more of every tile is computed and cut away).

    F(2×2, 3×3) was never clearly faster where F(4×4, 3×3) was not faster still, so the rule
    never picks it (it stays available as ``m=2``, with a smaller float32 error). Measured on NumPy
    only, with 1 and 2 BLAS threads (a 2-core machine): for more threads the count per thread
    is an extrapolation; on CuPy it is the same rule until measured otherwise.
    """
    per_thread = N * H * W / max(1, blas_threads)
    if min(C_in, C_out) < 8 or per_thread < (1024 if C_in * C_out > 2 ** 16 else 512):
        return None
    m = 4
    tiles = math.ceil(H / m) * math.ceil(W / m)
    if 4 * H * W < 3 * m * m * tiles:
        return None
    return m
