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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["centering_weights", "move_positions"]


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
