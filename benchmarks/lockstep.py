"""Lockstep (vmapped) NUTS against lockstep-free NUTS for many members on one device.

Model: a radon-sized two-level normal model (85 groups, 919 observations, simulated),
non-centered, written directly in JAX::

    mu ~ N(0, 10), beta ~ N(0, 10), tau ~ HalfNormal(1), sigma ~ HalfNormal(1)
    alpha_j = mu + tau * z_j, z_j ~ N(0, 1)
    y_i ~ N(alpha_{group_i} + beta * x_i, sigma)

(d = 89 unconstrained parameters: log tau and log sigma with their Jacobians). Every
member is a chain on the same data, from its own random start, with a fixed step size and
diagonal inverse mass matrix: from a short ``hbm.samplers.run_nuts`` warmup of one chain
(default; ``run_nuts`` of ``hbm.inference.engine``), or fixed values with ``--smoke``.

For each number of members, printed side by side:

* lockstep: ``jit(vmap(scan(kernel)))``, the standard kernel vmapped over members; each
  transition costs every member the longest tree: useful fraction =
  ``sum(num_steps) / (members * sum_t max_m num_steps)``;
* lockstep-free: :func:`hbm.samplers.lockstep_free.run_lockstep_free`; useful fraction =
  ``sum(num_steps) / (members * loop_iterations)``;
* members x transitions per second of each (second call, compilation excluded) and the
  seconds per batched leapfrog step.

Both run the same transitions (same keys, same draws). Run from the repository root::

    python -m benchmarks.lockstep [--members 16,64,256,1024] [--transitions 50]
    python -m benchmarks.lockstep --smoke     # 256 members, about a minute; JSON last line
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from hbm.samplers import build_kernel, init
from hbm.samplers.lockstep_free import lockstep_useful_leapfrog_fraction, run_lockstep_free

NUM_GROUPS = 85
NUM_OBS = 919


def radon_like_logdensity(seed=0):
    """The log density (flat vector: mu, beta, log tau, log sigma, z[85]) and d."""
    rng = np.random.default_rng(seed)
    group = jnp.asarray(rng.integers(0, NUM_GROUPS, NUM_OBS))
    x = jnp.asarray(rng.integers(0, 2, NUM_OBS).astype(float))
    alpha = 1.5 + 0.3 * rng.normal(size=NUM_GROUPS)
    y = jnp.asarray(alpha[np.asarray(group)] - 0.7 * np.asarray(x)
                    + 0.8 * rng.normal(size=NUM_OBS))

    def logdensity(theta):
        mu, beta, log_tau, log_sigma, z = theta[0], theta[1], theta[2], theta[3], theta[4:]
        tau, sigma = jnp.exp(log_tau), jnp.exp(log_sigma)
        prior = (-0.5 * (mu / 10.0) ** 2 - 0.5 * (beta / 10.0) ** 2
                 - 0.5 * tau**2 + log_tau - 0.5 * sigma**2 + log_sigma
                 - 0.5 * jnp.sum(z**2))
        mean = mu + tau * z[group] + beta * x
        likelihood = -0.5 * jnp.sum(((y - mean) / sigma) ** 2) - NUM_OBS * log_sigma
        return prior + likelihood

    return logdensity, 4 + NUM_GROUPS


def tuned_values(logdensity, dim, smoke):
    if smoke:
        return 0.2, jnp.full(dim, 0.5).at[:4].set(0.02)
    try:  # the warmup driver has moved between modules; use whichever this tree has
        from hbm.inference.engine import run_nuts
    except ImportError:
        from hbm.samplers import run_nuts

    _, _, step_size, inverse_mass = run_nuts(jax.random.PRNGKey(42), logdensity,
                                             jnp.zeros(dim), 300, 1)
    return float(step_size), inverse_mass


def lockstep_program(logdensity, num_transitions, max_tree_depth):
    kernel = build_kernel(max_tree_depth=max_tree_depth)

    def chain(key, position, step_size, inverse_mass):
        def body(state, t):
            new, info = kernel(jax.random.fold_in(key, t), state, logdensity, step_size,
                               inverse_mass)
            return new, (new.position, info.num_steps)

        _, out = jax.lax.scan(body, init(position, logdensity), jnp.arange(num_transitions))
        return out

    return jax.jit(jax.vmap(chain, in_axes=(0, 0, None, None)))


def _timed(fn):
    jax.block_until_ready(fn())  # compile (and a first run)
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def compare(members, num_transitions, logdensity, dim, step_size, inverse_mass,
            max_tree_depth):
    keys = jax.random.split(jax.random.PRNGKey(members), members)
    positions = 0.5 * jax.random.normal(jax.random.PRNGKey(7), (members, dim))
    lockstep = lockstep_program(logdensity, num_transitions, max_tree_depth)
    (draws_lockstep, num_steps), seconds_lockstep = _timed(
        lambda: lockstep(keys, positions, step_size, inverse_mass))
    free, seconds_free = _timed(lambda: run_lockstep_free(
        keys, positions, logdensity, step_size, inverse_mass, num_transitions,
        max_tree_depth=max_tree_depth))
    # members whose draws are bit-identical in both runs (in float32 an energy rounded
    # differently by the two compiled programs can flip one progressive-sampling decision)
    difference = np.abs(np.asarray(free.positions) - np.asarray(draws_lockstep))
    same = int(np.sum(np.all(difference == 0, axis=(1, 2))))
    lockstep_iterations = int(np.asarray(num_steps).max(axis=0).sum())
    work = members * num_transitions
    return {
        "members": members,
        "transitions": num_transitions,
        "mean_num_steps": float(np.mean(num_steps)),
        "lockstep_useful_leapfrog_fraction": float(lockstep_useful_leapfrog_fraction(num_steps)),
        "useful_leapfrog_fraction": float(free.useful_leapfrog_fraction),
        "lockstep_batched_steps": lockstep_iterations,
        "lockstep_free_loop_iterations": int(free.loop_iterations),
        "lockstep_transitions_per_s": work / seconds_lockstep,
        "lockstep_free_transitions_per_s": work / seconds_free,
        "lockstep_us_per_batched_step": seconds_lockstep / lockstep_iterations * 1e6,
        "lockstep_free_us_per_iteration": seconds_free / int(free.loop_iterations) * 1e6,
        "members_with_identical_draws": same,
        "max_abs_draw_difference": float(difference.max()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", default="16,64,256,1024")
    parser.add_argument("--transitions", type=int, default=50)
    parser.add_argument("--max-tree-depth", type=int, default=10)
    parser.add_argument("--x64", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="256 members, 8 transitions, max_tree_depth 6, fixed step "
                             "size and metric")
    args = parser.parse_args(argv)
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    logdensity, dim = radon_like_logdensity()
    step_size, inverse_mass = tuned_values(logdensity, dim, args.smoke)
    members_list = [256] if args.smoke else [int(m) for m in args.members.split(",")]
    transitions = 8 if args.smoke else args.transitions
    max_tree_depth = 6 if args.smoke else args.max_tree_depth
    print(f"radon-like model, d={dim}, step size {step_size:.4g}, "
          f"max_tree_depth {max_tree_depth}, {transitions} transitions per member")
    header = ("members", "useful lockstep", "useful free", "trans/s lockstep",
              "trans/s free", "us/step lockstep", "us/iter free", "identical members")
    print(" | ".join(header))
    rows = []
    for members in members_list:
        row = compare(members, transitions, logdensity, dim, step_size, inverse_mass,
                      max_tree_depth)
        rows.append(row)
        print(f"{members} | {row['lockstep_useful_leapfrog_fraction']:.3f} | "
              f"{row['useful_leapfrog_fraction']:.3f} | "
              f"{row['lockstep_transitions_per_s']:.1f} | "
              f"{row['lockstep_free_transitions_per_s']:.1f} | "
              f"{row['lockstep_us_per_batched_step']:.1f} | "
              f"{row['lockstep_free_us_per_iteration']:.1f} | "
              f"{row['members_with_identical_draws']}", flush=True)
    last = next(r for r in rows if r["members"] == 256) if any(
        r["members"] == 256 for r in rows) else rows[-1]
    print(json.dumps(last))


if __name__ == "__main__":
    main()
