"""Where a NUTS trajectory spends its time per leapfrog step, against a bare gradient.

A cheap target (independent Gaussian, ``-0.5 * sum((x / scale)**2)``) at d = 10 and
d = 175, 4 chains vectorized with ``jax.vmap`` on CPU, a tiny step size so that every
transition reaches ``max_tree_depth`` (the number of leapfrog steps is then exactly
``2**max_tree_depth - 1`` per chain and transition). Printed per dimension:

Two implementations of the same tree: ``nested`` (:func:`build_trajectory`, a loop over
doublings around a loop over leapfrog steps) and ``stepwise``
(:func:`build_trajectory_stepwise`, one loop over the one-leapfrog state machine).

* ``us/leapfrog``: the compiled transition loop's time (best of ``--repeats``) divided by the leapfrog steps;
* ``marginal us/leapfrog``: the time difference between depth ``8`` and depth ``4``
  divided by the step difference (fixed per-transition costs cancel);
* ``bare us/grad``: a compiled ``fori_loop`` of the vmapped ``value_and_grad`` (plus the
  position update, so nothing is hoisted), per step;
* the op census of the compiled program (``jit(...).lower().compile().as_text()``):
  how many fusions, while loops, gathers, scatters, dynamic slices and updates XLA emits;
  on CPU each is a separate kernel launch inside the loop body, which is where the
  bookkeeping time goes for small d.

Run from the repository root::

    python -m benchmarks.trajectory_profile [--baseline PATH/TO/old_trajectory.py] [--x64]

``--baseline`` loads another copy of ``trajectory.py`` (e.g. ``git show
HEAD:hbm/samplers/trajectory.py > /tmp/old.py``) and prints its rows too.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import re
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

from hbm.samplers.integrators import IntegratorState, velocity_verlet
from hbm.samplers.metrics import gaussian_euclidean

NUM_CHAINS = 4
TRANSITIONS = 20


def _target(dim):
    scales = jnp.linspace(0.5, 2.0, dim)

    def logdensity(x):
        return -0.5 * jnp.sum((x / scales) ** 2)

    return logdensity


def _transition_loop(build_trajectory, logdensity, dim, max_tree_depth, dtype):
    """A compiled loop of ``TRANSITIONS`` vmapped NUTS transitions (tiny step size)."""
    inverse_mass = jnp.ones(dim, dtype)
    metric = gaussian_euclidean(inverse_mass)
    step_fn = velocity_verlet(logdensity, metric.kinetic_energy, metric.velocity)
    step_size = jnp.asarray(1e-5, dtype)

    def one(key, position):
        momentum_key, tree_key = jax.random.split(key)
        momentum = metric.sample_momentum(momentum_key, position)
        value, grad = jax.value_and_grad(logdensity)(position)
        state = IntegratorState(position, momentum, value, grad)
        result = build_trajectory(tree_key, state, step_fn, metric, step_size,
                                  max_tree_depth=max_tree_depth)
        return result.proposal.position, result.num_steps

    def run(key, positions):
        def body(t, carry):
            positions, steps = carry
            keys = jax.random.split(jax.random.fold_in(key, t), NUM_CHAINS)
            positions, num_steps = jax.vmap(one)(keys, positions)
            return positions, steps + jnp.sum(num_steps)

        return lax.fori_loop(0, TRANSITIONS, body, (positions, jnp.int32(0)))

    return jax.jit(run)


def _bare_loop(logdensity, num_steps):
    value_and_grad = jax.vmap(jax.value_and_grad(logdensity))

    def run(positions):
        def body(_, x):
            _, grad = value_and_grad(x)
            return x + 1e-6 * grad

        return lax.fori_loop(0, num_steps, body, positions)

    return jax.jit(run)


CLOCK = time.perf_counter  # --cpu-time: time.process_time (steadier on a busy machine,
# but it also counts XLA's worker threads spinning when the machine is idle)


def _best_time(fn, *args, repeats):
    """Best seconds over ``repeats`` calls, after a first (compiling) call."""
    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(repeats):
        start = CLOCK()
        jax.block_until_ready(fn(*args))
        best = min(best, CLOCK() - start)
    return best


OPS = ("fusion", "while", "gather", "scatter", "dynamic-slice", "dynamic-update-slice",
       "conditional", "dot", "custom-call")


def op_census(jitted, *args):
    """Opcode counts of the compiled program (all computations)."""
    text = jitted.lower(*args).compile().as_text()
    counts = collections.Counter()
    for line in text.splitlines():
        if " = " not in line:
            continue
        for op in OPS:
            if re.search(rf"[\s\)]{op}\(", line.split(" = ", 1)[1]):
                counts[op] += 1
                break
    return {op: counts.get(op, 0) for op in OPS}


def profile(build_trajectory, dim, dtype, repeats, label):
    logdensity = _target(dim)
    positions = jax.random.normal(jax.random.PRNGKey(1), (NUM_CHAINS, dim), dtype)
    key = jax.random.PRNGKey(0)
    times = {}
    for depth in (4, 8):
        loop = _transition_loop(build_trajectory, logdensity, dim, depth, dtype)
        times[depth] = _best_time(loop, key, positions, repeats=repeats)
        if depth == 8:
            census = op_census(loop, key, positions)
            _, total_steps = loop(key, positions)
    steps_per_chain = {d: TRANSITIONS * (2**d - 1) for d in times}
    assert int(total_steps) == NUM_CHAINS * steps_per_chain[8], int(total_steps)
    per_step = times[8] / steps_per_chain[8] * 1e6
    marginal = (times[8] - times[4]) / (steps_per_chain[8] - steps_per_chain[4]) * 1e6
    bare = _bare_loop(logdensity, steps_per_chain[8])
    bare_per_step = _best_time(bare, positions, repeats=repeats) / steps_per_chain[8] * 1e6
    return {"implementation": label, "dim": dim, "chains": NUM_CHAINS,
            "us_per_leapfrog": round(per_step, 3),
            "marginal_us_per_leapfrog": round(marginal, 3),
            "bare_us_per_grad": round(bare_per_step, 3), "ops": census}


def _load(path):
    spec = importlib.util.spec_from_file_location("baseline_trajectory", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.build_trajectory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=None, help="path of another trajectory.py")
    parser.add_argument("--dims", default="10,175")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--x64", action="store_true")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with process CPU time instead of wall-clock time")
    args = parser.parse_args(argv)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.x64 else jnp.float32
    from hbm.samplers.trajectory import build_trajectory, build_trajectory_stepwise

    implementations = [("nested", build_trajectory), ("stepwise", build_trajectory_stepwise)]
    if args.baseline:
        implementations.insert(0, ("baseline", _load(args.baseline)))
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        for label, build in implementations:
            row = profile(build, dim, dtype, args.repeats, label)
            rows.append(row)
            print(f"{label:9s} d={dim:4d}  {row['us_per_leapfrog']:7.3f} us/leapfrog  "
                  f"marginal {row['marginal_us_per_leapfrog']:7.3f}  "
                  f"bare grad {row['bare_us_per_grad']:6.3f}  ops {row['ops']}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
