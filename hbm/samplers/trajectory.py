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

One loop. The doublings and their leapfrog steps run in a single ``lax.while_loop`` whose
iteration is one leapfrog step: when the step completes (or ends early) the current
subtree, the same iteration merges it into the trajectory and sets up the next doubling.
Under ``vmap`` each chain then advances independently, so a batch of chains costs the
largest number of steps of any chain, not the sum over depths of the per-depth maxima,
and no loop is nested in the step. The U-turn checks of a leaf are evaluated for all
checkpoint slots at once and masked to the sub-subtrees that complete at that leaf.
The vectors of the loop state are kept in a few stacked arrays (the three ends, the two
proposals, the two momentum sums, the checkpoints), so that each group is updated by one
fused select rather than one per vector.

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
    try:
        with jax.ensure_compile_time_eval():
            for seed in (0, 1, 12345):
                key = jax.random.PRNGKey(seed)
                for index in (0, 1, 2, 7, 1000):
                    expected = _jax_leaf_uniform(key, index, dtype_name)
                    actual = _fast_leaf_uniform(key, jnp.int32(index), dtype_name)
                    if not bool(jnp.asarray(expected == actual)):
                        return False
    except Exception:  # noqa: BLE001 - any incompatibility means: use jax.random
        return False
    return True


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


def _trailing_ones(i):
    # (~i & (i + 1)) isolates the lowest zero bit 2**k; 2**k - 1 has k one-bits.
    return lax.population_count((~i & (i + 1)) - 1)


def _dots(a, b):
    """Row-wise dot products over the last axis."""
    return jnp.sum(a * b, axis=-1)


# rows of the stacked ends and of each end's vectors
_LEFT, _RIGHT, _END = 0, 1, 2
_POSITION, _MOMENTUM, _GRAD, _VELOCITY = 0, 1, 2, 3
# rows of the stacked proposals and momentum sums: the trajectory's, the subtree's
_TRAJECTORY, _SUBTREE = 0, 1


class _Carry(NamedTuple):
    depth: jax.Array  # doublings merged so far (= depth of the subtree being built)
    leaf: jax.Array  # index of the next leaf of the subtree being built
    ends: jax.Array  # (3, 4, d): left / right end of the trajectory, end of the subtree
    ends_logdensity: jax.Array  # (3,)
    proposals: jax.Array  # (2, 2, d): trajectory / subtree proposal, position and grad
    proposals_scalars: jax.Array  # (2, 2): log density and energy of each proposal
    log_weights: jax.Array  # (2,)
    momentum_sums: jax.Array  # (2, d)
    checkpoints: jax.Array  # (5, max_tree_depth + 1, d), see _CHECKPOINT_*
    num_steps: jax.Array
    sum_acceptance: jax.Array
    is_divergent: jax.Array
    is_turning: jax.Array
    done: jax.Array


# checkpoint arrays, rows indexed by popcount of the even leaf that wrote them
_START_MOMENTUM, _START_VELOCITY, _PREVIOUS_MOMENTUM, _PREVIOUS_VELOCITY, _SUM_BEFORE = range(5)


def _end_rows(state: IntegratorState, velocity):
    return jnp.stack([state.position, state.momentum, state.logdensity_grad, velocity])


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
    velocity0, initial_energy = leaf_energy(initial_state, metric)
    num_slots = max_tree_depth + 1
    scratch_slot = max_tree_depth
    slots = jnp.arange(num_slots, dtype=jnp.int32)

    # the randomness of every doubling, drawn once (indexed by depth in the loop)
    def randomness(depth):
        direction_key, leaf_key, merge_key = depth_keys(key, depth)
        return (
            jax.random.bernoulli(direction_key),
            leaf_key,
            jax.random.uniform(merge_key, dtype=dtype),
        )

    all_go_right, all_leaf_keys, all_merge_uniforms = jax.vmap(randomness)(
        jnp.arange(max_tree_depth, dtype=jnp.int32)
    )

    def cond(carry: _Carry):
        return ~carry.done

    def body(carry: _Carry) -> _Carry:
        i = carry.leaf
        depth = carry.depth
        go_right = all_go_right[depth]
        direction = jnp.where(go_right, 1.0, -1.0).astype(dtype)
        ends = carry.ends
        previous = ends[_END]
        first = i == 0

        # ---- one leapfrog step, extending the subtree by leaf i
        state = step_fn(
            IntegratorState(
                previous[_POSITION],
                previous[_MOMENTUM],
                carry.ends_logdensity[_END],
                previous[_GRAD],
            ),
            direction * step_size,
        )
        velocity, energy = leaf_energy(state, metric)
        log_weight_leaf = initial_energy - energy
        is_divergent = (energy - initial_energy) > divergence_threshold
        acceptance = jnp.where(log_weight_leaf > 0, 1.0, jnp.exp(log_weight_leaf))

        # uniform progressive sampling within the subtree
        subtree_log_weight = jnp.where(
            first,
            log_weight_leaf,
            jnp.logaddexp(carry.log_weights[_SUBTREE], log_weight_leaf),
        )
        uniform = leaf_uniform(all_leaf_keys[depth], i, dtype)
        take_leaf = first | (uniform < jnp.exp(log_weight_leaf - subtree_log_weight))

        # checkpoint at even leaves (odd leaves write the scratch row)
        previous_sum = jnp.where(
            first, jnp.zeros_like(position), carry.momentum_sums[_SUBTREE]
        )
        subtree_momentum_sum = previous_sum + state.momentum
        count = lax.population_count(i)
        slot = jnp.where(i % 2 == 0, count, scratch_slot)
        stored = jnp.stack(
            [state.momentum, velocity, previous[_MOMENTUM], previous[_VELOCITY], previous_sum]
        )
        checkpoints = jnp.where(
            (slots == slot)[None, :, None], stored[:, None, :], carry.checkpoints
        )
        start_momentum = checkpoints[_START_MOMENTUM]
        start_velocity = checkpoints[_START_VELOCITY]
        sum_before = checkpoints[_SUM_BEFORE]

        # U-turn checks of the sub-subtrees of sizes 2, 4, ..., 2**k ending at leaf i:
        # the one of size 2**level starts in slot count - level, its right half in the next
        num_checks = jnp.where(is_divergent, 0, _trailing_ones(i))
        level = count - slots[:-1]
        checked = (level >= 1) & (level <= num_checks)
        halves_checked = checked & (level >= 2)
        velocity_start = start_velocity[:-1]
        sum_start = sum_before[:-1]
        sum_mid = sum_before[1:]
        rho = subtree_momentum_sum - sum_start
        persists = (_dots(velocity_start, rho) > 0) & (_dots(velocity, rho) > 0)
        # Stan's extra checks: left half plus the first state of the right half, and
        # right half plus the last state of the left half
        rho_left = sum_mid + start_momentum[1:] - sum_start
        persists_left = (_dots(velocity_start, rho_left) > 0) & (
            _dots(start_velocity[1:], rho_left) > 0
        )
        rho_right = subtree_momentum_sum - sum_mid + checkpoints[_PREVIOUS_MOMENTUM, 1:]
        persists_right = (_dots(checkpoints[_PREVIOUS_VELOCITY, 1:], rho_right) > 0) & (
            _dots(velocity, rho_right) > 0
        )
        subtree_turning = jnp.any(
            (checked & ~persists) | (halves_checked & ~(persists_left & persists_right))
        )

        num_leaves = jnp.left_shift(jnp.int32(1), depth)
        subtree_done = (i + 1 >= num_leaves) | is_divergent | subtree_turning

        # ---- merge the subtree (used only where it is done)
        valid = ~is_divergent & ~subtree_turning
        start = jnp.where(go_right, ends[_RIGHT], ends[_LEFT])
        far_old = jnp.where(go_right, ends[_LEFT], ends[_RIGHT])
        trajectory_log_weight = carry.log_weights[_TRAJECTORY]
        take_subtree = valid & (
            all_merge_uniforms[depth] < jnp.exp(subtree_log_weight - trajectory_log_weight)
        )
        trajectory_sum = carry.momentum_sums[_TRAJECTORY]
        merged_momentum_sum = trajectory_sum + subtree_momentum_sum
        turning_total = metric.check_turning(
            far_old[_VELOCITY], velocity, merged_momentum_sum
        )
        turning_old = metric.check_turning(
            far_old[_VELOCITY], start_velocity[0], trajectory_sum + start_momentum[0]
        )
        turning_new = metric.check_turning(
            start[_VELOCITY], velocity, subtree_momentum_sum + start[_MOMENTUM]
        )
        merged_turning = valid & (turning_total | turning_old | turning_new)
        merge = subtree_done & valid
        new_depth = depth + merge.astype(jnp.int32)
        done = subtree_done & (~valid | merged_turning | (new_depth >= max_tree_depth))

        # proposals: the leaf may replace the subtree's, the subtree's the trajectory's
        leaf_rows = jnp.stack([state.position, state.logdensity_grad])
        leaf_scalars = jnp.stack([state.logdensity, energy])
        subtree_rows = jnp.where(take_leaf, leaf_rows, carry.proposals[_SUBTREE])
        subtree_scalars = jnp.where(take_leaf, leaf_scalars, carry.proposals_scalars[_SUBTREE])
        replace = subtree_done & take_subtree
        proposals = jnp.stack(
            [jnp.where(replace, subtree_rows, carry.proposals[_TRAJECTORY]), subtree_rows]
        )
        proposals_scalars = jnp.stack(
            [
                jnp.where(replace, subtree_scalars, carry.proposals_scalars[_TRAJECTORY]),
                subtree_scalars,
            ]
        )
        log_weights = jnp.stack(
            [
                jnp.where(
                    merge,
                    jnp.logaddexp(trajectory_log_weight, subtree_log_weight),
                    trajectory_log_weight,
                ),
                subtree_log_weight,
            ]
        )
        momentum_sums = jnp.stack(
            [jnp.where(merge, merged_momentum_sum, trajectory_sum), subtree_momentum_sum]
        )

        # ends: the subtree's end becomes a trajectory end on merging; the next step
        # continues this subtree or starts the next doubling from the chosen side
        far_end = _end_rows(state, velocity)
        left = jnp.where(merge & ~go_right, far_end, ends[_LEFT])
        right = jnp.where(merge & go_right, far_end, ends[_RIGHT])
        next_go_right = all_go_right[jnp.minimum(new_depth, max_tree_depth - 1)]
        end = jnp.where(subtree_done, jnp.where(next_go_right, right, left), far_end)
        ld = carry.ends_logdensity
        left_ld = jnp.where(merge & ~go_right, state.logdensity, ld[_LEFT])
        right_ld = jnp.where(merge & go_right, state.logdensity, ld[_RIGHT])
        end_ld = jnp.where(
            subtree_done, jnp.where(next_go_right, right_ld, left_ld), state.logdensity
        )
        return _Carry(
            depth=new_depth,
            leaf=jnp.where(subtree_done, 0, i + 1),
            ends=jnp.stack([left, right, end]),
            ends_logdensity=jnp.stack([left_ld, right_ld, end_ld]),
            proposals=proposals,
            proposals_scalars=proposals_scalars,
            log_weights=log_weights,
            momentum_sums=momentum_sums,
            checkpoints=checkpoints,
            num_steps=carry.num_steps + 1,
            sum_acceptance=carry.sum_acceptance + acceptance,
            is_divergent=is_divergent,
            is_turning=subtree_turning | (subtree_done & merged_turning),
            done=done,
        )

    origin = _end_rows(initial_state, velocity0)
    initial_rows = jnp.stack([position, initial_state.logdensity_grad])
    initial_scalars = jnp.stack([initial_state.logdensity, initial_energy]).astype(dtype)
    initial = _Carry(
        depth=jnp.int32(0),
        leaf=jnp.int32(0),
        ends=jnp.stack([origin, origin, origin]),
        ends_logdensity=jnp.full((3,), initial_state.logdensity, dtype),
        proposals=jnp.stack([initial_rows, initial_rows]),
        proposals_scalars=jnp.stack([initial_scalars, initial_scalars]),
        log_weights=jnp.array([0.0, -jnp.inf], dtype),
        momentum_sums=jnp.stack([initial_state.momentum, jnp.zeros_like(position)]),
        checkpoints=jnp.zeros((5, num_slots) + position.shape, dtype),
        num_steps=jnp.int32(0),
        sum_acceptance=jnp.zeros((), dtype),
        is_divergent=jnp.zeros((), bool),
        is_turning=jnp.zeros((), bool),
        done=jnp.zeros((), bool),
    )
    final = lax.while_loop(cond, body, initial)
    proposal = Proposal(
        final.proposals[_TRAJECTORY, 0],
        final.proposals_scalars[_TRAJECTORY, 0],
        final.proposals[_TRAJECTORY, 1],
        final.proposals_scalars[_TRAJECTORY, 1],
    )
    return TrajectoryResult(
        proposal=proposal,
        tree_depth=final.depth,
        num_steps=final.num_steps,
        sum_acceptance=final.sum_acceptance,
        is_divergent=final.is_divergent,
        is_turning=final.is_turning,
    )
