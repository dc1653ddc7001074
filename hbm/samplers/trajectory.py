"""The iterative no-U-turn trajectory of multinomial NUTS, and the same tree one step at a time.

The trajectory starts from one point and doubles in a random direction at every depth
(Hoffman & Gelman 2014, "The No-U-Turn Sampler"). Two builders compute the same tree
(same decisions, same arithmetic, same random numbers):

* :func:`build_trajectory`: a ``lax.while_loop`` over doublings around a ``lax.while_loop``
  over the leapfrog steps of the new subtree (the kernel's default; fastest on CPU);
* :func:`build_trajectory_stepwise`: a single ``lax.while_loop`` over
  :func:`trajectory_step`, a *state machine* that advances a :class:`TrajectoryState` by
  exactly one leapfrog step (the leaf's bookkeeping, the U-turn checks ending at it, and,
  when the subtree is finished, its merge and the start of the next doubling) and raises
  ``done`` when the transition is over. :mod:`hbm.samplers.lockstep_free` vmaps that step
  over many chains so that none waits for another's longer tree (Radul et al. 2020,
  "Automatically batching control-intensive programs for modern accelerators").

The algorithm:

* Within a subtree the proposal is drawn by *uniform* progressive sampling: leaf ``i``
  replaces the running proposal with probability ``w_i / sum_{j<=i} w_j`` where
  ``w = exp(H0 - H)``; that is a multinomial draw over the subtree's leaves (Betancourt
  2017, "A Conceptual Introduction to Hamiltonian Monte Carlo", appendix A.3.2).
* A finished subtree is merged into the trajectory by *biased* progressive sampling: its
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
Every even leaf ``s`` stores, in slot ``popcount(s)``, its momentum, the momentum of leaf
``s - 1`` and the running momentum sum before ``s`` (velocities are recomputed from the
momenta where a check reads them); a slot
is never overwritten while a sub-subtree starting there is open, because every even leaf
inside that sub-subtree has a larger popcount. Sums of momenta over any sub-subtree are
differences of the running sum, so storage is ``O(max_tree_depth * d)`` and each leapfrog
step costs one gradient evaluation and ``O(d)`` extra work per completed check.

Random numbers are indexed, not streamed: the key of depth ``j`` is ``fold_in(key, j)``,
split into a direction key, a leaf key (leaf ``i`` uses ``fold_in(leaf_key, i)``) and a
merge key, so the recursive reference in :mod:`hbm.samplers.reference` reproduces the same
trajectory exactly (:mod:`hbm.samplers.threefry` computes them, bit for bit, without
JAX's rolled hash loop). Both builders draw the directions, leaf keys and merge uniforms of
all depths when the trajectory starts, in one batched hash (about 8% of a transition of a
10-parameter model, measured against a hash per doubling).

What the step machine does for speed on CPU (XLA fuses cheap scalar logic into every
consumer, and every array a loop body writes is a kernel launch): the direction and merge
draws of all depths are made when the trajectory starts; the next leaf's uniform is drawn
one step ahead (a loop-carried value is hashed once, not inside every fused select); the
decisions taken on a leaf (take it, merge, restart) are carried to the next step and
applied there (``pending_*``), for the same reason; the ~50 fields are packed by shape
and dtype into a few arrays; the checkpoints are one array updated in place by one row.
Measured with ``benchmarks/trajectory_profile.py`` (4 vmapped chains, 2-core CPU,
2026-12-01) it still costs about 2-3x the nested loops per leapfrog step (more at large
d), hence it is not the kernel's default.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from hbm.samplers.integrators import IntegratorState
from hbm.samplers.metrics import Metric
from hbm.samplers.threefry import draws_by_depth, leaf_uniform

__all__ = [
    "Proposal",
    "TrajectoryEnd",
    "TrajectoryResult",
    "TrajectoryState",
    "build_trajectory",
    "build_trajectory_stepwise",
    "leaf_acceptance",
    "leaf_energy",
    "trajectory_init",
    "trajectory_result",
    "trajectory_step",
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
    sum_symmetric_acceptance : sum over them of ``2 / (1 + exp(|H0 - H|))``
        (:func:`leaf_acceptance`).
    is_divergent : a leaf diverged.
    is_turning : a U-turn stopped the trajectory (inside the last subtree or at its merge).
    """

    proposal: Proposal
    tree_depth: jax.Array
    num_steps: jax.Array
    sum_acceptance: jax.Array
    sum_symmetric_acceptance: jax.Array
    is_divergent: jax.Array
    is_turning: jax.Array


def leaf_acceptance(log_weight_leaf):
    """The two acceptance statistics of a leaf with ``log_weight_leaf = H0 - H``.

    ``min(1, exp(H0 - H))`` is the Metropolis acceptance probability of a jump to the
    leaf, the statistic Stan's dual averaging adapts (Hoffman & Gelman 2014, section
    3.2). ``2 / (1 + exp(|H0 - H|))`` is symmetric in the energy error: a leaf whose
    energy fell by ``delta`` counts as much against the step size as one whose energy
    rose by ``delta`` (Stan's statistic is 1 for every fall), and it is 1 only at
    ``delta = 0``. nuts-rs (Seyboldt, nutpie)
    adapts the step size to its mean late in warmup. Written as ``2 sigmoid(-|delta|)``,
    it is 0, not NaN, at an infinite energy error; NaN stays NaN in both.
    """
    acceptance = jnp.where(log_weight_leaf > 0, 1.0, jnp.exp(log_weight_leaf))
    symmetric = 2.0 * jax.nn.sigmoid(-jnp.abs(log_weight_leaf))
    return acceptance.astype(log_weight_leaf.dtype), symmetric.astype(log_weight_leaf.dtype)


def leaf_energy(state: IntegratorState, metric: Metric):
    """Velocity and energy ``H = -log pi(x) + p . M^{-1} p / 2`` of a state (NaN -> inf)."""
    velocity = metric.velocity(state.momentum)
    energy = -state.logdensity + 0.5 * jnp.dot(state.momentum, velocity)
    energy = jnp.where(jnp.isnan(energy), jnp.inf, energy)
    return velocity, energy


def _select(predicate, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(predicate, a, b), on_true, on_false)


def _pick(values, one_hot):
    """``values[index]`` for a one-hot mask over the leading axis (no gather under vmap)."""
    mask = one_hot.reshape(one_hot.shape + (1,) * (values.ndim - 1))
    if values.dtype == jnp.bool_:
        return jnp.any(mask & values, axis=0)
    return jnp.sum(jnp.where(mask, values, jnp.zeros((), values.dtype)), axis=0,
                   dtype=values.dtype)


class _Checkpoint(NamedTuple):
    """What checkpoint slot ``popcount(s)`` holds for the even leaf ``s`` that wrote it.

    Velocities are not stored: a leaf's velocity is ``metric.velocity`` of its momentum,
    recomputed (the same function of the same value) where a check reads it, which
    saves two of five rows of writes per leaf."""

    momentum: jax.Array
    previous_momentum: jax.Array  # of leaf s - 1
    sum_before: jax.Array  # sum of the subtree's momenta before leaf s


def _trailing_ones(i):
    # (~i & (i + 1)) isolates the lowest zero bit 2**k; 2**k - 1 has k one-bits.
    return lax.population_count((~i & (i + 1)) - 1)


class _Fields(NamedTuple):
    """Everything one NUTS trajectory carries between two leapfrog steps (unpacked).

    The trajectory merged so far is ``left``/``right`` (its two ends), ``momentum_sum``,
    ``proposal`` and ``log_weight``; the subtree being built (doubling number ``depth``,
    next leaf ``leaf``, direction ``go_right``) is ``end`` (its last state), the
    ``subtree_*`` fields and the checkpoint slots. ``done`` is raised by the step that
    ends the transition.

    The last leaf and the decisions taken on it (``pending_*``) are applied to the
    vector-valued fields at the start of the next step (or by :func:`trajectory_result`):
    as loop-carried values the decisions are computed once per trajectory, whereas XLA
    on CPU would otherwise fuse the whole scalar decision logic into, and recompute it
    for, every element of every select that depends on it.
    """

    depth: jax.Array
    leaf: jax.Array
    done: jax.Array
    initial_energy: jax.Array
    # randomness of every depth, drawn when the trajectory starts
    go_right_by_depth: jax.Array
    leaf_key_by_depth: jax.Array
    merge_uniform_by_depth: jax.Array
    go_right: jax.Array
    leaf_key: jax.Array
    leaf_uniform: jax.Array
    # the merged trajectory
    left: TrajectoryEnd
    right: TrajectoryEnd
    momentum_sum: jax.Array
    proposal: Proposal
    log_weight: jax.Array
    # the subtree being built
    end: TrajectoryEnd
    subtree_momentum_sum: jax.Array
    subtree_proposal: Proposal
    subtree_log_weight: jax.Array
    subtree_sum_acceptance: jax.Array  # added to the total when the subtree ends
    subtree_sum_symmetric_acceptance: jax.Array
    # checkpoints, indexed by the popcount of the even leaf that wrote them (last: scratch)
    checkpoints: jax.Array  # (max_tree_depth + 1, 3, d): rows named by _Checkpoint
    # the last leaf is ``end``; what to do with it
    pending_energy: jax.Array
    pending_take_leaf: jax.Array
    pending_take_subtree: jax.Array
    pending_merge_left: jax.Array
    pending_merge_right: jax.Array
    pending_restart: jax.Array
    # totals
    num_steps: jax.Array
    sum_acceptance: jax.Array
    sum_symmetric_acceptance: jax.Array
    is_divergent: jax.Array
    is_turning: jax.Array


class _Layout(NamedTuple):
    treedef: object
    positions: tuple  # per leaf of _Fields: (group, index within the group, leaf ndim)


@jax.tree_util.register_pytree_node_class
class TrajectoryState:
    """A trajectory between two leapfrog steps, packed into a few arrays.

    The fields (see ``_Fields``) are grouped by shape and dtype and stacked, so that a
    compiled step writes a handful of arrays instead of ~50: on CPU
    every written array is a kernel launch (and under ``vmap`` a select), which for small
    models costs more than the leapfrog step itself. ``done`` is raised by the step that
    ends the transition; read the result with :func:`trajectory_result`. Works batched
    (leading axes) and unbatched alike.
    """

    def __init__(self, groups, layout: _Layout):
        self.groups = tuple(groups)
        self.layout = layout

    def tree_flatten(self):
        return self.groups, self.layout

    @classmethod
    def tree_unflatten(cls, layout, groups):
        return cls(groups, layout)

    def fields(self) -> _Fields:
        leaves = []
        for group, index, ndim in self.layout.positions:
            stacked = self.groups[group]  # (*batch, members of the group, *leaf shape)
            batch_ndim = stacked.ndim - 1 - ndim
            leaves.append(stacked[(slice(None),) * batch_ndim + (index,)])
        return jax.tree.unflatten(self.layout.treedef, leaves)

    @property
    def done(self):
        return self.fields().done

    @property
    def num_steps(self):
        return self.fields().num_steps


def _pack(fields: _Fields) -> TrajectoryState:
    leaves, treedef = jax.tree.flatten(fields)
    kinds = [(jnp.shape(leaf), jnp.result_type(leaf).name) for leaf in leaves]
    groups, positions = [], [None] * len(leaves)
    for group, kind in enumerate(sorted(set(kinds))):
        members = [i for i, k in enumerate(kinds) if k == kind]
        if len(members) == 1:  # a leading axis of one: a reshape, not a copy
            groups.append(jnp.expand_dims(leaves[members[0]], 0))
        else:
            groups.append(jnp.stack([leaves[i] for i in members]))
        for index, i in enumerate(members):
            positions[i] = (group, index, len(kind[0]))
    return TrajectoryState(groups, _Layout(treedef, tuple(positions)))


def trajectory_init(
    key, initial_state: IntegratorState, metric: Metric, *, max_tree_depth: int = 10,
    storage: TrajectoryState | None = None,
) -> TrajectoryState:
    """Start a trajectory at ``initial_state`` (with its freshly drawn momentum).

    ``key`` is the tree key (not the momentum key); the direction, leaf and merge
    randomness of all ``max_tree_depth`` doublings is derived from it here. ``storage``,
    an earlier trajectory of the same shapes, lends its checkpoint array: a slot is
    always written before it is read, so its old contents do not matter, and a loop
    that restarts trajectories in place then selects the array with itself (no copy).
    """
    position = initial_state.position
    dtype = jnp.result_type(position)
    velocity, initial_energy = leaf_energy(initial_state, metric)
    origin = TrajectoryEnd(initial_state, velocity)
    go_right_by_depth, leaf_keys, merge_uniform_by_depth = draws_by_depth(
        key, max_tree_depth, dtype)
    proposal = Proposal(position, initial_state.logdensity, initial_state.logdensity_grad,
                        initial_energy)
    if storage is not None:
        checkpoints = storage.fields().checkpoints
    else:
        checkpoints = jnp.zeros((max_tree_depth + 1, len(_Checkpoint._fields))
                                + position.shape, dtype)
    zero = jnp.zeros((), dtype)
    false = jnp.zeros((), bool)
    return _pack(_Fields(
        depth=jnp.int32(0),
        leaf=jnp.int32(0),
        done=false,
        initial_energy=initial_energy,
        go_right_by_depth=go_right_by_depth,
        leaf_key_by_depth=leaf_keys,
        merge_uniform_by_depth=merge_uniform_by_depth,
        go_right=go_right_by_depth[0],
        leaf_key=leaf_keys[0],
        leaf_uniform=leaf_uniform(leaf_keys[0], 0, dtype),
        left=origin,
        right=origin,
        momentum_sum=initial_state.momentum,
        proposal=proposal,
        log_weight=zero,
        end=origin,
        subtree_momentum_sum=jnp.zeros_like(position),
        subtree_proposal=proposal,
        subtree_log_weight=jnp.full((), -jnp.inf, dtype),
        subtree_sum_acceptance=zero,
        subtree_sum_symmetric_acceptance=zero,
        checkpoints=checkpoints,
        pending_energy=initial_energy,
        pending_take_leaf=false,
        pending_take_subtree=false,
        pending_merge_left=false,
        pending_merge_right=false,
        pending_restart=false,
        num_steps=jnp.int32(0),
        sum_acceptance=zero,
        sum_symmetric_acceptance=zero,
        is_divergent=false,
        is_turning=false,
    ))


def _apply_pending(state: _Fields) -> _Fields:
    """Apply the last leaf's decisions to the vector-valued fields."""
    leaf = state.end
    leaf_proposal = Proposal(leaf.state.position, leaf.state.logdensity,
                             leaf.state.logdensity_grad, state.pending_energy)
    subtree_proposal = _select(state.pending_take_leaf, leaf_proposal, state.subtree_proposal)
    proposal = _select(state.pending_take_subtree, subtree_proposal, state.proposal)
    left = _select(state.pending_merge_left, leaf, state.left)
    right = _select(state.pending_merge_right, leaf, state.right)
    merged = state.pending_merge_left | state.pending_merge_right
    restart = state.pending_restart
    end = _select(restart, _select(state.go_right, right, left), state.end)
    dtype = state.subtree_momentum_sum.dtype
    return state._replace(
        left=left,
        right=right,
        momentum_sum=jnp.where(
            merged, state.momentum_sum + state.subtree_momentum_sum, state.momentum_sum
        ),
        proposal=proposal,
        end=end,
        subtree_momentum_sum=jnp.where(
            restart, jnp.zeros((), dtype), state.subtree_momentum_sum
        ),
        subtree_proposal=subtree_proposal,
        pending_take_leaf=jnp.zeros_like(state.pending_take_leaf),
        pending_take_subtree=jnp.zeros_like(state.pending_take_subtree),
        pending_merge_left=jnp.zeros_like(state.pending_merge_left),
        pending_merge_right=jnp.zeros_like(state.pending_merge_right),
        pending_restart=jnp.zeros_like(state.pending_restart),
    )


def trajectory_step(
    state: TrajectoryState,
    step_fn: Callable[[IntegratorState, jax.Array], IntegratorState],
    metric: Metric,
    step_size,
    *,
    max_tree_depth: int = 10,
    divergence_threshold: float = 1000.0,
) -> TrajectoryState:
    """Advance a trajectory that is not ``done`` by exactly one leapfrog step.

    The step takes the next leaf of the current subtree, updates its progressive sample
    and checkpoints, checks the U-turns of the sub-subtrees that end at that leaf, and,
    if the subtree is finished (complete, divergent or turning), merges it into the
    trajectory and either sets ``done`` or starts the next doubling.
    """
    state = _apply_pending(state.fields())
    dtype = jnp.result_type(state.end.state.position)
    i = state.leaf
    initial_energy = state.initial_energy
    depths = jnp.arange(max_tree_depth, dtype=jnp.int32)

    # -- the leaf
    direction = jnp.where(state.go_right, 1.0, -1.0).astype(dtype)
    new = step_fn(state.end.state, direction * step_size)
    velocity, energy = leaf_energy(new, metric)
    log_weight_leaf = initial_energy - energy
    is_divergent = (energy - initial_energy) > divergence_threshold
    acceptance, symmetric_acceptance = leaf_acceptance(log_weight_leaf)

    # -- uniform progressive sampling within the subtree
    first = i == 0
    subtree_log_weight = jnp.where(
        first, log_weight_leaf, jnp.logaddexp(state.subtree_log_weight, log_weight_leaf)
    )
    take_leaf = first | (state.leaf_uniform < jnp.exp(log_weight_leaf - subtree_log_weight))
    # summed per subtree, then into the total: the nested tree's order of additions
    subtree_sum_acceptance = jnp.where(
        first, jnp.zeros((), dtype), state.subtree_sum_acceptance) + acceptance
    subtree_sum_symmetric_acceptance = jnp.where(
        first, jnp.zeros((), dtype), state.subtree_sum_symmetric_acceptance
    ) + symmetric_acceptance
    sum_before = state.subtree_momentum_sum
    subtree_momentum_sum = sum_before + new.momentum

    # -- checkpoint: even leaves write slot popcount(i), odd ones the scratch slot (one
    # in-place row update); no check below reads the slot written at its own leaf
    count = lax.population_count(i)
    slot = jnp.where(i % 2 == 0, count, max_tree_depth)
    row = jnp.stack(_Checkpoint(new.momentum, state.end.state.momentum, sum_before))
    checkpoints = lax.dynamic_update_index_in_dim(state.checkpoints, row, slot, 0)

    # -- U-turn checks of the sub-subtrees of sizes 2, 4, ..., 2**k ending at leaf i;
    # the one of size 2**level starts in slot count - level, its middle in the next slot
    num_checks = jnp.where(is_divergent, 0, _trailing_ones(i))

    def check_cond(carry):
        level, turning = carry
        return (level <= num_checks) & ~turning

    def check_body(carry):
        level, _ = carry
        # the checkpoints of the sub-subtree's first and middle leaves
        start = _Checkpoint(*lax.dynamic_index_in_dim(checkpoints, count - level, 0, False))
        mid = _Checkpoint(*lax.dynamic_index_in_dim(checkpoints, count - level + 1, 0, False))
        velocity_start = metric.velocity(start.momentum)
        sum_before_start = start.sum_before
        turning = metric.check_turning(
            velocity_start, velocity, subtree_momentum_sum - sum_before_start
        )
        # Stan's extra checks across the two halves (redundant for size 2)
        sum_before_mid = mid.sum_before
        turning_left = metric.check_turning(
            velocity_start,
            metric.velocity(mid.momentum),
            sum_before_mid + mid.momentum - sum_before_start,
        )
        turning_right = metric.check_turning(
            metric.velocity(mid.previous_momentum),
            velocity,
            subtree_momentum_sum - sum_before_mid + mid.previous_momentum,
        )
        turning = turning | ((level >= 2) & (turning_left | turning_right))
        return level + 1, turning

    _, is_turning = lax.while_loop(check_cond, check_body, (jnp.int32(1), jnp.zeros((), bool)))

    # -- is the subtree finished? then merge it (biased progressive sampling)
    num_leaves = jnp.left_shift(jnp.int32(1), state.depth)
    invalid = is_divergent | is_turning
    finished = (i + 1 == num_leaves) | invalid
    merge = finished & ~invalid
    merge_uniform = _pick(state.merge_uniform_by_depth, depths == state.depth)
    take_subtree = merge & (merge_uniform < jnp.exp(subtree_log_weight - state.log_weight))
    start = _select(state.go_right, state.right, state.left)
    far_old = _select(state.go_right, state.left, state.right)
    # slot 0 holds the subtree's first leaf (written at leaf 0, never overwritten)
    subtree_first = _Checkpoint(*checkpoints[0])
    merged_turning = (
        metric.check_turning(
            far_old.velocity, velocity, state.momentum_sum + subtree_momentum_sum
        )
        | metric.check_turning(
            far_old.velocity, metric.velocity(subtree_first.momentum),
            state.momentum_sum + subtree_first.momentum,
        )
        | metric.check_turning(
            start.velocity, velocity, subtree_momentum_sum + start.state.momentum
        )
    )
    depth = state.depth + merge.astype(jnp.int32)
    done = finished & (invalid | merged_turning | (depth >= max_tree_depth))
    restart = finished & ~done
    go_right = jnp.where(restart, _pick(state.go_right_by_depth, depths == depth), state.go_right)
    next_leaf = jnp.where(restart, 0, i + 1)
    leaf_key = jnp.where(
        restart, _pick(state.leaf_key_by_depth, depths == depth), state.leaf_key
    )

    return _pack(state._replace(
        depth=depth,
        leaf=next_leaf,
        done=done,
        go_right=go_right,
        leaf_key=leaf_key,
        leaf_uniform=leaf_uniform(leaf_key, next_leaf, dtype),
        log_weight=jnp.where(
            merge, jnp.logaddexp(state.log_weight, subtree_log_weight), state.log_weight
        ),
        end=TrajectoryEnd(new, velocity),
        subtree_momentum_sum=subtree_momentum_sum,
        subtree_log_weight=subtree_log_weight,
        checkpoints=checkpoints,
        pending_energy=energy,
        pending_take_leaf=take_leaf,
        pending_take_subtree=take_subtree,
        pending_merge_left=merge & ~state.go_right,
        pending_merge_right=merge & state.go_right,
        pending_restart=restart,
        num_steps=state.num_steps + 1,
        subtree_sum_acceptance=subtree_sum_acceptance,
        sum_acceptance=jnp.where(finished, state.sum_acceptance + subtree_sum_acceptance,
                                 state.sum_acceptance),
        subtree_sum_symmetric_acceptance=subtree_sum_symmetric_acceptance,
        sum_symmetric_acceptance=jnp.where(
            finished, state.sum_symmetric_acceptance + subtree_sum_symmetric_acceptance,
            state.sum_symmetric_acceptance),
        is_divergent=is_divergent,
        is_turning=is_turning | (merge & merged_turning),
    ))


def trajectory_result(state: TrajectoryState) -> TrajectoryResult:
    """The proposal and diagnostics of a trajectory (meaningful once ``done``)."""
    state = _apply_pending(state.fields())
    return TrajectoryResult(
        proposal=state.proposal,
        tree_depth=state.depth,
        num_steps=state.num_steps,
        sum_acceptance=state.sum_acceptance,
        sum_symmetric_acceptance=state.sum_symmetric_acceptance,
        is_divergent=state.is_divergent,
        is_turning=state.is_turning,
    )


def build_trajectory_stepwise(
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

    A ``lax.while_loop`` of :func:`trajectory_step` from :func:`trajectory_init`; the
    same trajectory as :func:`build_trajectory`, bit for bit (same arithmetic, same
    random numbers). Slower on CPU with vectorized chains (see the module docstring).

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
    state = trajectory_init(key, initial_state, metric, max_tree_depth=max_tree_depth)
    step = functools.partial(
        trajectory_step,
        step_fn=step_fn,
        metric=metric,
        step_size=step_size,
        max_tree_depth=max_tree_depth,
        divergence_threshold=divergence_threshold,
    )
    final = lax.while_loop(lambda s: ~s.done, step, state)
    return trajectory_result(final)


class _Subtree(NamedTuple):
    far_end: TrajectoryEnd
    near_momentum: jax.Array
    near_velocity: jax.Array
    momentum_sum: jax.Array
    proposal: Proposal
    log_weight: jax.Array
    num_steps: jax.Array
    sum_acceptance: jax.Array
    sum_symmetric_acceptance: jax.Array
    is_divergent: jax.Array
    is_turning: jax.Array


class _SubtreeCarry(NamedTuple):
    leaf: jax.Array
    end: TrajectoryEnd
    proposal: Proposal
    log_weight: jax.Array
    momentum_sum: jax.Array
    sum_acceptance: jax.Array
    sum_symmetric_acceptance: jax.Array
    is_divergent: jax.Array
    is_turning: jax.Array
    # checkpoints (max_tree_depth + 1, 3, d), rows named by _Checkpoint, indexed by the
    # popcount of the even leaf that wrote them (last row: scratch); one array, so that a
    # leaf writes one row (under vmap the batched loop copies and selects every array)
    checkpoints: jax.Array


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
    checkpoints = jnp.zeros((max_tree_depth + 1, len(_Checkpoint._fields)) + position.shape,
                            dtype)

    def cond(carry: _SubtreeCarry):
        return (carry.leaf < num_leaves) & ~carry.is_divergent & ~carry.is_turning

    def body(carry: _SubtreeCarry) -> _SubtreeCarry:
        i = carry.leaf
        state = step_fn(carry.end.state, signed_step_size)
        velocity, energy = leaf_energy(state, metric)
        log_weight_leaf = initial_energy - energy
        is_divergent = (energy - initial_energy) > divergence_threshold
        acceptance, symmetric_acceptance = leaf_acceptance(log_weight_leaf)

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

        row = jnp.stack(_Checkpoint(state.momentum, carry.end.state.momentum,
                                    carry.momentum_sum))
        checkpoints = lax.dynamic_update_index_in_dim(carry.checkpoints, row, slot, 0)
        momentum_sum = carry.momentum_sum + state.momentum

        # U-turn checks of the sub-subtrees of sizes 2, 4, ..., 2**k ending at leaf i
        num_checks = jnp.where(is_divergent, 0, _trailing_ones(i))

        def check_cond(c):
            level, turning = c
            return (level <= num_checks) & ~turning

        def check_body(c):
            level, _ = c
            start = _Checkpoint(*lax.dynamic_index_in_dim(checkpoints, count - level, 0,
                                                          False))
            mid = _Checkpoint(*lax.dynamic_index_in_dim(checkpoints, count - level + 1, 0,
                                                        False))
            velocity_start = metric.velocity(start.momentum)
            turning = metric.check_turning(
                velocity_start, velocity, momentum_sum - start.sum_before
            )
            # Stan's extra checks across the two halves (redundant for size 2)
            turning_left = metric.check_turning(
                velocity_start,
                metric.velocity(mid.momentum),
                mid.sum_before + mid.momentum - start.sum_before,
            )
            turning_right = metric.check_turning(
                metric.velocity(mid.previous_momentum),
                velocity,
                momentum_sum - mid.sum_before + mid.previous_momentum,
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
            sum_symmetric_acceptance=carry.sum_symmetric_acceptance + symmetric_acceptance,
            is_divergent=is_divergent,
            is_turning=is_turning,
            checkpoints=checkpoints,
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
        sum_symmetric_acceptance=jnp.zeros((), dtype),
        is_divergent=jnp.zeros((), bool),
        is_turning=jnp.zeros((), bool),
        checkpoints=checkpoints,
    )
    final = lax.while_loop(cond, body, initial)
    return _Subtree(
        far_end=final.end,
        near_momentum=final.checkpoints[0, 0],
        near_velocity=metric.velocity(final.checkpoints[0, 0]),
        momentum_sum=final.momentum_sum,
        proposal=final.proposal,
        log_weight=final.log_weight,
        num_steps=final.leaf,
        sum_acceptance=final.sum_acceptance,
        sum_symmetric_acceptance=final.sum_symmetric_acceptance,
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
    sum_symmetric_acceptance: jax.Array
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
    by_depth = draws_by_depth(key, max_tree_depth, dtype)

    def cond(carry: _TrajectoryCarry):
        return (carry.depth < max_tree_depth) & ~carry.is_divergent & ~carry.is_turning

    def body(carry: _TrajectoryCarry) -> _TrajectoryCarry:
        go_right, leaf_key, merge_uniform = (a[carry.depth] for a in by_depth)
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
        take = valid & (merge_uniform < jnp.exp(subtree.log_weight - carry.log_weight))
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
            sum_symmetric_acceptance=(carry.sum_symmetric_acceptance
                                      + subtree.sum_symmetric_acceptance),
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
        sum_symmetric_acceptance=jnp.zeros((), dtype),
        is_divergent=jnp.zeros((), bool),
        is_turning=jnp.zeros((), bool),
    )
    final = lax.while_loop(cond, body, initial)
    return TrajectoryResult(
        proposal=final.proposal,
        tree_depth=final.depth,
        num_steps=final.num_steps,
        sum_acceptance=final.sum_acceptance,
        sum_symmetric_acceptance=final.sum_symmetric_acceptance,
        is_divergent=final.is_divergent,
        is_turning=final.is_turning,
    )
