"""Choosing how to parameterize each hierarchical node: ``reparam="auto"``.

A hierarchical location-scale node ``theta_i ~ F(loc, scale)`` can be sampled centered
(``theta`` itself), non-centered (``z = (theta - loc) / scale``) or partially centered with
a weight ``w_i`` in [0, 1] per element (:mod:`hbm.model` gives the exact change of
variables; Gorinova, Moore & Hoffman 2020, "Automatic Reparameterisation of Probabilistic
Programs", ICML). Which is best depends on how strongly each element is identified by its
own data: where the likelihood dominates, the centered form is nearly independent of the
scale; where the prior dominates, the non-centered one is (Papaspiliopoulos, Roberts &
Skold 2007, "A general framework for the parametrization of hierarchical models").

For a normal node with normal data, ``theta_i | loc, scale, y ~ N(., scale^2 (1 - k_i))``
with the shrinkage factor ``k_i = scale^2 / (scale^2 + s_i^2)``, ``s_i`` the standard error
of the group's data; the non-centered coordinate then has posterior variance
``Var(z_i | loc, scale, y) = 1 - k_i``, and the weight that decorrelates the partially
centered coordinate from the scale is ``w_i = k_i`` (Gorinova et al. 2020, section 3,
the conjugate case). hbm estimates it during warmup: it warms up non-centered, takes the
within-chain variance of each ``z_i`` over the second half of that first phase (the
within-chain variance, averaged over chains, estimates the conditional variance better than
the pooled one when the hyperparameters still move) and sets

    w_i = clip(1 - Var(z_i), 0, 1) ** 2,

then restarts the step size and metric adaptation in the chosen parameterization. Elements
with w near 1 are effectively centered, near 0 non-centered. The square is a conservative
correction: an element whose estimate ``1 - Var(z_i)`` is moderate is kept close to
non-centered, because a partially centered element still has a (milder) funnel when the
scale approaches zero, which is where divergences come from; on eight schools the linear
rule gave up to 2% divergent transitions, the squared one below 0.2%, with the same ESS per
gradient on radon (``benchmarks/reparam.py``); the output is always in the
model's own (centered) parameters. The choice is a deterministic function of the warmup
draws, hence of the seed.

Multivariate normal nodes
-------------------------
A node ``theta_j ~ MultivariateNormal(loc_j, scale_tril=L_j)`` (one row ``j`` per batch
element, event size ``K``; typically correlated group effects whose ``L_j = diag(sigma)
L_corr`` depends on other parameters) is reparameterized the same way, through the
sequential form of the multivariate normal that its Cholesky factor gives: with
``z_j = L_j^{-1} (theta_j - loc_j)`` standard normal and ``d_jk = L_j[k, k]``,

    theta_jk = m_jk + d_jk z_jk,    m_jk = loc_jk + sum_{l<k} L_j[k, l] z_jl,

so ``theta_jk`` given the earlier components of its row is a univariate location-scale
variable with location ``m_jk`` and scale ``d_jk``. hbm partially centers each element of
that chain with its own weight ``w_jk``, exactly as it does a univariate node:

    x_jk = w_jk m_jk + d_jk**w_jk z_jk,   i.e.   x_j = w_j * loc_j + L_w z_j,
    L_w = diag(w_j) (L_j - diag(d_j)) + diag(d_j**w_j),

a lower-triangular map with positive diagonal, so ``x -> z -> theta`` is a bijection and
the change of variables is exact: ``log p(x) = sum_k log N(z_jk; 0, 1) - sum_k w_jk log
d_jk`` (:func:`mvn_from_coordinates`); the log-Jacobian of ``x -> theta`` is ``sum_k (1 -
w_jk) log d_jk``. ``w = 1`` is the centered node (``x = theta``, ``L_w = L``), ``w = 0``
the non-centered one (``x = z``, ``theta = loc + L z``, log-Jacobian ``sum_k log L_kk``
per row). Because each element is a univariate location-scale step, the warmup rule
above applies unchanged: the variance of the non-centered ``z_jk`` estimates how
strongly that element is identified by its own data given the earlier ones
(Papaspiliopoulos, Roberts & Skold 2007; Gorinova, Moore & Hoffman 2020, whose
partially centered family this extends from scalars to the Cholesky chain), and
``w_jk = clip(1 - Var(z_jk), 0, 1)**2``. This per-element weight generalizes a per-row
or per-node choice: a row whose elements are all well identified gets weights near 1
(centered), one with little data near 0 (non-centered); on radon's varying intercept
and slope the intercepts of counties with many homes are centered while their floor
slopes (few first-floor readings) stay near non-centered.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["centering_weights", "move_positions", "mvn_from_coordinates",
           "mvn_to_coordinates", "node_scale"]


def centering_weights(bound, positions, burn: int) -> dict:
    """Centering weight per element of every hierarchical node.

    Parameters
    ----------
    bound : BoundModel
        The model bound with every hierarchical node non-centered (weights 0).
    positions : array (chains, iterations, dim)
        Flat unconstrained warmup draws in that parameterization.
    burn : int
        Iterations to drop from the start.

    Returns
    -------
    dict node name -> weights array of the node's shape.
    """
    xs = np.asarray(positions)[:, burn:]
    weights = {}
    for node in bound.nodes:
        if not node.locscale:
            continue
        z = xs[..., node.offset:node.offset + node.size]
        var = np.var(z, axis=1, ddof=1).mean(axis=0)  # within-chain, averaged over chains
        w = np.clip(1.0 - var, 0.0, 1.0) ** 2
        weights[node.name] = jnp.asarray(w.reshape(node.shape), dtype=jnp.result_type(float))
    return weights


def move_positions(bound, xs, old_reparam, new_weights):
    """Map flat positions (chains, dim) from the parameterization ``old_reparam`` (as
    given to :meth:`hbm.Model.bind`) to the one with centering weights ``new_weights``,
    through the model's own parameters."""
    key = ("move_positions", bound.signature)
    cache = bound.model._bind_cache
    if key not in cache:
        old = bound.model.bind(bound.data, reparam=old_reparam)

        def move(x, data, old_weights, weights):
            params = old.constrain(x, data, old_weights, deterministic=False)
            return bound.unconstrain(params, data, weights)

        cache[key] = (old.weights, jax.jit(jax.vmap(move, in_axes=(0, None, None, None))))
    old_weights, move = cache[key]
    return move(jnp.asarray(xs), bound.data, old_weights, new_weights)


# ------------------------------------------------------------------ multivariate normal
#: Event sizes up to this are solved by unrolled forward substitution (no LAPACK call,
#: which keeps sharded chains available on CPU; see hbm.inference.chains).
_UNROLL_MAX = 16
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _broadcast_mvn(x, loc, tril, weights):
    """``x`` and ``loc`` (..., K), ``tril`` (..., K, K), ``weights`` (..., K) broadcast to
    one batch shape."""
    k = tril.shape[-1]
    weights = jnp.asarray(weights, dtype=jnp.result_type(x, float))
    batch = jnp.broadcast_shapes(jnp.shape(x)[:-1], jnp.shape(loc)[:-1], tril.shape[:-2],
                                 weights.shape[:-1] if weights.ndim else ())
    return (jnp.broadcast_to(x, batch + (k,)), jnp.broadcast_to(loc, batch + (k,)),
            jnp.broadcast_to(tril, batch + (k, k)), jnp.broadcast_to(weights, batch + (k,)))


def _partial_tril(tril, w, log_d):
    """``L_w = diag(w) (L - diag(d)) + diag(d**w)``."""
    eye = jnp.eye(tril.shape[-1], dtype=tril.dtype)
    return w[..., :, None] * (tril * (1 - eye)) + eye * jnp.exp(w * log_d)[..., None]


def mvn_from_coordinates(x, loc, tril, weights):
    """Sampled coordinates ``x`` -> (``theta``, log density of ``x``) of a partially
    centered multivariate normal node (see the module docstring).

    Parameters
    ----------
    x : array (..., K)
        The sampled coordinates.
    loc : array (..., K)
        The node's location.
    tril : array (..., K, K)
        The lower Cholesky factor of its covariance (positive diagonal).
    weights : float or array (..., K)
        Centering weights in [0, 1]: 1 centered, 0 non-centered.

    Returns
    -------
    theta : array (..., K)
        The model's own value, ``loc + tril @ z``.
    log_density : array (...)
        ``sum_k [log N(z_k; 0, 1) - w_k log tril[k, k]]`` per row.
    """
    x, loc, tril, w = _broadcast_mvn(x, loc, tril, weights)
    k = tril.shape[-1]
    log_d = jnp.log(jnp.diagonal(tril, axis1=-2, axis2=-1))
    if k <= _UNROLL_MAX:
        zs, thetas = [], []
        for i in range(k):  # forward substitution along the sequential form
            m = loc[..., i]
            for j in range(i):
                m = m + tril[..., i, j] * zs[j]
            z = (x[..., i] - w[..., i] * m) * jnp.exp(-w[..., i] * log_d[..., i])
            zs.append(z)
            thetas.append(m + tril[..., i, i] * z)
        z, theta = jnp.stack(zs, -1), jnp.stack(thetas, -1)
    else:
        from jax.scipy.linalg import solve_triangular

        z = solve_triangular(_partial_tril(tril, w, log_d), (x - w * loc)[..., None],
                             lower=True)[..., 0]
        theta = loc + jnp.einsum("...ij,...j->...i", tril, z)
    log_density = jnp.sum(-0.5 * z**2 - _HALF_LOG_2PI - w * log_d, axis=-1)
    return theta, log_density


def mvn_to_coordinates(theta, loc, tril, weights):
    """The inverse of :func:`mvn_from_coordinates`: the model's value ``theta`` -> the
    sampled coordinates ``x = w * loc + L_w z`` with ``z = tril^{-1} (theta - loc)``."""
    theta, loc, tril, w = _broadcast_mvn(theta, loc, tril, weights)
    k = tril.shape[-1]
    log_d = jnp.log(jnp.diagonal(tril, axis1=-2, axis2=-1))
    if k <= _UNROLL_MAX:
        zs, xs = [], []
        for i in range(k):
            m = loc[..., i]
            for j in range(i):
                m = m + tril[..., i, j] * zs[j]
            z = (theta[..., i] - m) / tril[..., i, i]
            zs.append(z)
            xs.append(w[..., i] * m + jnp.exp(w[..., i] * log_d[..., i]) * z)
        return jnp.stack(xs, -1)
    from jax.scipy.linalg import solve_triangular

    z = solve_triangular(tril, (theta - loc)[..., None], lower=True)[..., 0]
    return w * loc + jnp.einsum("...ij,...j->...i", _partial_tril(tril, w, log_d), z)


def node_scale(d):
    """The elementwise scale of a hierarchical node's distribution ``d``: the ``scale`` of
    a univariate location-scale family, the marginal standard deviations
    ``sqrt(diag(L L^T))`` of a multivariate normal, else ``None``."""
    from hbm.dist.multivariate import MultivariateNormal

    if isinstance(d, MultivariateNormal):
        return jnp.sqrt(jnp.sum(d.scale_tril**2, axis=-1))
    std = d.standardized()
    return None if std is None else std.scale
