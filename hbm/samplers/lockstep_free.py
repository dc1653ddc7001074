"""NUTS for many members without lockstep: every member steps its own trajectory.

Vectorizing NUTS with ``vmap`` over chains (or over data sets) runs every transition as a
batched ``while_loop``: each member's tree waits until the longest tree of the batch is
done, so with ``n`` members a transition costs ``n * max(num_steps)`` gradient slots for
``sum(num_steps)`` useful gradients. Here the unit of work is one *leapfrog step* instead
of one transition (Radul et al. 2020, "Automatically batching control-intensive programs
for modern accelerators"; NUTS written as a finite-state machine as in Dance et al. 2025,
ICML): one shared ``lax.while_loop`` advances every member by exactly one leapfrog step of
its own trajectory per iteration (:func:`hbm.samplers.trajectory.trajectory_step`, vmapped
over members); a member whose trajectory ends records its draw and starts its next
transition (momentum draw, fresh tree) in the same iteration, so members never wait for
each other until their last transition.

Key scheme. Member ``m`` is given ``keys[m]``; its transition ``t`` runs exactly the
standard kernel (:func:`hbm.samplers.nuts.build_kernel`) with key
``jax.random.fold_in(keys[m], t)`` (split into the momentum and tree keys as that kernel
does). Hence, with the same keys, step sizes and mass matrices, each member's draws equal
those of ``kernel(fold_in(keys[m], t), state_t, ...)`` run for ``t = 0, 1, ...``.

Each member has its own step size and inverse mass matrix (and optionally its own data),
read at the start of each transition. A per-member warmup would add an adaptation state to
:class:`MemberState` and update it (dual averaging on ``acceptance_rate``, Welford on the
position) where a transition ends, next to where the draw is recorded, so that the next
transition starts with the adapted values.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from hbm.errors import ConfigurationError
from hbm.samplers.integrators import IntegratorState, velocity_verlet
from hbm.samplers.metrics import gaussian_euclidean
from hbm.samplers.nuts import HMCState, NUTSInfo, transition_outcome
from hbm.samplers.nuts import init as nuts_init
from hbm.samplers.trajectory import (
    TrajectoryState,
    trajectory_init,
    trajectory_result,
    trajectory_step,
)

__all__ = ["LockstepFreeResult", "MemberState", "run_lockstep_free",
           "lockstep_useful_leapfrog_fraction"]


class MemberState(NamedTuple):
    """One member between two loop iterations.

    Attributes
    ----------
    hmc_state : the chain's point at the start of the transition in progress.
    trajectory : the transition in progress (its tree, one leapfrog step at a time).
    momentum : the momentum drawn for it (reported as ``NUTSInfo.momentum``).
    transition : its index; ``num_transitions`` once the member has finished.
    """

    hmc_state: HMCState
    trajectory: TrajectoryState
    momentum: jax.Array
    transition: jax.Array


class LockstepFreeResult(NamedTuple):
    """Draws and diagnostics of :func:`run_lockstep_free`.

    Attributes
    ----------
    positions : (members, num_transitions, d), the state after each transition.
    logdensity : (members, num_transitions).
    infos : :class:`~hbm.samplers.nuts.NUTSInfo`, each field with leading axes
        (members, num_transitions).
    loop_iterations : iterations of the shared loop (= batched gradient evaluations).
    useful_leapfrog_fraction : ``sum(num_steps) / (members * loop_iterations)``.
    """

    positions: jax.Array
    logdensity: jax.Array
    infos: NUTSInfo
    loop_iterations: jax.Array
    useful_leapfrog_fraction: jax.Array


def lockstep_useful_leapfrog_fraction(num_steps) -> jax.Array:
    """Useful-gradient fraction of vmapped (lockstep) NUTS, from ``num_steps`` of shape
    (members, num_transitions): every transition costs every member the longest tree."""
    num_steps = jnp.asarray(num_steps)
    members = num_steps.shape[0]
    return jnp.sum(num_steps) / (members * jnp.sum(jnp.max(num_steps, axis=0)))


def _per_member(value, members, name, member_ndim):
    """Broadcast a shared value to a leading members axis, or check the given one."""
    value = jnp.asarray(value)
    if value.ndim == member_ndim:
        return jnp.broadcast_to(value, (members,) + value.shape)
    if value.ndim == member_ndim + 1 and value.shape[0] == members:
        return value
    raise ConfigurationError(
        f"{name} must be shared by all members or have a leading axis of {members} "
        f"members, got shape {value.shape}")


def run_lockstep_free(
    keys,
    initial_positions,
    logdensity_fn: Callable,
    step_size,
    inverse_mass_matrix,
    num_transitions: int,
    *,
    max_tree_depth: int = 10,
    divergence_threshold: float = 1000.0,
    data: Any = None,
    integrator: Callable = velocity_verlet,
    metric: Callable = gaussian_euclidean,
) -> LockstepFreeResult:
    """Run ``num_transitions`` NUTS transitions for every member, without lockstep.

    Parameters
    ----------
    keys
        (members, 2) PRNG keys, one per member (see the module docstring for the scheme).
    initial_positions
        (members, d) starting points.
    logdensity_fn
        ``logdensity_fn(position)``, or ``logdensity_fn(position, data_m)`` when ``data``
        is given.
    step_size
        Scalar or (members,).
    inverse_mass_matrix
        (d,) / (d, d) shared, or (members, d) / (members, d, d) per member.
    num_transitions
        Transitions per member (>= 1).
    max_tree_depth, divergence_threshold
        As in :func:`hbm.samplers.nuts.build_kernel`.
    data
        Optional pytree whose leaves have a leading members axis: member ``m``'s data.
    integrator, metric
        As in :func:`hbm.samplers.nuts.build_kernel`.

    Returns
    -------
    LockstepFreeResult
    """
    if int(num_transitions) != num_transitions or num_transitions < 1:
        raise ConfigurationError(
            f"num_transitions must be an integer >= 1, got {num_transitions}")
    if int(max_tree_depth) != max_tree_depth or max_tree_depth < 1:
        raise ConfigurationError(f"max_tree_depth must be an integer >= 1, got {max_tree_depth}")
    if not divergence_threshold > 0:
        raise ConfigurationError(
            f"divergence_threshold must be positive, got {divergence_threshold}")
    initial_positions = jnp.asarray(initial_positions)
    if initial_positions.ndim != 2:
        raise ConfigurationError(
            f"initial_positions must have shape (members, d), got {initial_positions.shape}")
    members = initial_positions.shape[0]
    keys = jnp.asarray(keys)
    if keys.shape[0] != members:
        raise ConfigurationError(
            f"keys must have one key per member ({members}), got shape {keys.shape}")
    dtype = initial_positions.dtype
    step_size = _per_member(jnp.asarray(step_size, dtype), members, "step_size", 0)
    inverse_mass_matrix = jnp.asarray(inverse_mass_matrix, dtype)
    dim = initial_positions.shape[1]
    # (d,) diagonal and (d, d) dense are shared; (members, d) and (members, d, d) are not
    shared = inverse_mass_matrix.shape in ((dim,), (dim, dim))
    metric_ndim = inverse_mass_matrix.ndim if shared else inverse_mass_matrix.ndim - 1
    if metric_ndim not in (1, 2):
        raise ConfigurationError(
            f"inverse_mass_matrix must have shape (d,), (d, d), (members, d) or "
            f"(members, d, d), got {inverse_mass_matrix.shape}")
    inverse_mass_matrix = _per_member(
        inverse_mass_matrix, members, "inverse_mass_matrix", metric_ndim)
    return _run(keys, initial_positions, step_size, inverse_mass_matrix, data,
                logdensity_fn=logdensity_fn, num_transitions=int(num_transitions),
                max_tree_depth=int(max_tree_depth),
                divergence_threshold=float(divergence_threshold), integrator=integrator,
                metric=metric)


@functools.partial(jax.jit, static_argnames=(
    "logdensity_fn", "num_transitions", "max_tree_depth", "divergence_threshold",
    "integrator", "metric"))
def _run(keys, initial_positions, step_size, inverse_mass_matrix, data, *, logdensity_fn,
         num_transitions, max_tree_depth, divergence_threshold, integrator, metric):
    members, dim = initial_positions.shape
    dtype = initial_positions.dtype

    def member_logdensity(member_data):
        if member_data is None:
            return logdensity_fn
        return lambda position: logdensity_fn(position, member_data)

    def start(key, transition, hmc_state, inverse_mass):
        """Draw the momentum of ``transition`` and start its tree (as the kernel does)."""
        metric_fns = metric(inverse_mass)
        momentum_key, tree_key = jax.random.split(jax.random.fold_in(key, transition))
        momentum = metric_fns.sample_momentum(momentum_key, hmc_state.position)
        initial = IntegratorState(hmc_state.position, momentum, hmc_state.logdensity,
                                  hmc_state.logdensity_grad)
        trajectory = trajectory_init(tree_key, initial, metric_fns,
                                     max_tree_depth=max_tree_depth)
        return MemberState(hmc_state, trajectory, momentum, transition)

    def advance(member: MemberState, eps, inverse_mass, member_data):
        metric_fns = metric(inverse_mass)
        step_fn = integrator(member_logdensity(member_data), metric_fns.kinetic_energy,
                             metric_fns.velocity)
        trajectory = trajectory_step(
            member.trajectory, step_fn, metric_fns, eps, max_tree_depth=max_tree_depth,
            divergence_threshold=divergence_threshold)
        return member._replace(trajectory=trajectory)

    def finish(member: MemberState, inverse_mass):
        """The new chain state and the transition's info (as the kernel computes them)."""
        metric_fns = metric(inverse_mass)
        return transition_outcome(member.hmc_state, member.momentum,
                                  trajectory_result(member.trajectory), metric_fns)

    data_axes = None if data is None else 0
    initial_states = jax.vmap(
        lambda x, d: nuts_init(x, member_logdensity(d)), in_axes=(0, data_axes)
    )(initial_positions, data)
    members_state = jax.vmap(start, in_axes=(0, None, 0, 0))(
        keys, jnp.int32(0), initial_states, inverse_mass_matrix)

    # per-member, per-transition records
    info_shapes = jax.eval_shape(
        lambda m, im: finish(m, im)[1],
        jax.tree.map(lambda a: a[0], members_state), inverse_mass_matrix[0])
    infos = jax.tree.map(
        lambda s: jnp.zeros((members, num_transitions) + s.shape, s.dtype), info_shapes)
    positions = jnp.zeros((members, num_transitions, dim), dtype)
    logdensity = jnp.zeros((members, num_transitions), dtype)

    def record(buffer, transition, value, write):
        # buffer (T, ...) of one member: write value at row `transition` when `write`
        index = jnp.minimum(transition, num_transitions - 1)
        old = lax.dynamic_index_in_dim(buffer, index, 0, keepdims=False)
        return lax.dynamic_update_index_in_dim(buffer, jnp.where(write, value, old), index, 0)

    def iteration(carry):
        members_state, positions, logdensity, infos, loop_iterations = carry
        running = members_state.transition < num_transitions
        stepped = jax.vmap(advance, in_axes=(0, 0, 0, data_axes))(
            members_state, step_size, inverse_mass_matrix, data)
        members_state = jax.tree.map(
            lambda new, old: jnp.where(
                running.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
            stepped, members_state)
        finished = running & members_state.trajectory.done
        new_states, new_infos = jax.vmap(finish)(members_state, inverse_mass_matrix)
        transition = members_state.transition
        write = jax.vmap(record, in_axes=(0, 0, 0, 0))
        positions = write(positions, transition, new_states.position, finished)
        logdensity = write(logdensity, transition, new_states.logdensity, finished)
        infos = jax.tree.map(lambda buffer, value: write(buffer, transition, value, finished),
                             infos, new_infos)

        # members whose transition ended start the next one now
        def restart(members_state):
            next_transition = members_state.transition + 1
            restarted = jax.vmap(start)(keys, next_transition, new_states, inverse_mass_matrix)
            return jax.tree.map(
                lambda new, old: jnp.where(
                    finished.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                restarted, members_state)

        members_state = lax.cond(jnp.any(finished), restart, lambda s: s, members_state)
        return members_state, positions, logdensity, infos, loop_iterations + 1

    def keep_going(carry):
        return jnp.any(carry[0].transition < num_transitions)

    carry = (members_state, positions, logdensity, infos, jnp.int32(0))
    _, positions, logdensity, infos, loop_iterations = lax.while_loop(
        keep_going, iteration, carry)
    useful = jnp.sum(infos.num_steps) / (members * loop_iterations)
    return LockstepFreeResult(positions, logdensity, infos, loop_iterations, useful)
