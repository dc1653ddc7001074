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
each other until their last transition. That end-of-transition work (the draw, the
adaptation, the momentum and the fresh tree) is done only for the slots that need it: they
are gathered into a batch of ``slots // 8`` (every slot in the rare iteration where more
end), worked on and scattered back, so its cost follows the transitions that end, not
the number of slots (2.8x the data sets per second of doing it for every slot).

Key scheme. Member ``m`` is given ``keys[m]``; its transition ``t`` runs exactly the
standard kernel (:func:`hbm.samplers.nuts.build_kernel`) with key
``jax.random.fold_in(keys[m], t)`` (split into the momentum and tree keys as that kernel
does). Hence, with the same keys, step sizes and mass matrices, each member's draws equal
those of ``kernel(fold_in(keys[m], t), state_t, ...)`` run for ``t = 0, 1, ...``.

Each member has its own step size and inverse mass matrix (and optionally its own data),
read at the start of each transition. :func:`run_lockstep_free_chains` adds warmup: each
member carries the engine's per-chain :class:`~hbm.samplers.adaptation.WarmupState`, and
where one of its warmup transitions ends it applies the schedule's row for that
transition (:func:`~hbm.samplers.adaptation.warmup_adapt`) on its own clock, so members
adapt without waiting for each other; keyed as the engine keys its chains, it takes the
engine's decisions (to floating-point rounding of the adaptation's arithmetic).

Refilling. Without lockstep the loop still waits, once, for the member needing the most
gradients in all: where members differ (data sets of a simulation study, chains whose
early warmup is slow), that member can need twice the median's gradients, and half the
lanes idle on average. With ``slots`` below the number of members, only ``slots`` members
run at a time, and a slot whose member has made its last transition takes the next member
not yet started (its key, start and data) in the same iteration; draws are written per
member, so they do not depend on the slot (a work queue; the makespan is the total work
over the slots plus at most one member's, Graham 1969, "Bounds on multiprocessing timing
anomalies"). That one member is the tail: once no member waits and at most a quarter of
the slots still run, the running ones move to a loop a quarter as wide (down to 16
lanes), so the tail's iterations cost a quarter as much (with the same draws). The tail
is compacted with or without refilling (64 members in 64 slots end in 16).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from hbm.errors import ConfigurationError
from hbm.samplers.integrators import IntegratorState, velocity_verlet
from hbm.samplers.metrics import gaussian_euclidean, metric_from
from hbm.samplers.nuts import HMCState, NUTSInfo, transition_outcome
from hbm.samplers.nuts import init as nuts_init
from hbm.samplers.trajectory import (
    TrajectoryState,
    trajectory_init,
    trajectory_result,
    trajectory_step,
)

__all__ = ["LockstepFreeChains", "LockstepFreeResult", "MemberState", "run_lockstep_free",
           "run_lockstep_free_chains", "lockstep_useful_leapfrog_fraction"]


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
    useful_leapfrog_fraction : ``sum(num_steps)`` over the lanes' iterations (each
        loop's width times its iterations, summed over the loops of a compacted tail).
    """

    positions: jax.Array
    logdensity: jax.Array
    infos: NUTSInfo
    loop_iterations: jax.Array
    useful_leapfrog_fraction: jax.Array


class LockstepFreeChains(NamedTuple):
    """Draws and diagnostics of :func:`run_lockstep_free_chains`.

    Attributes
    ----------
    positions : (members, num_draws, d), the state after each sampling transition.
    logdensity : (members, num_draws).
    infos : :class:`~hbm.samplers.nuts.NUTSInfo` of the sampling transitions, each field
        with leading axes (members, num_draws).
    chains : the members' final :class:`~hbm.samplers.adaptation.WarmupState` (adapted
        step size and inverse mass matrix).
    warmup_steps, warmup_divergences : (members,) leapfrog steps and divergent
        transitions of warmup.
    loop_iterations : iterations of the shared loop (= batched gradient evaluations).
    useful_leapfrog_fraction : all members' leapfrog steps, warmup included, over the
        lanes' iterations (each loop's width times its iterations, summed over the loops
        of a compacted tail).
    """

    positions: jax.Array
    logdensity: jax.Array
    infos: NUTSInfo
    chains: Any
    warmup_steps: jax.Array
    warmup_divergences: jax.Array
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
    slots: int | None = None,
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
    slots
        How many members run at once (default: all). With fewer slots than members, a
        slot whose member is done takes the next one (see the module docstring); the
        draws do not change, and ``useful_leapfrog_fraction`` is over the slots'
        iterations (fewer in a compacted tail, see the module docstring).

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
                metric=metric, slots=_check_slots(slots, members))


def _check_slots(slots, members):
    if slots is None:
        return None
    if isinstance(slots, bool) or int(slots) != slots or slots < 1:
        raise ConfigurationError(f"slots must be an integer >= 1, got {slots!r}")
    return min(int(slots), members)


def run_lockstep_free_chains(
    warmup_keys,
    draw_keys,
    initial_chains,
    logdensity_fn: Callable,
    num_warmup: int,
    num_draws: int,
    flags,
    *,
    estimator,
    max_tree_depth: int = 10,
    divergence_threshold: float = 1000.0,
    target_accept: float = 0.8,
    data: Any = None,
    integrator: Callable = velocity_verlet,
    metric: Callable = metric_from,
    slots: int | None = None,
) -> LockstepFreeChains:
    """Warmup and sampling of many chains without lockstep, with the engine's decisions.

    Each member is a chain of :func:`hbm.inference.engine.build_chain_program`: started by
    its ``init`` (``initial_chains``, a :class:`~hbm.samplers.adaptation.WarmupState` per
    member), then ``num_warmup`` adapting transitions keyed by ``warmup_keys[m]`` and
    ``num_draws`` kept transitions keyed by ``draw_keys[m]``, exactly as the engine's
    ``run`` keys them (transition ``t``'s kernel and adaptation keys split from
    ``fold_in(key, t)``). Members adapt on their own clock: a member whose warmup
    transition ends applies the schedule's row for it
    (:func:`~hbm.samplers.adaptation.warmup_adapt`) and starts its next transition in the
    same loop iteration, so no member waits for another until the last transition.

    Parameters
    ----------
    warmup_keys, draw_keys
        (members, 2) PRNG keys.
    initial_chains
        Per-member warmup states (leading members axis).
    logdensity_fn
        ``logdensity_fn(position)``, or ``logdensity_fn(position, data_m)`` with ``data``.
    num_warmup, num_draws
        Transitions per member (``num_draws >= 1``).
    flags
        The :class:`~hbm.samplers.schedules.WarmupSchedule` of ``num_warmup`` iterations.
    estimator
        The engine's metric estimator
        (:func:`hbm.samplers.adaptation.metric_estimator`).
    max_tree_depth, divergence_threshold, target_accept, integrator, metric
        As the engine's kernel and adaptation.
    data
        Optional pytree with a leading members axis: member ``m``'s data.
    slots
        How many members run at once (default: all). With fewer, a slot whose member has
        made its last transition takes the next member not yet started, so the loop
        waits for the slowest members only once, at the end (the draws do not change;
        ``useful_leapfrog_fraction`` is over the slots' iterations, fewer in a
        compacted tail).

    Returns
    -------
    LockstepFreeChains

    Notes
    -----
    An iteration in which any member ends a warmup transition runs the adaptation step
    for every slot and keeps it where a member did end one (a batched select, as
    ``vmap`` runs a conditional). For the diagonal metrics that is a few vector
    operations; with ``"lowrank"`` or ``"dense"`` every slot's eigendecomposition or
    Cholesky factorization is then computed too, ``O(slots d^3)`` per such iteration.
    """
    if int(num_draws) != num_draws or num_draws < 1:
        raise ConfigurationError(f"num_draws must be an integer >= 1, got {num_draws}")
    if int(num_warmup) != num_warmup or num_warmup < 0:
        raise ConfigurationError(f"num_warmup must be an integer >= 0, got {num_warmup}")
    flags = jax.tree.map(jnp.asarray, flags)
    if any(a.shape != (int(num_warmup),) for a in flags):
        raise ConfigurationError(f"flags must hold {num_warmup} warmup iterations")
    warmup_keys = jnp.asarray(warmup_keys)
    slots = _check_slots(slots, warmup_keys.shape[0])
    return _run_chains(jnp.stack([warmup_keys, jnp.asarray(draw_keys)], 1),
                       initial_chains, flags, data, logdensity_fn=logdensity_fn,
                       num_warmup=int(num_warmup), num_draws=int(num_draws),
                       estimator=estimator, max_tree_depth=int(max_tree_depth),
                       divergence_threshold=float(divergence_threshold),
                       target_accept=float(target_accept), integrator=integrator,
                       metric=metric, slots=slots)


@functools.partial(jax.jit, static_argnames=(
    "logdensity_fn", "num_warmup", "num_draws", "estimator", "max_tree_depth",
    "divergence_threshold", "target_accept", "integrator", "metric", "slots"))
def _run_chains(keys, chains, flags, data, *, logdensity_fn, num_warmup, num_draws,
                estimator, max_tree_depth, divergence_threshold, target_accept, integrator,
                metric, slots):
    def phase_key(key, transition):
        # the engine's key of iteration `it` of a phase: split(fold_in(phase key, it))
        warm = transition < num_warmup
        phase = jnp.where(warm, key[0], key[1])
        return jax.random.split(
            jax.random.fold_in(phase, jnp.where(warm, transition, transition - num_warmup)))

    return _drive(keys, chains, _Adaptation(lambda k, t: phase_key(k, t)[1], flags,
                                            target_accept, estimator),
                  data, logdensity_fn=logdensity_fn, num_warmup=num_warmup,
                  num_draws=num_draws, kernel_key=lambda k, t: phase_key(k, t)[0],
                  max_tree_depth=max_tree_depth,
                  divergence_threshold=divergence_threshold, integrator=integrator,
                  metric=metric, slots=slots)


@functools.partial(jax.jit, static_argnames=(
    "logdensity_fn", "num_transitions", "max_tree_depth", "divergence_threshold",
    "integrator", "metric", "slots"))
def _run(keys, initial_positions, step_size, inverse_mass_matrix, data, *, logdensity_fn,
         num_transitions, max_tree_depth, divergence_threshold, integrator, metric, slots):
    data_axes = None if data is None else 0

    def initial_chain(position, eps, inverse_mass, member_data):
        hmc_state = nuts_init(position, _member_logdensity(logdensity_fn, member_data))
        return _FixedChain(hmc_state, eps, inverse_mass)

    chains = jax.vmap(initial_chain, in_axes=(0, 0, 0, data_axes))(
        initial_positions, step_size, inverse_mass_matrix, data)
    out = _drive(keys, chains, None, data, logdensity_fn=logdensity_fn, num_warmup=0,
                 num_draws=num_transitions, kernel_key=jax.random.fold_in,
                 max_tree_depth=max_tree_depth, divergence_threshold=divergence_threshold,
                 integrator=integrator, metric=metric, slots=slots)
    return LockstepFreeResult(out.positions, out.logdensity, out.infos, out.loop_iterations,
                              out.useful_leapfrog_fraction)


class _FixedChain(NamedTuple):
    """A chain without adaptation: its point, step size and inverse mass."""

    hmc_state: HMCState
    step_size: jax.Array
    inverse_mass_matrix: Any


class _Adaptation(NamedTuple):
    """What the loop needs to adapt during warmup (static except ``flags``)."""

    adapt_key: Callable  # (member key, transition) -> key for warmup_adapt
    flags: Any  # WarmupSchedule of (num_warmup,) arrays
    target_accept: float
    estimator: Any


def _member_logdensity(logdensity_fn, member_data):
    if member_data is None:
        return logdensity_fn
    return lambda position: logdensity_fn(position, member_data)


def _where(predicate, new, old):
    """Per-member select between two pytrees with a leading members axis."""
    return jax.tree.map(
        lambda a, b: jnp.where(predicate.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
        new, old)


def _drive(keys, chains, adaptation: _Adaptation | None, data, *, logdensity_fn,
           num_warmup, num_draws, kernel_key, max_tree_depth, divergence_threshold,
           integrator, metric, slots=None) -> LockstepFreeChains:
    """The shared loop: ``num_warmup + num_draws`` transitions per member, one leapfrog
    step of each member's own tree per iteration.

    ``chains`` holds per member (leading axis) a state with ``hmc_state``, ``step_size``
    and ``inverse_mass_matrix`` (a :class:`_FixedChain` or, with ``adaptation``, a
    :class:`~hbm.samplers.adaptation.WarmupState`). Transition ``t`` of member ``m`` runs
    the kernel with key ``kernel_key(keys[m], t)``; where it ends, a warmup transition
    (``t < num_warmup``) applies :func:`~hbm.samplers.adaptation.warmup_adapt` with the
    schedule's row ``t`` and the key ``adaptation.adapt_key(keys[m], t)``, and a sampling
    transition records its draw at row ``t - num_warmup``.

    With ``slots`` below the number of members, only ``slots`` members run at a time: a
    slot whose member has made its last transition takes the next member not yet started
    (its key, start and data) in the same iteration, so the loop waits for stragglers only
    at the very end. Each member's draws do not depend on the slot it ran in.
    """
    from hbm.samplers.adaptation import warmup_adapt

    members, dim = chains.hmc_state.position.shape
    slots = members if slots is None else min(int(slots), members)
    refills = slots < members
    # slots carry their member's index and data when they can change members: refilled,
    # or moved into a narrower loop for the tail (see below)
    movable = refills or slots // _TAIL_SHRINK >= _TAIL_MIN_LANES
    dtype = chains.hmc_state.position.dtype
    total = num_warmup + num_draws
    data_axes = None if data is None else 0

    def start(key, transition, chain, storage=None):
        """Draw the momentum of ``transition`` and start its tree (as the kernel does);
        ``storage``: the member's previous tree, whose checkpoint array is reused."""
        metric_fns = metric(chain.inverse_mass_matrix)
        momentum_key, tree_key = jax.random.split(kernel_key(key, transition))
        hmc_state = chain.hmc_state
        momentum = metric_fns.sample_momentum(momentum_key, hmc_state.position)
        initial = IntegratorState(hmc_state.position, momentum, hmc_state.logdensity,
                                  hmc_state.logdensity_grad)
        trajectory = trajectory_init(tree_key, initial, metric_fns,
                                     max_tree_depth=max_tree_depth, storage=storage)
        return MemberState(hmc_state, trajectory, momentum, transition)

    def advance(member: MemberState, chain, member_data):
        metric_fns = metric(chain.inverse_mass_matrix)
        step_fn = integrator(_member_logdensity(logdensity_fn, member_data),
                             metric_fns.kinetic_energy, metric_fns.velocity)
        trajectory = trajectory_step(
            member.trajectory, step_fn, metric_fns, chain.step_size,
            max_tree_depth=max_tree_depth, divergence_threshold=divergence_threshold)
        return member._replace(trajectory=trajectory)

    def finish(member: MemberState, chain):
        """The new chain state and the transition's info (as the kernel computes them)."""
        metric_fns = metric(chain.inverse_mass_matrix)
        return transition_outcome(member.hmc_state, member.momentum,
                                  trajectory_result(member.trajectory), metric_fns)

    def adapted(key, chain, hmc_state, info, transition, member_data):
        index = jnp.clip(transition, 0, num_warmup - 1)
        flags = jax.tree.map(lambda a: a[index], adaptation.flags)
        return warmup_adapt(
            adaptation.adapt_key(key, transition), chain, hmc_state, info,
            _member_logdensity(logdensity_fn, member_data), flags,
            transition == num_warmup - 1, target_accept=adaptation.target_accept,
            estimator=adaptation.estimator)

    def first(tree):
        return jax.tree.map(lambda a: a[:slots], tree)

    slot = _Slots(
        member=jnp.arange(slots, dtype=jnp.int32), keys=keys[:slots],
        data=first(data) if movable else None, chains=first(chains),
        state=jax.vmap(start, in_axes=(0, None, 0))(keys[:slots], jnp.int32(0),
                                                    first(chains)))
    info_shapes = jax.eval_shape(
        lambda m, c: finish(m, c)[1],
        jax.tree.map(lambda a: a[0], slot.state), jax.tree.map(lambda a: a[0], chains))
    # the result, filled in as members make draws; loop_iterations counts the iterations
    outputs = LockstepFreeChains(
        positions=jnp.zeros((members, num_draws, dim), dtype),
        logdensity=jnp.zeros((members, num_draws), dtype),
        infos=jax.tree.map(
            lambda s: jnp.zeros((members, num_draws) + s.shape, s.dtype), info_shapes),
        chains=chains,
        warmup_steps=jnp.zeros((members,), jnp.int32),
        warmup_divergences=jnp.zeros((members,), jnp.int32),
        loop_iterations=jnp.int32(0),
        useful_leapfrog_fraction=jnp.zeros((), dtype))

    def refill(slot, next_member, completed):
        """Slots whose member is done take the next members not yet started."""
        member = next_member + jnp.cumsum(completed, dtype=jnp.int32) - 1
        taken = completed & (member < members)
        member = jnp.where(taken, member, 0).astype(jnp.int32)
        fresh = _Slots(member=member, keys=keys[member],
                       data=jax.tree.map(lambda a: a[member], data),
                       chains=jax.tree.map(lambda a: a[member], chains),
                       state=None)
        fresh = fresh._replace(state=jax.vmap(start, in_axes=(0, None, 0, 0))(
            fresh.keys, jnp.int32(0), fresh.chains, slot.state.trajectory))
        return (_where(taken, fresh, slot),
                next_member + jnp.sum(taken, dtype=jnp.int32))

    def build_iteration(slots):
        """The loop body for ``slots`` lanes (a narrower one after the tail is
        compacted)."""
        def end_transitions(size):
            """The loop's work where at most ``size`` slots ended a transition: gather those
            slots (``size`` of them, padded with an out-of-range index), record their draws,
            adapt (in warmup), start their next transitions and scatter them back."""
            def run(operand):
                slot, outputs, finished = operand
                index = jnp.nonzero(finished, size=size, fill_value=slots)[0]
                valid = index < slots
                safe = jnp.where(valid, index, 0)

                def gather(tree):
                    return jax.tree.map(lambda a: a[safe], tree)

                def scatter(tree, values):
                    return jax.tree.map(lambda a, v: a.at[index].set(v, mode="drop"),
                                        tree, values)

                state, chains = gather(slot.state), gather(slot.chains)
                slot_keys = slot.keys[safe]
                member = slot.member[safe]
                member_data = (None if data is None
                               else gather(slot.data if movable else data))
                transition = state.transition
                new_states, new_infos = jax.vmap(finish)(state, chains)
                in_warmup = transition < num_warmup
                # one scatter per buffer: (member, row) where a draw is made, out of bounds
                # (and dropped) elsewhere
                sampled = valid & ~in_warmup
                member_or_none = jnp.where(sampled, member, members)
                row = jnp.clip(transition - num_warmup, 0, num_draws - 1)

                def write(buffer, value):
                    return buffer.at[member_or_none, row].set(value, mode="drop")

                warming = valid & in_warmup
                warm_member = jnp.where(warming, member, members)
                outputs = outputs._replace(
                    positions=write(outputs.positions, new_states.position),
                    logdensity=write(outputs.logdensity, new_states.logdensity),
                    infos=jax.tree.map(write, outputs.infos, new_infos),
                    warmup_steps=outputs.warmup_steps.at[warm_member].add(
                        new_infos.num_steps, mode="drop"),
                    warmup_divergences=outputs.warmup_divergences.at[warm_member].add(
                        new_infos.is_divergent.astype(jnp.int32), mode="drop"))

                moved = chains._replace(hmc_state=new_states)
                if hasattr(moved, "iteration"):
                    moved = moved._replace(iteration=chains.iteration + 1)
                if adaptation is not None and num_warmup > 0:
                    adapting = jax.vmap(adapted, in_axes=(0, 0, 0, 0, 0, data_axes))(
                        slot_keys, chains, new_states, new_infos, transition, member_data)
                    moved = _where(in_warmup, adapting, moved)
                restarted = jax.vmap(start)(slot_keys, transition + 1, moved,
                                            state.trajectory)
                slot = slot._replace(state=scatter(slot.state, restarted),
                                     chains=scatter(slot.chains, moved))
                completed = valid & (transition + 1 == total)  # the member's last one
                if movable:  # keep the final chain states of members that are done
                    final = jnp.where(completed, member, members)
                    outputs = lax.cond(jnp.any(completed), lambda o: o._replace(
                        chains=jax.tree.map(
                            lambda buffer, value: buffer.at[final].set(value, mode="drop"),
                            o.chains, moved)), lambda o: o, outputs)
                done = jnp.zeros((slots,), bool).at[index].set(completed, mode="drop")
                return slot, outputs, done  # the slots whose member is done
            return run

        # the work of ending transitions is sized by how many slots end one in an
        # iteration: a few, in a long run (every tree takes several leapfrog steps), so an
        # iteration where 3 of 64 slots end a transition gathers 8 slots (draws 8 momenta,
        # moves 8 states), not 64; the rare iteration with more takes every slot
        small = max(1, slots // _END_FRACTION)
        ends = [end_transitions(small)] if small < slots else []
        ends.append(end_transitions(slots))

        def iteration(carry: _Loop) -> _Loop:
            slot, outputs = carry.slots, carry.outputs
            slot_data = slot.data if movable else data
            running = slot.state.transition < total
            # a slot whose member is done steps on too (its results are never read): that
            # saves a select of the whole trajectory state per iteration
            state = jax.vmap(advance, in_axes=(0, 0, data_axes))(slot.state, slot.chains,
                                                                 slot_data)
            finished = running & state.trajectory.done
            operand = (slot._replace(state=state), outputs, finished)
            if len(ends) == 1:
                slot, outputs, completed = ends[0](operand)
            else:  # one two-way conditional: an n-way or nested one makes XLA copy the
                # loop's buffers every iteration (measured: 3-5x slower)
                slot, outputs, completed = lax.cond(
                    jnp.sum(finished, dtype=jnp.int32) <= small, ends[0], ends[1], operand)
            next_member = carry.next_member
            if refills:
                slot, next_member = lax.cond(
                    jnp.any(completed) & (next_member < members), refill,
                    lambda s, n, c: (s, n), slot, next_member, completed)
            iterations = outputs.loop_iterations + 1
            return _Loop(slot, outputs._replace(loop_iterations=iterations), next_member)
        return iteration

    # the tail: once no member is waiting and few lanes are still running, the running
    # ones move to a loop a quarter as wide (lanes // _TAIL_SHRINK), down to
    # _TAIL_MIN_LANES, so the last members do not keep every lane's iteration busy
    widths = [slots]
    if movable:
        while widths[-1] // _TAIL_SHRINK >= _TAIL_MIN_LANES:
            widths.append(widths[-1] // _TAIL_SHRINK)
    carry = _Loop(slot, outputs, jnp.int32(slots))
    lane_iterations = jnp.zeros((), dtype)
    for phase, width in enumerate(widths):
        narrower = widths[phase + 1] if phase + 1 < len(widths) else None

        def keep_going(carry: _Loop, narrower=narrower):
            running = carry.slots.state.transition < total
            going = jnp.any(running)
            if narrower is not None:
                going = going & ~((carry.next_member >= members)
                                  & (jnp.sum(running, dtype=jnp.int32) <= narrower))
            return going

        before = carry.outputs.loop_iterations
        carry = lax.while_loop(keep_going, build_iteration(width), carry)
        lane_iterations = lane_iterations + width * (
            carry.outputs.loop_iterations - before).astype(dtype)
        if narrower is not None:  # the running lanes first, then finished ones
            running = carry.slots.state.transition < total
            kept = jnp.argsort(~running, stable=True)[:narrower]
            carry = carry._replace(slots=jax.tree.map(lambda a: a[kept], carry.slots))
    final = carry
    outputs = final.outputs
    if not movable:  # slot m ran member m
        outputs = outputs._replace(chains=final.slots.chains)
    useful = ((jnp.sum(outputs.infos.num_steps) + jnp.sum(outputs.warmup_steps))
              / lane_iterations)
    return outputs._replace(useful_leapfrog_fraction=useful)


#: The tail of a refilled loop shrinks by this factor, while the narrower loop keeps at
#: least ``_TAIL_MIN_LANES`` lanes (see ``_drive``).
_TAIL_SHRINK = 4
_TAIL_MIN_LANES = 16

#: ``slots // _END_FRACTION`` slots are gathered where at most that many end a transition
#: in an iteration (else every slot); see ``_drive``. 8 measured best of 2-16 slots of 64
#: on the radon-sized study model (``benchmarks/study.py``).
_END_FRACTION = 8


class _Slots(NamedTuple):
    """The members running now, one per slot (leading slots axis)."""

    member: jax.Array  # which member each slot runs
    keys: jax.Array
    data: Any  # the members' data (None when data is shared or all members run at once)
    chains: Any
    state: MemberState


class _Loop(NamedTuple):
    slots: _Slots
    outputs: LockstepFreeChains  # per member; useful_leapfrog_fraction set at the end
    next_member: jax.Array  # the first member not yet started
