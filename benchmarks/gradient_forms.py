"""Gather / scatter forms of a hierarchical model's gradient, timed on the CPU backend.

In a hierarchical model the forward pass gathers group effects per observation
(``effect[group]``) and the backward pass transposes that gather: a scatter-add of the
per-observation cotangents into the groups. On XLA's CPU backend these two ops dominate
the gradient. This script times ``jax.value_and_grad`` of one log density written with
several equivalent forms of the gather, inside one compiled ``fori_loop`` (as a sampler
calls it), and prints the median microseconds per gradient.

Forms (``--forms``):

- ``gather``: plain ``x[g]`` (the library models today); backward a scatter-add.
- ``take_flags``: ``x.at[g].get(mode="promise_in_bounds", indices_are_sorted=s)``: no
  negative-index wrap and no bounds handling; backward the same scatter-add with the flags.
- ``segsum``: a ``custom_vjp`` gather whose backward is ``jax.ops.segment_sum`` (a
  scatter-add, ``indices_are_sorted=True``) on data sorted by group once on the host.
- ``onehot``: ``onehot(g) @ x`` with the dense ``(N, J)`` one-hot built once; backward
  ``onehot.T @ ct`` (a matmul). Skipped when ``N * J`` exceeds ``--onehot-max``.
- ``cumsum``: sorted data; a ``custom_vjp`` gather whose backward sums contiguous runs
  as differences of ``cumsum(ct)`` at the run ends (no scatter; rounding differs).
- ``repeat``: sorted data; forward ``jnp.repeat(x, counts)`` (static counts), backward
  as ``cumsum``.
- ``gather_sorted``: plain ``x[g]`` on the data sorted by group (how radon and InstEval
  are stored).
- ``lanes`` / ``lanes_sorted``: a ``custom_vjp`` gather whose backward scatters into 4
  interleaved accumulators per group and sums them (unsorted / sorted data).
- ``hbm`` / ``hbm_sorted``: :func:`hbm.grouping.take_groups` as shipped (one lane below
  ``AUTO_LANES_FROM`` index entries, else four), unsorted / sorted data.

Models: ``vi`` (varying intercept), ``vis`` (varying intercept and slope, effects of
shape (J, 2)) and ``crossed`` (two crossed varying intercepts, like InstEval); all
non-centered Normal models with a Normal likelihood, data held as compile-time constants.
Sorted forms sort the data by the first factor (a permutation applied once on the host);
the second crossed factor stays unsorted. ``--radon`` instead times the library's radon
models bound by the model layer, the data passed as an argument of the compiled program
(as hbm's engine does), against the same models with ``take_groups`` in the likelihood.

Usage::

    nice -n 10 python -m benchmarks.gradient_forms                  # radon size, float32
    nice -n 10 python -m benchmarks.gradient_forms --x64 --chains 1,4
    nice -n 10 python -m benchmarks.gradient_forms --size big --models vi,crossed
    nice -n 10 python -m benchmarks.gradient_forms --hlo           # what each form compiles to
    nice -n 10 python -m benchmarks.gradient_forms --radon         # the library radon models

Timings on a shared machine are noisy: variants are interleaved round-robin and each
is repeated ``--repeats`` times; the median is reported.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from functools import partial

import numpy as np

SIZES = {"radon": (85, 919, 0), "big": (1000, 50_000, 200)}
FORMS = ("gather", "gather_sorted", "take_flags", "segsum", "lanes", "lanes_sorted", "onehot",
         "cumsum", "repeat", "hbm", "hbm_sorted")


def _parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="radon", choices=sorted(SIZES))
    ap.add_argument("--models", default="vi,vis")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--chains", default="1,4")
    ap.add_argument("--x64", action="store_true", help="float64 (default float32)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--target-ms", type=float, default=20.0,
                    help="length of one timed loop")
    ap.add_argument("--onehot-max", type=float, default=4e6,
                    help="largest N*J for the one-hot form")
    ap.add_argument("--hlo", action="store_true",
                    help="print the ops each form compiles to (1 chain) and exit")
    ap.add_argument("--radon", action="store_true",
                    help="time the library radon models' full gradient, gather vs take_groups")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None and ARGS.x64:
    import jax

    jax.config.update("jax_enable_x64", True)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


# ----------------------------------------------------------------------------- forms
def _sorted_runs(codes_sorted, num_groups):
    """Start and end (exclusive) of each group's run in sorted codes."""
    counts = np.bincount(codes_sorted, minlength=num_groups)
    ends = np.cumsum(counts)
    return counts, ends


def _cumsum_take(codes_sorted, num_groups, dtype, forward="gather"):
    """Sorted gather whose transpose sums runs as cumsum differences."""
    counts, ends = _sorted_runs(codes_sorted, num_groups)
    idx = jnp.asarray(codes_sorted)
    last = jnp.asarray(np.maximum(ends - 1, 0))
    empty = jnp.asarray(counts == 0)

    def run_sums(ct):
        c = jnp.cumsum(ct, axis=0)
        at_end = jnp.where(empty.reshape((-1,) + (1,) * (ct.ndim - 1)), 0, c[last])
        return jnp.diff(at_end, axis=0, prepend=jnp.zeros_like(at_end[:1]))

    if forward == "repeat":
        def fwd_value(x):
            return jnp.repeat(x, counts, axis=0, total_repeat_length=len(codes_sorted))
    else:
        def fwd_value(x):
            return x.at[idx].get(mode="promise_in_bounds", indices_are_sorted=True)

    @jax.custom_vjp
    def take(x):
        return fwd_value(x)

    take.defvjp(lambda x: (fwd_value(x), None), lambda _, ct: (run_sums(ct),))
    return take


def _segsum_take(codes, num_groups, is_sorted):
    idx = jnp.asarray(codes)

    @jax.custom_vjp
    def take(x):
        return x.at[idx].get(mode="promise_in_bounds", indices_are_sorted=is_sorted)

    def bwd(_, ct):
        return (jax.ops.segment_sum(ct, idx, num_groups, indices_are_sorted=is_sorted,
                                    mode="promise_in_bounds"),)

    take.defvjp(lambda x: (take(x), None), bwd)
    return take


def _lanes_take(codes, num_groups, lanes):
    """Gather whose transpose scatters into ``lanes`` interleaved accumulators per group
    (observation i adds to lane i mod lanes), then sums the lanes: consecutive
    observations of one group no longer update the same address one after another."""
    idx = jnp.asarray(codes)
    flat = jnp.asarray(np.asarray(codes) * lanes + np.arange(len(codes)) % lanes, jnp.int32)

    @jax.custom_vjp
    def take(x):
        return x.at[idx].get(mode="promise_in_bounds")

    def bwd(_, ct):
        acc = jnp.zeros((num_groups * lanes,) + ct.shape[1:], ct.dtype)
        acc = acc.at[flat].add(ct, mode="promise_in_bounds")
        return (acc.reshape((num_groups, lanes) + ct.shape[1:]).sum(1),)

    take.defvjp(lambda x: (take(x), None), bwd)
    return take


def make_take(form, codes, num_groups, dtype, is_sorted):
    """A function ``x -> x[codes]`` (x of shape (J,) or (J, K)) written in ``form``."""
    if form in ("gather", "gather_sorted"):
        idx = jnp.asarray(codes)
        return lambda x: x[idx]
    if form == "take_flags":
        idx = jnp.asarray(codes)
        return lambda x: x.at[idx].get(mode="promise_in_bounds", indices_are_sorted=is_sorted)
    if form == "segsum":
        return _segsum_take(codes, num_groups, is_sorted)
    if form in ("lanes", "lanes_sorted"):
        return _lanes_take(codes, num_groups, 4)
    if form == "onehot":
        onehot = jnp.asarray(np.eye(num_groups, dtype=dtype)[codes])
        return lambda x: jnp.tensordot(onehot, x, axes=1)
    if form in ("cumsum", "repeat"):
        if not is_sorted:
            return _segsum_take(codes, num_groups, False)
        return _cumsum_take(codes, num_groups, dtype, forward="repeat" if form == "repeat"
                            else "gather")
    if form in ("hbm", "hbm_sorted"):
        from hbm.grouping import take_groups

        idx = jnp.asarray(codes)
        return lambda x: take_groups(x, idx)
    raise ValueError(form)


SORTING = {"gather": False, "gather_sorted": True, "take_flags": True, "segsum": True,
           "lanes": False, "lanes_sorted": True, "onehot": False, "cumsum": True,
           "repeat": True, "hbm": False, "hbm_sorted": True}


# ---------------------------------------------------------------------------- models
def make_problem(model, size, dtype, seed):
    """Data (numpy, unsorted codes) and an initial parameter dict."""
    J, N, J2 = SIZES[size]
    rng = np.random.default_rng(seed)
    # uneven group sizes, as in real data (radon: 1 to 116 homes per county)
    weights = rng.gamma(0.7, size=J)
    g = rng.choice(J, size=N, p=weights / weights.sum()).astype(np.int32)
    g[:J] = np.arange(J)  # every group observed
    rng.shuffle(g)
    data = {"y": rng.normal(size=N), "x": (rng.random(N) < 0.2).astype(float), "g": g}
    K = 2 if model == "vis" else 1
    params = {"beta": np.zeros(2), "log_sigma": np.zeros(()), "log_tau": np.zeros(K),
              "z": rng.normal(size=(J, K) if K > 1 else (J,)) * 0.5}
    if model == "crossed":
        J2 = J2 or max(J // 5, 2)
        g2 = rng.integers(0, J2, size=N).astype(np.int32)
        g2[:J2] = np.arange(J2)
        data["g2"] = g2
        params["log_tau2"] = np.zeros(())
        params["z2"] = rng.normal(size=J2) * 0.5
    data = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in data.items()}
    params = {k: np.asarray(v, dtype) for k, v in params.items()}
    return data, params, J


def make_logdensity(model, form, data, num_groups, dtype):
    """The log density (up to a constant) with the gather written in ``form``;
    data sorted by ``g`` on the host when the form wants it."""
    if SORTING[form]:
        order = np.argsort(data["g"], kind="stable")
        data = {k: v[order] for k, v in data.items()}
    take = make_take(form, data["g"], num_groups, dtype, SORTING[form])
    if model == "crossed":
        num2 = int(data["g2"].max()) + 1
        take2 = make_take(form, data["g2"], num2, dtype, False)
    y, x = jnp.asarray(data["y"]), jnp.asarray(data["x"])

    def normal(v, loc, log_scale):
        return jnp.sum(-0.5 * jnp.square((v - loc) * jnp.exp(-log_scale)) - log_scale)

    def logdensity(p):
        tau = jnp.exp(p["log_tau"])
        lp = normal(p["z"], 0.0, 0.0) + normal(p["beta"], 0.0, 1.0)
        lp += normal(p["log_sigma"], 0.0, 0.0) + normal(p["log_tau"], 0.0, 0.0)
        if model == "vis":
            e = take(p["z"] * tau)
            mean = p["beta"][0] + e[:, 0] + (p["beta"][1] + e[:, 1]) * x
        else:
            mean = p["beta"][0] + p["beta"][1] * x + take(p["z"] * tau)
        if model == "crossed":
            lp += normal(p["z2"], 0.0, 0.0) + normal(p["log_tau2"], 0.0, 0.0)
            mean = mean + take2(p["z2"] * jnp.exp(p["log_tau2"]))
        return lp + normal(y, mean, p["log_sigma"])

    return logdensity


# ---------------------------------------------------------------------------- timing
def gradient_loop(logdensity, chains, data=None):
    """``loop(params, n)``: n gradient evaluations in one compiled fori_loop, each
    depending on the last (a tiny step along the gradient), vmapped over chains. With
    ``data``, ``logdensity(params, data)`` gets the data as an argument of the compiled
    program (as hbm's engine passes it) instead of as constants."""
    if data is None:
        vg = jax.value_and_grad(logdensity)
    else:
        vg = jax.value_and_grad(lambda p, d: logdensity(p, d))
    if chains > 1:
        vg = jax.vmap(vg, in_axes=(0,) if data is None else (0, None))

    @partial(jax.jit, static_argnums=2)
    def loop_with(params, d, n):
        def body(_, carry):
            p, acc = carry
            v, g = vg(p) if data is None else vg(p, d)
            p = jax.tree.map(lambda a, b: a + 1e-6 * b, p, g)
            return p, acc + jnp.sum(v)

        return jax.lax.fori_loop(0, n, body, (params, jnp.zeros((), jnp.result_type(
            *jax.tree.leaves(params)))))

    return lambda params, n: loop_with(params, data, n)


def stack(params, chains):
    if chains == 1:
        return jax.tree.map(jnp.asarray, params)
    return jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a), (chains,) + a.shape)
                        + 0.01 * jnp.arange(chains, dtype=a.dtype).reshape(
                            (chains,) + (1,) * a.ndim), params)


def time_variants(variants, repeats, target_ms):
    """Per variant: median and minimum wall-clock us per gradient, and minimum CPU us
    (process time, all threads: less sensitive to other processes on a shared machine,
    the minimum least so); variants interleaved round-robin."""
    calibrated = {}
    for name, (loop, params) in variants.items():
        jax.block_until_ready(loop(params, 10))  # compile
        n = 10
        while True:
            start = time.perf_counter()
            jax.block_until_ready(loop(params, n))
            elapsed = time.perf_counter() - start
            if elapsed > target_ms / 1e3 / 4 or n >= 1 << 20:
                break
            n *= 4
        n = max(int(n * target_ms / 1e3 / max(elapsed, 1e-9)), 5)
        jax.block_until_ready(loop(params, n))  # compile this length
        calibrated[name] = n
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (loop, params) in variants.items():
            n = calibrated[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(loop(params, n))
            cpu[name].append((time.process_time() - start_cpu) / n * 1e6)
            wall[name].append((time.perf_counter() - start) / n * 1e6)
    return {name: (statistics.median(wall[name]), min(wall[name]), min(cpu[name]))
            for name in variants}


def check_equal(logdensities, params, dtype):
    """Value and gradient of every form against the plain gather."""
    ref_v, ref_g = jax.jit(jax.value_and_grad(logdensities["gather"]))(params)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for name, f in logdensities.items():
        v, g = jax.jit(jax.value_and_grad(f))(params)
        err = max(float(jnp.max(jnp.abs(a - b)) / (1 + jnp.max(jnp.abs(b))))
                  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)))
        verr = abs(float(v - ref_v)) / (1 + abs(float(ref_v)))
        if max(err, verr) > tol:
            raise AssertionError(f"{name}: relative error {max(err, verr):.2e} > {tol}")


# ------------------------------------------------------------------------------- HLO
_OPS = ("gather", "scatter", "dot", "reduce-window", "sort", "while", "fusion")


def hlo_summary(logdensity, params):
    text = jax.jit(jax.value_and_grad(logdensity)).lower(params).compile().as_text()
    counts = {op: len(re.findall(rf"= \S+ {re.escape(op)}\(", text)) for op in _OPS}
    flags = sorted(set(re.findall(r"indices_are_sorted=true|unique_indices=true", text)))
    return counts, flags, text


# ----------------------------------------------------------------------- radon models
def radon_full_gradient(args, dtype):
    """The library radon models: unconstrained log density and gradient as bound by
    the model layer, with the likelihood's gather as written and with take_groups."""
    import hbm
    from hbm.grouping import take_groups
    from hbm.models import radon

    out = []
    for name in ("radon_varying_intercept", "radon_varying_intercept_slope"):
        model, data = getattr(radon, name)()

        if name == "radon_varying_intercept":
            def likelihood(p, d):
                return {"y": hbm.dist.Normal(
                    p["beta"][0] + p["beta"][1] * d["floor"]
                    + take_groups(p["county_effect"], d["county"]), p["sigma"])}
            fast = hbm.Model(prior=model.prior, likelihood=likelihood, dims=model.dims,
                             coords=model.coords)
        else:
            effects = model.deterministic["county_effect"]

            def likelihood(p, d):
                e = take_groups(effects(p, d), d["county"])
                mean = p["beta"][0] + e[:, 0] + (p["beta"][1] + e[:, 1]) * d["floor"]
                return {"y": hbm.dist.Normal(mean, p["sigma"])}
            fast = hbm.Model(prior=model.prior, likelihood=likelihood, dims=model.dims,
                             coords=model.coords, deterministic=model.deterministic)
        bound = {"gather": model.bind(data), "take_groups": fast.bind(data)}
        x0 = jax.random.normal(jax.random.key(0), (bound["gather"].size,), dtype)
        ref = jax.jit(jax.value_and_grad(bound["gather"].logdensity))(x0)
        new = jax.jit(jax.value_and_grad(bound["take_groups"].logdensity))(x0)
        assert np.allclose(ref[1], new[1], rtol=1e-5 if dtype == np.float32 else 1e-12)
        if not out:
            print("| model | chains | form | median us | min us | min CPU us | "
                  "gather / form (min CPU) |\n|---|---|---|---|---|---|---|")
        for chains in [int(c) for c in args.chains.split(",")]:
            variants = {}
            for form, b in bound.items():
                variants[form] = (gradient_loop(b.logdensity, chains, b.data),
                                  x0 if chains == 1 else x0 + 0.01 * jnp.arange(
                                      chains, dtype=dtype)[:, None])
            res = time_variants(variants, args.repeats, args.target_ms)
            out.append((name, chains, res))
    return out


# ------------------------------------------------------------------------------ main
def main(args):
    dtype = np.float64 if args.x64 else np.float32
    print(f"jax {jax.__version__}, {jax.default_backend()}, {np.dtype(dtype).name}, "
          f"size={args.size} {SIZES[args.size]}", flush=True)
    if args.radon:
        for name, chains, res in radon_full_gradient(args, dtype):
            base = res["gather"][2]
            for form, (med, lo, cpu) in res.items():
                print(f"| {name} | {chains} | {form} | {med:.2f} | {lo:.2f} | {cpu:.2f} | "
                      f"{base / cpu:.2f} |", flush=True)
        return
    forms = args.forms.split(",")
    for model in args.models.split(","):
        data, params, J = make_problem(model, args.size, dtype, args.seed)
        N = len(data["y"])
        if "onehot" in forms and N * J > args.onehot_max:
            forms_here = [f for f in forms if f != "onehot"]
        else:
            forms_here = forms
        logdensities = {f: make_logdensity(model, f, data, J, dtype) for f in forms_here}
        params_j = jax.tree.map(jnp.asarray, params)
        check_equal(logdensities, params_j, dtype)
        if args.hlo:
            for f, ld in logdensities.items():
                counts, flags, _ = hlo_summary(ld, params_j)
                ops = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
                print(f"| {model} | {f} | {ops} | {' '.join(flags)} |", flush=True)
            continue
        for chains in [int(c) for c in args.chains.split(",")]:
            variants = {f: (gradient_loop(ld, chains), stack(params, chains))
                        for f, ld in logdensities.items()}
            res = time_variants(variants, args.repeats, args.target_ms)
            base = res["gather"][2] if "gather" in res else None
            if chains == int(args.chains.split(",")[0]) and model == args.models.split(",")[0]:
                print("| size | model | dtype | chains | form | median us | min us | "
                      "min CPU us | gather / form (min CPU) |\n" + "|---" * 9 + "|")
            for f, (med, lo, cpu) in res.items():
                ratio = f"{base / cpu:.2f}" if base else ""
                print(f"| {args.size} | {model} | {np.dtype(dtype).name} | {chains} | {f} | "
                      f"{med:.2f} | {lo:.2f} | {cpu:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    sys.exit(main(ARGS))
