"""Worked-example checks of the derivation pages activations.md, linear.md, containers.md,
normalization.md, whitening.md and the MSE section of softmax_cross_entropy.md.

Each ``check_<id>(ex)`` recomputes the block ``<!-- example: <id> -->`` with the minicnn layer
in float64 (``ex[name]`` reads an input of the block, ``ex.check(name, value)`` compares a
computed value with the printed one); tests/test_derivations.py collects them. Where a page
states a formula, the check also evaluates that formula (from the exact inputs, not from
rounded printed values), so the page's algebra is tested as well as its numbers.
"""

from __future__ import annotations

import math

import numpy as np

import minicnn as mc
from minicnn import layers as L

# -- activations.md ---------------------------------------------------------------------------


def _sigma(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def check_activations(ex) -> None:
    x, dout = ex["x"], ex["dout"]
    layers = {"relu": L.ReLU(), "leaky": L.LeakyReLU(), "sigmoid": L.Sigmoid(),
              "tanh": L.Tanh(), "silu": L.SiLU(), "gelu": L.GELU(),
              "gelu_tanh": L.GELU(approximate="tanh")}
    for name, layer in layers.items():
        ex.check(f"{name}_y", layer(x))
        ex.check(f"{name}_dx", layer.backward(dout))
    # The page's derivatives, written from the printed outputs (dout = 1 here, so dx = f'(x)).
    assert (dout == 1).all()
    ex.check("relu_dx", (x > 0).astype(float))
    ex.check("leaky_dx", np.where(x > 0, 1.0, layers["leaky"].negative_slope))
    s = _sigma(x)
    ex.check("sigmoid_y", s)
    ex.check("sigmoid_dx", s * (1 - s))
    ex.check("tanh_dx", 1 - np.tanh(x) ** 2)
    ex.check("silu_y", x * _sigma(x))
    ex.check("silu_dx", _sigma(x) * (1 + x * (1 - _sigma(x))))
    Phi = 0.5 * np.array([1 + math.erf(v / math.sqrt(2)) for v in x])
    phi = np.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi)
    ex.check("gelu_Phi", Phi)
    ex.check("gelu_phi", phi)
    ex.check("gelu_y", x * Phi)
    ex.check("gelu_dx", Phi + x * phi)
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    t = np.tanh(u)
    ex.check("gelu_tanh_t", t)
    ex.check("gelu_tanh_y", 0.5 * x * (1 + t))
    du_dx = math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x ** 2)
    ex.check("gelu_tanh_dx", 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * du_dx)


# -- linear.md --------------------------------------------------------------------------------


def check_linear(ex) -> None:
    x, W, b, dout = ex["x"], ex["W"], ex["b"], ex["dout"]
    layer = L.Linear(*W.shape)
    layer.W.data, layer.b.data = W, b
    ex.check("y", layer(x))
    ex.check("y", x @ W + b)
    dx = layer.backward(dout)
    ex.check("dx", dx)
    ex.check("dW", layer.W.grad)
    ex.check("db", layer.b.grad)
    # The page's matrix forms.
    ex.check("dx", dout @ W.T)
    ex.check("dW", x.T @ dout)
    ex.check("db", dout.sum(axis=0))


def check_flatten(ex) -> None:
    x, dout = ex["x"], ex["dout"]
    layer = L.Flatten()
    ex.check("y", layer(x))
    ex.check("dx", layer.backward(dout))
    ex.check("dx", dout.reshape(x.shape))


# -- containers.md ----------------------------------------------------------------------------


def check_sequential(ex) -> None:
    first, last = L.Linear(2, 2), L.Linear(2, 1)
    first.W.data, first.b.data = ex["W1"], ex["b1"]
    last.W.data, last.b.data = ex["W3"], ex["b3"]
    relu = L.ReLU()
    net = L.Sequential(first, relu, last)
    x, dout = ex["x"], ex["dout"]
    ex.check("y", net(x))
    dx = net.backward(dout)
    ex.check("dx", dx)
    ex.check("dW3", last.W.grad)
    ex.check("db3", last.b.grad)
    ex.check("dW1", first.W.grad)
    ex.check("db1", first.b.grad)
    # The chain, one layer at a time: x_k = f_k(x_{k-1}), then g_{k-1} = f_k.backward(g_k).
    x1 = first(x)
    ex.check("x1", x1)
    x2 = relu(x1)
    ex.check("x2", x2)
    ex.check("y", last(x2))
    g2 = last.backward(dout)
    ex.check("g2", g2)
    g1 = relu.backward(g2)
    ex.check("g1", g1)
    ex.check("dx", first.backward(g1))
    # The identity passes dout through, and is a no-op link in a chain.
    identity = L.Identity()
    assert identity(x) is x and identity.backward(dout) is dout
    with_identity = L.Sequential(first, relu, L.Identity(), last)
    with_identity(x)
    ex.check("dx", with_identity.backward(dout))


# -- normalization.md -------------------------------------------------------------------------


def _normalize_by_hand(x: np.ndarray, axes: tuple[int, ...], eps: float):
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return mu, var, (x - mu) / np.sqrt(var + eps)


def _dx_by_hand(dx_hat, x_hat, var, eps, axes):
    """The page's (and batchnorm.md's) compact form, with Σ over ``axes``."""
    m = math.prod(x_hat.shape[a] for a in axes)
    sigma = np.sqrt(var + eps)
    return (m * dx_hat - dx_hat.sum(axis=axes, keepdims=True)
            - x_hat * (dx_hat * x_hat).sum(axis=axes, keepdims=True)) / (m * sigma)


def check_layernorm(ex) -> None:
    x, gamma, beta, dout = ex["x"], ex["gamma"], ex["beta"], ex["dout"]
    layer = L.LayerNorm(x.shape[-1])
    layer.gamma.data, layer.beta.data = gamma, beta
    ex.check("y", layer(x))
    dx = layer.backward(dout)
    ex.check("dx", dx)
    ex.check("dgamma", layer.gamma.grad)
    ex.check("dbeta", layer.beta.grad)
    mu, var, x_hat = _normalize_by_hand(x, (1,), layer.eps)
    ex.check("mu", mu[:, 0])
    ex.check("var", var[:, 0])
    ex.check("x_hat", x_hat)
    ex.check("y", gamma * x_hat + beta)
    ex.check("dx_hat", dout * gamma)
    ex.check("dx", _dx_by_hand(ex["dx_hat"], x_hat, var, layer.eps, (1,)))
    ex.check("dgamma", (dout * x_hat).sum(axis=0))
    ex.check("dbeta", dout.sum(axis=0))


def check_groupnorm(ex) -> None:
    x, gamma, beta, dout = ex["x"], ex["gamma"], ex["beta"], ex["dout"]
    G = int(ex["G"])
    N, C = x.shape[:2]
    layer = L.GroupNorm(G, C)
    layer.gamma.data, layer.beta.data = gamma, beta
    ex.check("y", layer(x))
    dx = layer.backward(dout)
    ex.check("dx", dx)
    ex.check("dgamma", layer.gamma.grad)
    ex.check("dbeta", layer.beta.grad)
    # By hand: the grouped view (N, G, C/G, L), normalised over its last two axes.
    grouped = (N, G, C // G) + x.shape[2:]
    axes = tuple(range(2, len(grouped)))
    mu, var, x_hat = _normalize_by_hand(x.reshape(grouped), axes, layer.eps)
    ex.check("mu", mu.reshape(N, G))
    ex.check("var", var.reshape(N, G))
    ex.check("x_hat", x_hat.reshape(x.shape))
    g = gamma[None, :, None]
    dx_hat = (dout * g).reshape(grouped)
    ex.check("dx", _dx_by_hand(dx_hat, x_hat, var, layer.eps, axes).reshape(x.shape))


def check_instancenorm(ex) -> None:
    x, dout = ex["x"], ex["dout"]
    layer = L.InstanceNorm2d(x.shape[1])
    ex.check("y", layer(x))
    dx = layer.backward(dout)
    ex.check("dx", dx)
    mu, var, x_hat = _normalize_by_hand(x, (2, 3), layer.eps)
    ex.check("mu", mu[0, :, 0, 0])
    ex.check("var", var[0, :, 0, 0])
    ex.check("y", x_hat)
    ex.check("dx", _dx_by_hand(dout, x_hat, var, layer.eps, (2, 3)))
    # InstanceNorm2d is GroupNorm with one channel per group (G = C), gamma = 1, beta = 0.
    same = L.GroupNorm(x.shape[1], x.shape[1])
    ex.check("y", same(x))
    ex.check("dx", same.backward(dout))


# -- whitening.md -----------------------------------------------------------------------------


def check_whitening(ex) -> None:
    x, dout = ex["x"], ex["dout"]
    C = x.shape[1]
    layer = L.PatchWhitening(C, kernel_size=1, eps=float(ex["eps"]))
    layer.W.data = np.zeros(layer.W.data.shape)            # float64 filters, for the page
    layer.fit(x)
    d = C                                                  # C·K·K with K = 1
    W = layer.W.data.reshape(2 * d, d)                     # a view: flips below reach the layer
    assert np.array_equal(W[d:], -W[:d])                   # [half; -half]
    # Eigenvectors are defined up to sign (LAPACK may return either): the page prints each
    # filter pair with a positive first entry; flip the layer's the same way.
    for k in range(d):
        if W[k, np.flatnonzero(np.abs(W[k]) > 1e-12)[0]] < 0:
            W[k] *= -1
            W[k + d] *= -1
    ex.check("W", W)
    # The page's Σ, λ and V: W's first d rows are diag(λ + eps)^(-1/2) Vᵀ.
    patches = x.transpose(0, 2, 3, 1).reshape(-1, C)
    ex.check("Sigma", patches.T @ patches / len(patches))
    lam = 1.0 / (W[:d] ** 2).sum(axis=1) - float(ex["eps"])
    ex.check("lam", lam)
    ex.check("V", (W[:d] * np.sqrt(lam + float(ex["eps"]))[:, None]).T)
    ex.check("lam", np.linalg.eigvalsh(ex["Sigma"])[::-1])
    y = layer(x)
    ex.check("y", y)
    z = y[:, :d].transpose(0, 2, 3, 1).reshape(-1, d)     # the whitened patches
    ex.check("cov_z", z.T @ z / len(z))
    ex.check("cov_z", np.diag(lam / (lam + float(ex["eps"]))))
    dx = layer.backward(dout)
    ex.check("dx", dx)
    assert layer.W.grad is None                            # frozen: no dW
    # A 1×1 convolution's dx: at every pixel, W_matᵀ times dout's channel vector.
    ex.check("dx", np.einsum("kc,nkhw->nchw", W, dout))


# -- softmax_cross_entropy.md: MSELoss --------------------------------------------------------


def check_mse(ex) -> None:
    y_hat, y = ex["y_hat"], ex["y"]
    loss_fn = mc.losses.MSELoss()
    ex.check("loss", loss_fn(y_hat, y))
    dy_hat = loss_fn.backward()
    ex.check("dy_hat", dy_hat)
    M = y_hat.size
    ex.check("loss", ((y_hat - y) ** 2).sum() / M)
    ex.check("dy_hat", 2 * (y_hat - y) / M)
