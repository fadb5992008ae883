"""The math every normalization layer shares: normalise over some axes, and its backward.

BatchNorm, LayerNorm, GroupNorm and InstanceNorm all compute, over their own set of axes
("the reduced axes", m elements each)::

    mu    = (1/m) Σ x
    var   = (1/m) Σ (x - mu)²               biased: divided by m, not m - 1
    x_hat = (x - mu) / sqrt(var + eps)      = (x - mu) * inv_std

``normalize`` (or ``center``, which stops at x - mu) is that forward step,
``normalize_backward`` its closed-form gradient, ``normalize_backward_from_sums`` the same
from two sums computed elsewhere (SyncBatchNorm's, over all ranks), and
``normalize_backward_centered`` the same from x - mu (BatchNorm's). ``reduce_sum`` is the one
reduction they use: a single pass over memory, in any layout (a channels-last view included),
so the layers never copy their input first. Their full-size results keep the input's memory
layout: each is written into ``empty_as(x)`` (NumPy's ufuncs would keep it anyway, CuPy's
allocate C-ordered), and ``scale_shift`` is the affine step y = x_hat * gamma + beta written
the same way; so a channels-last input stays channels-last on both backends.

The backward helpers return ``dx, Σ dx_hat·x_hat, Σ dx_hat``: with dx_hat = dout (gamma
folded into the scale) the two sums are dgamma and dbeta, in the order of the parameters.

The step-by-step chain rule these closed forms come from, and the twins the tests compare
them with, are ``minicnn.functional.reference``'s ``batchnorm_forward`` and
``batchnorm_backward_stepwise``. The derivation: docs/derivations/batchnorm.md.

BatchNorm's whole step is ``batch_norm_forward`` / ``batch_norm_backward`` (with an optional
fused ReLU): the code above on NumPy, and on CuPy the fused kernels of
``minicnn.kernels.batchnorm`` (3 launches forward in training, 1 in evaluation, 2 backward,
where the array code takes about 33).

The layers: ``minicnn.layers.batchnorm`` (BatchNorm1d/2d), ``minicnn.layers.sync_batchnorm``
(SyncBatchNorm2d) and ``minicnn.layers.norm`` (LayerNorm, GroupNorm, InstanceNorm2d).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ..backend import get_array_module
from ..kernels import batchnorm as bn_kernels
from ..kernels import uses_kernels

__all__ = ["empty_as", "reduce_sum", "center", "normalize", "normalize_backward",
           "normalize_backward_from_sums", "normalize_backward_centered", "per_channel",
           "scale_shift", "BatchNormCache", "batch_norm_forward", "batch_norm_backward",
           "update_running_stats"]


def empty_as(x: Any, *operands: Any) -> Any:
    """An uninitialised array of x's shape and memory layout, in the dtype that x combined with
    ``operands`` gives (``x - mu``'s dtype): the ``out=`` of an element-wise step on x.

    NumPy's ufuncs already write in the input's memory order, but CuPy's allocate C-ordered
    in the logical shape, so ``x - mu`` on a channels-last x would come back NCHW there and
    every later pass would read it with stride C. ``empty_like`` keeps the layout on both
    (order 'K'), also for the grouped (N, G, C/G, H, W) view of a channels-last x.
    """
    xp = get_array_module(x)
    return xp.empty_like(x, dtype=xp.result_type(x, *operands))


def reduce_sum(x: Any, axes: tuple[int, ...], other: Any = None) -> Any:
    """Σ x (or Σ x * other, without forming that product) over ``axes``, kept with size 1.

    Equals ``(x * other).sum(axis=axes, keepdims=True)``. ``einsum`` multiplies and adds in a
    single pass over the data, in whatever order the memory is laid out (a channels-last view
    included), where that expression first writes the full-size product (measured faster,
    see docs/benchmarks.md).

    Accuracy: a float32 sum is pairwise (error ~ log n) only along the innermost memory axis.
    For BatchNorm on channels-last data that axis is the channel one, so each channel would
    be one running sum over N*H*W numbers (relative error ~1e-5 for 64K of them). When
    several axes are reduced, the first one (the batch) is therefore kept in the einsum
    output: per-sample partial sums, added up afterwards in a second, small sum.
    """
    xp = get_array_module(x)
    letters = "abcdefghijklmnopqrstuvwxyz"[:x.ndim]
    # The first reduced axis, reduced in a second step; the axes before it are all kept, so
    # it has the same position in the einsum output as in x.
    partial = min(axes) if len(axes) > 1 else None
    kept = "".join(c for i, c in enumerate(letters) if i not in axes or i == partial)
    spec = letters if other is None else f"{letters},{letters}"
    operands = (x,) if other is None else (x, other)
    s = xp.einsum(f"{spec}->{kept}", *operands)
    if partial is not None:
        s = s.sum(axis=partial)
    shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
    return s.reshape(shape)


def center(x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any, Any, Any]:
    """The statistics of ``x`` over ``axes``, and x centred: x - mu.

    Returns ``x - mu, inv_std, mu, var``; the last three keep the reduced axes (size 1), so
    they broadcast against ``x``. ``inv_std = 1 / sqrt(var + eps)``; ``var`` is biased, and
    computed in two passes (from x - mu, not as E[x²] - mu², which cancels catastrophically
    in float32 when |mu| >> std). One full-size array is written: x - mu, in x's memory layout
    (``empty_as``). Steps (1) to (4) of ``reference.batchnorm_forward``, over any axes.
    """
    xp = get_array_module(x)
    m = math.prod(x.shape[a] for a in axes)
    mu = reduce_sum(x, axes) * (1.0 / m)
    x_c = xp.subtract(x, mu, out=empty_as(x, mu))      # x - mu, in x's memory layout
    var = reduce_sum(x_c, axes, x_c) * (1.0 / m)
    inv_std = 1.0 / xp.sqrt(var + eps)
    return x_c, inv_std, mu, var


def normalize(x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any, Any, Any]:
    """Normalise ``x`` over ``axes``: x_hat = (x - mu) / sqrt(var + eps).

    Returns ``x_hat, inv_std, mu, var`` (as ``center``, with x - mu scaled in place to x_hat:
    one full-size array written). Steps (1) to (5) of ``reference.batchnorm_forward``, over
    any axes.
    """
    x_hat, inv_std, mu, var = center(x, axes, eps)
    x_hat *= inv_std                                      # in place: saves a full-size array
    return x_hat, inv_std, mu, var


def normalize_backward(dx_hat: Any, x_hat: Any, scale: Any,
                       axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """dL/dx of ``x_hat = (x - mu) * inv_std`` with mu, var taken over ``axes`` (closed form).

    With m the number of reduced elements and the sums Σ over ``axes``
    (derivation: docs/derivations/batchnorm.md)::

        dx = (inv_std / m) * (m * dx_hat - Σ dx_hat - x_hat * Σ (dx_hat * x_hat))
           = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))

    For BatchNorm's axes (all but the channel axis 1), with dx_hat = dout and
    scale = gamma * inv_std, it equals ``reference.batchnorm_backward_stepwise`` (dx, dgamma,
    dbeta).

    Parameters
    ----------
    dx_hat : array, shape of x
        dL/dx_hat. Usually ``dout * gamma``. When gamma is constant over the reduced axes
        (BatchNorm, InstanceNorm) pass ``dout`` itself and fold gamma into ``scale``: it
        factors out of the bracket, and the two sums are then exactly dgamma and dbeta.
    x_hat : array, shape of x
        The normalised input cached by forward.
    scale : array, broadcastable to x
        ``inv_std`` (or ``gamma * inv_std``, see above).
    axes : tuple of int
        The reduced axes.

    Returns
    -------
    dx : array, shape of x
    sum_dx_hat_x_hat, sum_dx_hat : arrays with the reduced axes kept (size 1)
        Σ dx_hat * x_hat and Σ dx_hat, returned so callers can reuse them for dgamma, dbeta.
    """
    m = math.prod(x_hat.shape[a] for a in axes)
    sum_dx_hat = reduce_sum(dx_hat, axes)
    sum_dx_hat_x_hat = reduce_sum(dx_hat, axes, x_hat)
    dx = normalize_backward_from_sums(dx_hat, x_hat, scale, sum_dx_hat_x_hat, sum_dx_hat, m)
    return dx, sum_dx_hat_x_hat, sum_dx_hat


def normalize_backward_from_sums(dx_hat: Any, x_hat: Any, scale: Any, sum_dx_hat_x_hat: Any,
                                 sum_dx_hat: Any, m: float) -> Any:
    """``normalize_backward``'s dx from its two sums, given::

        dx = scale * (dx_hat - x_hat * Σ (dx_hat * x_hat) / m - Σ dx_hat / m)

    The sums may come from elsewhere: ``SyncBatchNorm2d`` adds them up over all ranks (and m
    over all ranks' elements) first. The 1/m lands on the small reduced arrays, not on
    full-size ones; one full-size array is written, in x_hat's memory layout.

    Parameters
    ----------
    dx_hat, x_hat : arrays, shape of x
    scale : array, broadcastable to x (``inv_std`` or ``gamma * inv_std``)
    sum_dx_hat_x_hat, sum_dx_hat : arrays broadcastable to x (the reduced axes of size 1)
    m : number of elements each sum ran over
    """
    xp = get_array_module(x_hat)
    coef = sum_dx_hat_x_hat * (-1.0 / m)
    dx = xp.multiply(x_hat, coef, out=empty_as(x_hat, coef))   # in x_hat's memory layout
    dx += dx_hat
    dx -= sum_dx_hat * (1.0 / m)
    dx *= scale
    return dx


def normalize_backward_centered(dout: Any, x_c: Any, inv_std: Any, scale: Any,
                                axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """``normalize_backward`` from the centred input x_c = x - mu instead of x_hat.

    BatchNorm's training forward needs only y = x_c * (gamma * inv_std) + beta, so it keeps
    x_c and never writes x_hat = x_c * inv_std (one full-size pass fewer). With
    x_hat = x_c * inv_std the sums and dx of ``normalize_backward`` become::

        Σ dout * x_hat = inv_std * Σ dout * x_c
        dx = scale * (dout - mean(dout) - x_c * inv_std² * mean(dout * x_c))

    the same number of passes over the data as from x_hat. ``dout`` plays the role of
    ``dx_hat`` with gamma folded into ``scale`` (see ``normalize_backward``). For
    BatchNorm's axes and scale = gamma * inv_std it equals
    ``reference.batchnorm_backward_stepwise`` (dx, dgamma, dbeta).

    Returns
    -------
    dx : array, shape of x
    sum_dout_x_hat, sum_dout : arrays with the reduced axes kept (size 1)
        Σ dout * x_hat and Σ dout: dgamma and dbeta of a BatchNorm.
    """
    m = math.prod(x_c.shape[a] for a in axes)
    sum_dout = reduce_sum(dout, axes)
    sum_dout_x_hat = reduce_sum(dout, axes, x_c) * inv_std
    # x_hat * Σ dout·x_hat = x_c * (inv_std * Σ dout·x_hat): x_c in the place of x_hat.
    dx = normalize_backward_from_sums(dout, x_c, scale, sum_dout_x_hat * inv_std, sum_dout, m)
    return dx, sum_dout_x_hat, sum_dout


def per_channel(v: Any, ndim: int) -> Any:
    """Reshape a (C,) vector to (1, C, 1, ...) so it broadcasts over an ndim-array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def scale_shift(x_hat: Any, gamma: Any, beta: Any) -> Any:
    """The affine step y = x_hat * gamma + beta, written in x_hat's memory layout.

    ``gamma``, ``beta`` broadcast against x_hat (``per_channel`` vectors, or the trailing
    shape of a LayerNorm). Two passes, as ``x_hat * gamma + beta`` in place; the output is
    allocated like x_hat (``empty_as``), so a channels-last x_hat gives a channels-last y on
    CuPy too.
    """
    xp = get_array_module(x_hat)
    y = xp.multiply(x_hat, gamma, out=empty_as(x_hat, gamma))
    y += beta
    return y


# -- BatchNorm's step: statistics, normalisation, running averages, optional ReLU -------------

class BatchNormCache(NamedTuple):
    """What ``batch_norm_forward`` leaves for ``batch_norm_backward``.

    NumPy keeps x - mu (training) and never writes x_hat; the CuPy kernels keep a reference
    to x and recompute x_hat = (x - mu) * inv_std on the fly (no full-size array written).
    """

    batch_stats: bool  # True: normalised by this batch's own mu, var (training mode)
    inv_std: Any       # 1 / sqrt(var + eps), (1, C, 1, ...)
    mu: Any            # the mean used, (1, C, 1, ...); None where x_c holds it
    x: Any             # the input, or None where x_c is kept
    x_c: Any           # NumPy, training: the centred input x - mu (x_hat = x_c * inv_std)
    y: Any             # a fused ReLU's output (its mask y > 0), else None


def update_running_stats(running_mean: Any, running_var: Any, mu: Any, var: Any, m: int,
                         momentum: float) -> tuple[Any, Any]:
    """PyTorch's running averages, with the unbiased variance var * m / (m - 1)::

        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)

    ``mu``, ``var``: the batch's statistics, any shape of C elements. Returns new (C,)
    arrays in the running buffers' dtype (not in place: a caller holding the old buffers
    keeps them intact).
    """
    C = running_mean.shape[0]
    mu = mu.reshape(C).astype(running_mean.dtype, copy=False)
    unbiased_var = (var.reshape(C) * (m / (m - 1))).astype(running_var.dtype, copy=False)
    return ((1.0 - momentum) * running_mean + momentum * mu,
            (1.0 - momentum) * running_var + momentum * unbiased_var)


def batch_norm_forward(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any, *,
                       training: bool, momentum: float, eps: float, relu: bool = False
                       ) -> tuple[Any, BatchNormCache, Any, Any]:
    """BatchNorm over all axes of ``x`` but the channel axis 1, optionally followed by ReLU::

        y = gamma * (x - mu) / sqrt(var + eps) + beta        (then y = max(y, 0) if relu)

    Training: mu, var (biased) of this batch, and the running averages updated
    (``update_running_stats``). Evaluation: mu, var = the running ones, left as they are.

    Parameters
    ----------
    x : array (N, C) or (N, C, *spatial), any memory layout (kept in y)
    gamma, beta : arrays (C,), in x's dtype
    running_mean, running_var : arrays (C,)
    training : bool
    momentum, eps : float
    relu : bool
        Fuse the ReLU that follows (one pass fewer; ``batch_norm_backward`` then applies its
        mask to dout first).

    Returns
    -------
    y : array, shape and layout of x
    cache : BatchNormCache, for ``batch_norm_backward``
    running_mean, running_var : the new running averages (training), or the given ones
    """
    if uses_kernels(x):
        return _batch_norm_forward_kernels(x, gamma, beta, running_mean, running_var,
                                           training, momentum, eps, relu)
    xp = get_array_module(x)
    axes = (0,) + tuple(range(2, x.ndim))      # all but the channel axis
    gamma, beta = per_channel(gamma, x.ndim), per_channel(beta, x.ndim)
    if training:
        # y = x_hat * gamma + beta = (x - mu) * (gamma * inv_std) + beta: x_hat itself is
        # never written (backward works from x - mu), one full-size pass fewer.
        x_c, inv_std, mu, var = center(x, axes, eps)
        running_mean, running_var = update_running_stats(
            running_mean, running_var, mu, var, x.size // x.shape[1], momentum)
        y = x_c * (gamma * inv_std)
        y += beta
        cache = BatchNormCache(True, inv_std, None, None, x_c, None)
    else:
        # Fixed statistics: y = (x - mu) * (gamma * inv_std) + beta, one affine map per
        # channel, in three passes over the data instead of the four through x_hat. Only
        # backward needs x_hat (for dgamma), so it keeps x and mu to recompute it.
        mu = per_channel(running_mean.astype(x.dtype, copy=False), x.ndim)
        var = per_channel(running_var.astype(x.dtype, copy=False), x.ndim)
        inv_std = 1.0 / xp.sqrt(var + eps)
        y = x - mu
        y *= gamma * inv_std
        y += beta
        cache = BatchNormCache(False, inv_std, mu, x, None, None)
    if relu:
        xp.maximum(y, 0, out=y)
        cache = cache._replace(y=y)
    return y, cache, running_mean, running_var


def _batch_norm_forward_kernels(x: Any, gamma: Any, beta: Any, running_mean: Any,
                                running_var: Any, training: bool, momentum: float, eps: float,
                                relu: bool) -> tuple[Any, BatchNormCache, Any, Any]:
    """``batch_norm_forward`` on CuPy: 3 launches (training) or 1 (evaluation)."""
    if training:
        y, mu, inv_std, running_mean, running_var = bn_kernels.forward_train(
            x, gamma, beta, running_mean, running_var, momentum, eps, relu)
    else:
        y, mu, inv_std = bn_kernels.forward_eval(x, gamma, beta, running_mean, running_var,
                                                 eps, relu)
    cache = BatchNormCache(training, per_channel(inv_std, x.ndim), per_channel(mu, x.ndim), x,
                           None, y if relu else None)
    return y, cache, running_mean, running_var


def batch_norm_backward(dout: Any, cache: BatchNormCache, gamma: Any,
                        need_dgamma: bool = True, out: tuple[Any, Any] = (None, None)
                        ) -> tuple[Any, Any, Any]:
    """dL/dx, dL/dgamma, dL/dbeta of ``batch_norm_forward``, from its cache.

    With g = dout (or dout * [y > 0] after a fused ReLU) and Σ over the m elements of a
    channel (docs/derivations/batchnorm.md)::

        dgamma = Σ g * x_hat,   dbeta = Σ g
        batch statistics:    dx = (gamma * inv_std) * (g - dbeta / m - x_hat * dgamma / m)
        running statistics:  dx = (gamma * inv_std) * g       (y is an affine map of x)

    On NumPy the batch-statistics case is ``normalize_backward_centered`` from the kept
    x - mu. ``gamma``: (C,) in the forward's dtype. ``need_dgamma`` False (a frozen gamma):
    dgamma is returned as None (and NumPy's evaluation mode skips x_hat). ``out``: (C,)
    arrays (or None) the CuPy kernel writes dgamma and dbeta into (``Parameter.grad_out``:
    the optimizer's flat gradient buffer, so no copy follows); NumPy ignores it.

    Returns
    -------
    dx : array, shape of dout (in x's layout on CuPy)
    dgamma, dbeta : arrays (C,) (dgamma None when not needed)
    """
    C = gamma.shape[0]
    if uses_kernels(dout):
        dx, dgamma, dbeta = bn_kernels.backward(dout, cache.x, cache.y, cache.mu.reshape(C),
                                                cache.inv_std.reshape(C), gamma,
                                                cache.batch_stats, *out)
        return dx, (dgamma if need_dgamma else None), dbeta
    inv_std = cache.inv_std
    axes = (0,) + tuple(range(2, dout.ndim))
    gamma = per_channel(gamma, dout.ndim)
    if cache.y is not None:
        dout = dout * (cache.y > 0)             # the fused ReLU's backward (a new array)
    if cache.batch_stats:
        # gamma is constant over the reduced axes: pass dout and fold gamma into the scale;
        # the two sums come back as dgamma = Σ dout * x_hat and dbeta = Σ dout.
        dx, dgamma, dbeta = normalize_backward_centered(dout, cache.x_c, inv_std,
                                                        gamma * inv_std, axes)
    else:
        # Fixed statistics: y is an affine map of x. dx in x's memory layout, as above.
        scale = gamma * inv_std
        dx = get_array_module(dout).multiply(dout, scale, out=empty_as(cache.x, dout, scale))
        dgamma = None
        if need_dgamma:                          # a frozen gamma needs no x_hat
            x_hat = cache.x - cache.mu
            x_hat *= inv_std
            dgamma = reduce_sum(dout, axes, x_hat)             # Σ dout * x_hat
        dbeta = reduce_sum(dout, axes)                         # Σ dout
    return dx, (dgamma.reshape(C) if need_dgamma else None), dbeta.reshape(C)
