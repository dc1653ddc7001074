"""A slow, recursive multinomial NUTS transition, used only to test the iterative tree.

This follows the recursive formulation of Stan's ``base_nuts::build_tree`` (Hoffman &
Gelman 2014; Betancourt 2017, appendix A): a subtree of depth ``j`` is the subtree of
depth ``j - 1`` built first followed by the one built from its end, each checked for a
U-turn, plus Stan's two extra checks across the halves. It runs eagerly in Python
(no ``jit`` of the tree, no ``lax`` control flow) and keeps its bookkeeping in NumPy.

It consumes random numbers exactly like :mod:`hbm.samplers.trajectory`: the momentum and
tree keys are ``split(key)``; doubling ``j`` uses :func:`~hbm.samplers.threefry.depth_keys`;
leaf ``i`` of the new subtree draws its progressive-sampling uniform from
``fold_in(leaf_key, i)``. The within-subtree sampling is threaded through the recursion as
a running proposal, which draws from the same multinomial distribution as Stan's pairwise
merges. Given the same inputs both implementations therefore return the same point.
The leapfrog step itself is the shared :func:`~hbm.samplers.integrators.velocity_verlet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hbm.samplers.integrators import IntegratorState, velocity_verlet
from hbm.samplers.metrics import gaussian_euclidean
from hbm.samplers.nuts import HMCState, NUTSInfo
from hbm.samplers.threefry import depth_keys, direction_from_key
from hbm.samplers.trajectory import leaf_energy

__all__ = ["reference_kernel"]


@partial(jax.jit, static_argnums=0)
def _leaf(logdensity_fn, state, signed_step_size, inverse_mass_matrix):
    metric = gaussian_euclidean(inverse_mass_matrix)
    step = velocity_verlet(logdensity_fn, metric.kinetic_energy, metric.velocity)
    new_state = step(state, signed_step_size)
    velocity, energy = leaf_energy(new_state, metric)
    return new_state, velocity, energy


@partial(jax.jit, static_argnums=1)
def _leaf_uniforms(leaf_key, num_leaves):
    # the uniform of leaf i is uniform(fold_in(leaf_key, i)), as in the iterative tree;
    # drawn for all leaves at once only to save Python overhead
    indices = jnp.arange(num_leaves, dtype=jnp.int32)
    return jax.vmap(
        lambda i: jax.random.uniform(jax.random.fold_in(leaf_key, i), dtype=jnp.float64)
    )(indices)


@jax.jit
def _depth_randomness(tree_key, depth):
    direction_key, leaf_key, merge_key = depth_keys(tree_key, depth)
    go_right = direction_from_key(direction_key)
    return go_right, leaf_key, jax.random.uniform(merge_key, dtype=jnp.float64)


@dataclass
class _End:
    state: Any  # IntegratorState of jax arrays (fed back to the jitted step)
    momentum: np.ndarray
    velocity: np.ndarray


@dataclass
class _Subtree:
    valid: bool
    begin: _End | None = None
    end: _End | None = None
    momentum_sum: np.ndarray | None = None


@dataclass
class _SubtreeSampler:
    """Running totals of the subtree being built (threaded through the recursion)."""

    leaf_uniforms: np.ndarray
    num_leaves: int = 0
    proposal: Any = None
    proposal_energy: float = 0.0
    log_weight: float = -np.inf
    sum_acceptance: float = 0.0
    sum_symmetric_acceptance: float = 0.0
    is_divergent: bool = False
    is_turning: bool = False


def _turning(velocity_left, velocity_right, momentum_sum) -> bool:
    return not (velocity_left @ momentum_sum > 0 and velocity_right @ momentum_sum > 0)


def reference_kernel(
    key,
    state: HMCState,
    logdensity_fn,
    step_size,
    inverse_mass_matrix,
    *,
    max_tree_depth: int = 10,
    divergence_threshold: float = 1000.0,
):
    """One NUTS transition computed recursively; same contract as the iterative kernel.

    Returns
    -------
    (HMCState, NUTSInfo)
    """
    inverse_mass_matrix = jnp.asarray(inverse_mass_matrix)
    metric = gaussian_euclidean(inverse_mass_matrix)
    momentum_key, tree_key = jax.random.split(key)
    momentum0 = metric.sample_momentum(momentum_key, state.position)
    initial_state = IntegratorState(
        state.position, momentum0, state.logdensity, state.logdensity_grad
    )
    velocity0, energy0 = leaf_energy(initial_state, metric)
    initial_energy = float(energy0)
    step_size = float(step_size)

    def make_end(integrator_state, velocity):
        return _End(integrator_state, np.asarray(integrator_state.momentum), np.asarray(velocity))

    def build_tree(start: _End, direction: float, depth: int, sampler: _SubtreeSampler):
        if depth == 0:
            new_state, velocity, energy = _leaf(
                logdensity_fn, start.state, direction * step_size, inverse_mass_matrix
            )
            energy = float(energy)
            log_weight_leaf = initial_energy - energy
            sampler.sum_acceptance += 1.0 if log_weight_leaf > 0 else float(np.exp(log_weight_leaf))
            decay = float(np.exp(-abs(log_weight_leaf)))  # 2 / (1 + e^|d|), no overflow
            sampler.sum_symmetric_acceptance += 2.0 * decay / (1.0 + decay)
            index = sampler.num_leaves
            sampler.num_leaves += 1
            if index == 0:
                sampler.log_weight = log_weight_leaf
                sampler.proposal, sampler.proposal_energy = new_state, energy
            else:
                sampler.log_weight = float(np.logaddexp(sampler.log_weight, log_weight_leaf))
                if sampler.leaf_uniforms[index] < np.exp(log_weight_leaf - sampler.log_weight):
                    sampler.proposal, sampler.proposal_energy = new_state, energy
            if energy - initial_energy > divergence_threshold:
                sampler.is_divergent = True
                return _Subtree(False)
            end = make_end(new_state, velocity)
            return _Subtree(True, end, end, end.momentum)

        first = build_tree(start, direction, depth - 1, sampler)
        if not first.valid:
            return first
        second = build_tree(first.end, direction, depth - 1, sampler)
        if not second.valid:
            return second
        momentum_sum = first.momentum_sum + second.momentum_sum
        turning = (
            _turning(first.begin.velocity, second.end.velocity, momentum_sum)
            or _turning(
                first.begin.velocity,
                second.begin.velocity,
                first.momentum_sum + second.begin.momentum,
            )
            or _turning(
                first.end.velocity,
                second.end.velocity,
                second.momentum_sum + first.end.momentum,
            )
        )
        if turning:
            sampler.is_turning = True
            return _Subtree(False)
        return _Subtree(True, first.begin, second.end, momentum_sum)

    origin = make_end(initial_state, velocity0)
    left = right = origin
    momentum_sum = origin.momentum
    proposal, proposal_energy = initial_state, initial_energy
    log_weight = 0.0
    depth = num_steps = 0
    sum_acceptance = sum_symmetric_acceptance = 0.0
    is_divergent = is_turning = False
    while depth < max_tree_depth:
        go_right, leaf_key, merge_uniform = _depth_randomness(tree_key, depth)
        go_right = bool(go_right)
        start, far_old = (right, left) if go_right else (left, right)
        sampler = _SubtreeSampler(np.asarray(_leaf_uniforms(leaf_key, 2**depth)))
        subtree = build_tree(start, 1.0 if go_right else -1.0, depth, sampler)
        num_steps += sampler.num_leaves
        sum_acceptance += sampler.sum_acceptance
        sum_symmetric_acceptance += sampler.sum_symmetric_acceptance
        if not subtree.valid:
            is_divergent, is_turning = sampler.is_divergent, sampler.is_turning
            break
        depth += 1
        if float(merge_uniform) < np.exp(sampler.log_weight - log_weight):
            proposal, proposal_energy = sampler.proposal, sampler.proposal_energy
        log_weight = float(np.logaddexp(log_weight, sampler.log_weight))
        new_momentum_sum = momentum_sum + subtree.momentum_sum
        is_turning = (
            _turning(far_old.velocity, subtree.end.velocity, new_momentum_sum)
            or _turning(far_old.velocity, subtree.begin.velocity, momentum_sum + subtree.begin.momentum)
            or _turning(start.velocity, subtree.end.velocity, subtree.momentum_sum + start.momentum)
        )
        momentum_sum = new_momentum_sum
        if go_right:
            right = subtree.end
        else:
            left = subtree.end
        if is_turning:
            break

    new_state = HMCState(proposal.position, proposal.logdensity, proposal.logdensity_grad)
    info = NUTSInfo(
        momentum=momentum0,
        is_divergent=is_divergent,
        is_turning=is_turning,
        energy=proposal_energy,
        tree_depth=depth,
        num_steps=num_steps,
        acceptance_rate=sum_acceptance / max(num_steps, 1),
        symmetric_acceptance_rate=sum_symmetric_acceptance / max(num_steps, 1),
        energy_error=proposal_energy - initial_energy,
    )
    return new_state, info
