"""The iterative no-U-turn trajectory of multinomial NUTS.

The trajectory starts from one point and doubles in a random direction at every depth
(Hoffman & Gelman 2014, "The No-U-Turn Sampler"). The new half, a subtree of ``2**depth``
leapfrog steps, is built here by a ``lax.while_loop`` over steps instead of recursion:

* Within the subtree the proposal is drawn by *uniform* progressive sampling: leaf ``i``
  replaces the running proposal with probability ``w_i / sum_{j<=i} w_j`` where
  ``w = exp(H0 - H)``; that is a multinomial draw over the subtree's leaves (Betancourt
  2017, "A Conceptual Introduction to Hamiltonian Monte Carlo", appendix A.3.2).
* The subtree is merged into the trajectory by *biased* progressive sampling: its
  proposal replaces the trajectory's with probability ``min(1, W_subtree / W_old)``,
  which favours later states and improves mixing (Betancourt 2017, appendix A.3.2).
* The generalized U-turn criterion (Betancourt 2013, "Generalizing the No-U-Turn Sampler
  to Riemannian Manifolds") is checked on every balanced sub-subtree of the new subtree,
  as the recursive algorithm does, and, as in Stan >= 2.22, also on the left half plus the
  first state of the right half and on the right half plus the last state of the left
  half; the same three checks are applied when a subtree is merged into the trajectory.
* A leaf whose energy error ``H - H0`` exceeds the divergence threshold, or is NaN, is a
  divergence. A divergent or turning subtree is rejected entirely and building stops.

Checkpoints. The sub-subtrees of sizes ``2, 4, ..., 2**k`` that complete at leaf ``i``
(0-based within the subtree) are those ``k`` given by the number of trailing one-bits of
``i``; the one of size ``2**l`` starts at ``s = i`` with its ``l`` lowest bits cleared.
Every even leaf ``s`` stores, in slot ``popcount(s)``, its momentum and velocity, the
momentum and velocity of leaf ``s - 1`` and the running momentum sum before ``s``; a slot
is never overwritten while a sub-subtree starting there is open, because every even leaf
inside that sub-subtree has a larger popcount. Sums of momenta over any sub-subtree are
differences of the running sum, so storage is ``O(max_tree_depth * d)`` and each leapfrog
step costs one gradient evaluation and ``O(d)`` extra work per completed check.

Random numbers are indexed, not streamed: the key of depth ``j`` is ``fold_in(key, j)``,
split into a direction key, a leaf key (leaf ``i`` uses ``fold_in(leaf_key, i)``) and a
merge key, so the recursive reference in :mod:`hbm.samplers.reference` reproduces the same
trajectory exactly.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hbm.samplers.integrators import IntegratorState
from hbm.samplers.metrics import Metric

__all__ = [
    "Proposal",
    "TrajectoryEnd",
    "TrajectoryResult",
    "build_trajectory",
    "depth_keys",
    "leaf_energy",
]


class Proposal(NamedTuple):
    """A candidate sample: a position with its log density, gradient and energy ``H``."""

    position: jax.Array
    logdensity: jax.Array
    logdensity_grad: jax.Array
    energy: jax.Array


class TrajectoryEnd(NamedTuple):
    """One end of a trajectory: the phase-space state and its velocity ``M^{-1} p``."""

    state: IntegratorState
    velocity: jax.Array


class TrajectoryResult(NamedTuple):
    """What the tree returns.

    Attributes
    ----------
    proposal : the selected point.
    tree_depth : number of doublings merged into the trajectory (Stan's ``treedepth__``).
    num_steps : leapfrog steps taken, the rejected last subtree included.
    sum_acceptance : sum over all those steps of ``min(1, exp(H0 - H))``.
    is_divergent : a leaf diverged.
    is_turning : a U-turn stopped the trajectory (inside the last subtree or at its merge).
    """

    proposal: Proposal
    tree_depth: jax.Array
    num_steps: jax.Array
    sum_acceptance: jax.Array
    is_divergent: jax.Array
    is_turning: jax.Array


def depth_keys(key, depth):
    """The direction, leaf and merge keys of doubling number ``depth``."""
    direction_key, leaf_key, merge_key = jax.random.split(jax.random.fold_in(key, depth), 3)
    return direction_key, leaf_key, merge_key


def leaf_energy(state: IntegratorState, metric: Metric):
    """Velocity and energy ``H = -log pi(x) + p . M^{-1} p / 2`` of a state (NaN -> inf)."""
    velocity = metric.velocity(state.momentum)
    energy = -state.logdensity + 0.5 * jnp.dot(state.momentum, velocity)
    energy = jnp.where(jnp.isnan(energy), jnp.inf, energy)
    return velocity, energy


# ---------------------------------------------------------------- leaf uniforms
#
# JAX lowers its Threefry-2x32 hash to a rolled five-iteration loop on CPU, which costs
# several microseconds per call inside the leapfrog loop. The leaf uniform
# ``uniform(fold_in(leaf_key, i))`` is therefore computed with an unrolled Threefry-2x32
# (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"), bit for bit the
# value ``jax.random`` returns; a one-off check falls back to ``jax.random`` should the
# installed JAX derive its bits differently.

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x, distance):
    return (x << np.uint32(distance)) | (x >> np.uint32(32 - distance))


def _threefry2x32(key0, key1, count0, count1):
    """The Threefry-2x32 block cipher with 20 rounds, unrolled (uint32 in, uint32 out)."""
    keys = (key0, key1, key0 ^ key1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = count0 + keys[0], count1 + keys[1]
    for block in range(5):
        for distance in _THREEFRY_ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, distance) ^ x0
        x0 = x0 + keys[(block + 1) % 3]
        x1 = x1 + keys[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _bits_to_unit_float(bits_hi, bits_lo, dtype):
    """Uniform on [0, 1) from 64 random bits, as ``jax.random.uniform`` maps them."""
    if jnp.dtype(dtype) == jnp.float64:
        bits = (bits_hi.astype(jnp.uint64) << np.uint64(32)) | bits_lo.astype(jnp.uint64)
        mantissa = (bits >> np.uint64(12)) | np.uint64(0x3FF0000000000000)
        return lax.bitcast_convert_type(mantissa, jnp.float64) - 1.0
    bits = bits_hi ^ bits_lo
    mantissa = (bits >> np.uint32(9)) | np.uint32(0x3F800000)
    return lax.bitcast_convert_type(mantissa, jnp.float32).astype(dtype) - 1.0


def _fast_leaf_uniform(leaf_key, index, dtype):
    key = jnp.asarray(leaf_key, jnp.uint32)
    zero = jnp.zeros((), jnp.uint32)
    folded0, folded1 = _threefry2x32(key[0], key[1], zero, jnp.asarray(index).astype(jnp.uint32))
    bits_hi, bits_lo = _threefry2x32(folded0, folded1, zero, zero)
    return jnp.maximum(_bits_to_unit_float(bits_hi, bits_lo, dtype), 0.0).astype(dtype)


def _jax_leaf_uniform(leaf_key, index, dtype):
    return jax.random.uniform(jax.random.fold_in(leaf_key, index), dtype=dtype)


@functools.lru_cache(maxsize=None)
def _fast_leaf_uniform_agrees(dtype_name: str, key_shape: tuple, partitionable: bool) -> bool:
    """Whether the unrolled hash reproduces ``jax.random`` here (checked once)."""
    if key_shape != (2,):
        return False
    def both(key, index):
        return (_jax_leaf_uniform(key, index, dtype_name),
                _fast_leaf_uniform(key, index, dtype_name))

    try:
        # one compiled comparison over a grid of keys and indices (eagerly, op by op, the
        # unrolled hash costs seconds); evaluated now even when called while tracing
        with jax.ensure_compile_time_eval():
            keys = jnp.stack([jax.random.PRNGKey(seed) for seed in (0, 1, 12345)])
            indices = jnp.array([0, 1, 2, 7, 1000], jnp.int32)
            grid = jax.jit(jax.vmap(jax.vmap(both, (None, 0)), (0, None)))
            expected, actual = grid(keys, indices)
            return bool(np.all(np.asarray(expected) == np.asarray(actual)))
    except Exception:  # noqa: BLE001 - any incompatibility means: use jax.random
        return False


def leaf_uniform(leaf_key, index, dtype):
    """``jax.random.uniform(jax.random.fold_in(leaf_key, index), dtype=dtype)``, fast."""
    dtype = jnp.dtype(dtype)
    key_shape = tuple(jnp.shape(leaf_key))
    use_fast = (
        jnp.asarray(leaf_key).dtype == jnp.uint32
        and _fast_leaf_uniform_agrees(dtype.name, key_shape, bool(jax.config.jax_threefry_partitionable))
    )
    if use_fast:
        return _fast_leaf_uniform(leaf_key, index, dtype)
    return _jax_leaf_uniform(leaf_key, index, dtype)


def _select(predicate, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(predicate, a, b), on_true, on_false)


class _Subtree(NamedTuple):
    far_end: TrajectoryEnd
    near_momentum: jax.Array
    near_velocity: jax.Array
    momentum_sum: jax.Array
    proposal: Proposal
    log_weight: jax.Array
    num_steps: jax.Array
    sum_acceptance: jax.Array
    is_divergent: jax.Array
    is_turning: jax.Array


class _SubtreeCarry(NamedTuple):
    leaf: jax.Array
    end: TrajectoryEnd
    proposal: Proposal
    log_weight: jax.Array
    momentum_sum: jax.Array
    sum_acceptance: jax.Array
    is_divergent: jax.Array
    is_turning: jax.Array
    # checkpoints, indexed by popcount of the even leaf that wrote them (last row: scratch)
    start_momentum: jax.Array
    start_velocity: jax.Array
    previous_momentum: jax.Array
    previous_velocity: jax.Array
    sum_before: jax.Array


def _trailing_ones(i):
    # (~i & (i + 1)) isolates the lowest zero bit 2**k; 2**k - 1 has k one-bits.
    return lax.population_count((~i & (i + 1)) - 1)


def _build_subtree(
    start: TrajectoryEnd,
    direction,
    depth,
    leaf_key,
    initial_energy,
    step_fn,
    metric: Metric,
    step_size,
    max_tree_depth: int,
    divergence_threshold: float,
) -> _Subtree:
    """Take up to ``2**depth`` leapfrog steps from ``start``, checking every sub-subtree."""
    position = start.state.position
    dtype = jnp.result_type(position)
    num_leaves = jnp.left_shift(jnp.int32(1), depth)
    signed_step_size = direction * step_size
    scratch_slot = max_tree_depth
    checkpoints = jnp.zeros((max_tree_depth + 1,) + position.shape, dtype)

    def cond(carry: _SubtreeCarry):
        return (carry.leaf < num_leaves) & ~carry.is_divergent & ~carry.is_turning

    def body(carry: _SubtreeCarry) -> _SubtreeCarry:
        i = carry.leaf
        state = step_fn(carry.end.state, signed_step_size)
        velocity, energy = leaf_energy(state, metric)
        log_weight_leaf = initial_energy - energy
        is_divergent = (energy - initial_energy) > divergence_threshold
        acceptance = jnp.where(log_weight_leaf > 0, 1.0, jnp.exp(log_weight_leaf))

        # uniform progressive sampling within the subtree
        log_weight = jnp.where(
            i == 0, log_weight_leaf, jnp.logaddexp(carry.log_weight, log_weight_leaf)
        )
        uniform = leaf_uniform(leaf_key, i, dtype)
        take = (i == 0) | (uniform < jnp.exp(log_weight_leaf - log_weight))
        leaf_proposal = Proposal(state.position, state.logdensity, state.logdensity_grad, energy)
        proposal = _select(take, leaf_proposal, carry.proposal)

        # checkpoint at even leaves
        count = lax.population_count(i)
        slot = jnp.where(i % 2 == 0, count, scratch_slot)

        def store(array, value):
            return lax.dynamic_update_index_in_dim(array, value, slot, 0)

        start_momentum = store(carry.start_momentum, state.momentum)
        start_velocity = store(carry.start_velocity, velocity)
        previous_momentum = store(carry.previous_momentum, carry.end.state.momentum)
        previous_velocity = store(carry.previous_velocity, carry.end.velocity)
        sum_before = store(carry.sum_before, carry.momentum_sum)
        momentum_sum = carry.momentum_sum + state.momentum

        # U-turn checks of the sub-subtrees of sizes 2, 4, ..., 2**k ending at leaf i
        num_checks = jnp.where(is_divergent, 0, _trailing_ones(i))

        def check_cond(c):
            level, turning = c
            return (level <= num_checks) & ~turning

        def check_body(c):
            level, _ = c
            start_slot = count - level
            mid_slot = start_slot + 1
            velocity_start = start_velocity[start_slot]
            sum_before_start = sum_before[start_slot]
            turning = metric.check_turning(
                velocity_start, velocity, momentum_sum - sum_before_start
            )
            # Stan's extra checks across the two halves (redundant for size 2)
            velocity_mid = start_velocity[mid_slot]
            sum_before_mid = sum_before[mid_slot]
            turning_left = metric.check_turning(
                velocity_start,
                velocity_mid,
                sum_before_mid + start_momentum[mid_slot] - sum_before_start,
            )
            turning_right = metric.check_turning(
                previous_velocity[mid_slot],
                velocity,
                momentum_sum - sum_before_mid + previous_momentum[mid_slot],
            )
            turning = turning | ((level >= 2) & (turning_left | turning_right))
            return level + 1, turning

        _, is_turning = lax.while_loop(
            check_cond, check_body, (jnp.int32(1), jnp.zeros((), bool))
        )

        return _SubtreeCarry(
            leaf=i + 1,
            end=TrajectoryEnd(state, velocity),
            proposal=proposal,
            log_weight=log_weight,
            momentum_sum=momentum_sum,
            sum_acceptance=carry.sum_acceptance + acceptance,
            is_divergent=is_divergent,
            is_turning=is_turning,
            start_momentum=start_momentum,
            start_velocity=start_velocity,
            previous_momentum=previous_momentum,
            previous_velocity=previous_velocity,
            sum_before=sum_before,
        )

    initial = _SubtreeCarry(
        leaf=jnp.int32(0),
        end=start,
        proposal=Proposal(
            position, start.state.logdensity, start.state.logdensity_grad, initial_energy
        ),
        log_weight=jnp.full((), -jnp.inf, dtype),
        momentum_sum=jnp.zeros_like(position),
        sum_acceptance=jnp.zeros((), dtype),
        is_divergent=jnp.zeros((), bool),
        is_turning=jnp.zeros((), bool),
        start_momentum=checkpoints,
        start_velocity=checkpoints,
        previous_momentum=checkpoints,
        previous_velocity=checkpoints,
        sum_before=checkpoints,
    )
    final = lax.while_loop(cond, body, initial)
    return _Subtree(
        far_end=final.end,
        near_momentum=final.start_momentum[0],
        near_velocity=final.start_velocity[0],
        momentum_sum=final.momentum_sum,
        proposal=final.proposal,
        log_weight=final.log_weight,
        num_steps=final.leaf,
        sum_acceptance=final.sum_acceptance,
        is_divergent=final.is_divergent,
        is_turning=final.is_turning,
    )


class _TrajectoryCarry(NamedTuple):
    depth: jax.Array
    left: TrajectoryEnd
    right: TrajectoryEnd
    momentum_sum: jax.Array
    proposal: Proposal
    log_weight: jax.Array
    num_steps: jax.Array
    sum_acceptance: jax.Array
    is_divergent: jax.Array
    is_turning: jax.Array


def build_trajectory(
    key,
    initial_state: IntegratorState,
    step_fn: Callable[[IntegratorState, jax.Array], IntegratorState],
    metric: Metric,
    step_size,
    *,
    max_tree_depth: int = 10,
    divergence_threshold: float = 1000.0,
) -> TrajectoryResult:
    """Build a multinomial NUTS trajectory from ``initial_state`` and draw its proposal.

    Parameters
    ----------
    key
        PRNG key for directions and progressive sampling (not for the momentum).
    initial_state
        Starting point with its freshly drawn momentum.
    step_fn
        ``step(state, signed_step_size) -> state``, e.g. :func:`velocity_verlet`.
    metric
        The Euclidean metric whose momentum was drawn.
    step_size
        Positive leapfrog step size.
    max_tree_depth
        Maximum number of doublings (at most ``2**max_tree_depth - 1`` steps).
    divergence_threshold
        Energy error ``H - H0`` above which a step is divergent.

    Returns
    -------
    TrajectoryResult
    """
    position = initial_state.position
    dtype = jnp.result_type(position)
    velocity, initial_energy = leaf_energy(initial_state, metric)
    origin = TrajectoryEnd(initial_state, velocity)

    def cond(carry: _TrajectoryCarry):
        return (carry.depth < max_tree_depth) & ~carry.is_divergent & ~carry.is_turning

    def body(carry: _TrajectoryCarry) -> _TrajectoryCarry:
        direction_key, leaf_key, merge_key = depth_keys(key, carry.depth)
        go_right = jax.random.bernoulli(direction_key)
        direction = jnp.where(go_right, 1.0, -1.0).astype(dtype)
        start = _select(go_right, carry.right, carry.left)
        far_old = _select(go_right, carry.left, carry.right)
        subtree = _build_subtree(
            start,
            direction,
            carry.depth,
            leaf_key,
            initial_energy,
            step_fn,
            metric,
            step_size,
            max_tree_depth,
            divergence_threshold,
        )
        valid = ~subtree.is_divergent & ~subtree.is_turning

        # biased progressive sampling between the old trajectory and the new subtree
        uniform = jax.random.uniform(merge_key, dtype=dtype)
        take = valid & (uniform < jnp.exp(subtree.log_weight - carry.log_weight))
        proposal = _select(take, subtree.proposal, carry.proposal)
        log_weight = jnp.where(
            valid, jnp.logaddexp(carry.log_weight, subtree.log_weight), carry.log_weight
        )
        momentum_sum = carry.momentum_sum + subtree.momentum_sum

        far_velocity = subtree.far_end.velocity
        turning_total = metric.check_turning(far_old.velocity, far_velocity, momentum_sum)
        turning_old = metric.check_turning(
            far_old.velocity,
            subtree.near_velocity,
            carry.momentum_sum + subtree.near_momentum,
        )
        turning_new = metric.check_turning(
            start.velocity,
            far_velocity,
            subtree.momentum_sum + start.state.momentum,
        )
        merged_turning = valid & (turning_total | turning_old | turning_new)

        new_end = _select(valid, subtree.far_end, start)
        left = _select(go_right, carry.left, new_end)
        right = _select(go_right, new_end, carry.right)
        return _TrajectoryCarry(
            depth=carry.depth + valid.astype(jnp.int32),
            left=left,
            right=right,
            momentum_sum=jnp.where(valid, momentum_sum, carry.momentum_sum),
            proposal=proposal,
            log_weight=log_weight,
            num_steps=carry.num_steps + subtree.num_steps,
            sum_acceptance=carry.sum_acceptance + subtree.sum_acceptance,
            is_divergent=subtree.is_divergent,
            is_turning=subtree.is_turning | merged_turning,
        )

    initial = _TrajectoryCarry(
        depth=jnp.int32(0),
        left=origin,
        right=origin,
        momentum_sum=initial_state.momentum,
        proposal=Proposal(
            position, initial_state.logdensity, initial_state.logdensity_grad, initial_energy
        ),
        log_weight=jnp.zeros((), dtype),
        num_steps=jnp.int32(0),
        sum_acceptance=jnp.zeros((), dtype),
        is_divergent=jnp.zeros((), bool),
        is_turning=jnp.zeros((), bool),
    )
    final = lax.while_loop(cond, body, initial)
    return TrajectoryResult(
        proposal=final.proposal,
        tree_depth=final.depth,
        num_steps=final.num_steps,
        sum_acceptance=final.sum_acceptance,
        is_divergent=final.is_divergent,
        is_turning=final.is_turning,
    )
