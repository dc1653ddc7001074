"""The benchmark models written once for hbm and once for each peer library.

Every peer gets the *identical* model: the same priors, the same non-centered
parameterization, and (for BlackJAX, whose log density we write by hand) the same
unconstrained coordinates and Jacobians as hbm. :func:`check_logdensities` compares the
log densities at random points in float64.

Peers are optional: each is imported inside the function that needs it, so this module
imports with hbm alone, and a missing peer is reported rather than fatal.

References: Hoffman and Gelman (2014), "The No-U-Turn Sampler"; Betancourt and Girolami
(2015), "Hamiltonian Monte Carlo for hierarchical models" (non-centering); Lewandowski,
Kurowicka and Joe (2009), the LKJ prior.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import hbm

LOG_2PI = math.log(2.0 * math.pi)


# ------------------------------------------------------------------ shared pieces
def _normal_lp(x, loc, scale):
    z = (x - loc) / scale
    return -0.5 * z * z - jnp.log(scale) - 0.5 * LOG_2PI


def _half_normal_lp(x, scale):
    return _normal_lp(x, 0.0, scale) + math.log(2.0)


def _half_cauchy_lp(x, scale):
    return math.log(2.0 / math.pi) - jnp.log(scale) - jnp.log1p((x / scale) ** 2)


def _sd(values) -> float:
    """Sample sd (ddof=1), as hbm.models' autoscaled priors use."""
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1))


@dataclass
class Spec:
    """One benchmark model in every library's terms.

    ``layout`` maps hbm's parameter names to slices of its flat unconstrained vector; the
    hand-written BlackJAX log density uses the same layout. ``derived`` adds the
    deterministic quantities (e.g. ``theta``) to a dict of constrained draws, so every
    library's ESS is taken over the same scalars.
    """

    name: str
    hbm_model: object
    data: dict
    blackjax_logdensity: Callable  # (x, data) -> scalar, hbm's flat layout
    blackjax_constrain: Callable  # x (..., d) -> dict of constrained arrays
    numpyro_model: Callable  # (**numpyro_data) -> None
    numpyro_data: dict
    stan_code: str
    stan_data: dict
    derived: Callable  # dict of (chain, draw, ...) arrays -> same dict with deterministics
    params: tuple = field(default_factory=tuple)


# ------------------------------------------------------------------ eight schools
EIGHT_SCHOOLS_STAN = """
data { int<lower=0> J; vector[J] y; vector<lower=0>[J] sigma; }
parameters { real mu; real<lower=0> tau; vector[J] theta_z; }
model {
  mu ~ normal(0, 5);
  tau ~ cauchy(0, 5);
  theta_z ~ std_normal();
  y ~ normal(mu + tau * theta_z, sigma);
}
"""


def eight_schools_spec() -> Spec:
    """Non-centered eight schools: mu ~ N(0, 5), tau ~ HalfCauchy(5), theta_z ~ N(0, 1)."""
    model, data = hbm.models.eight_schools(centered=False)
    data = {k: np.asarray(v, np.float64) for k, v in data.items()}
    bound = model.bind(data)
    layout = {n.name: slice(n.offset, n.offset + n.size) for n in bound.nodes}
    assert list(layout) == ["mu", "tau", "theta_z"], layout

    def constrain(x):
        return {"mu": x[..., 0], "tau": jnp.exp(x[..., 1]), "theta_z": x[..., 2:]}

    def logdensity(x, d):
        p = constrain(x)
        lp = _normal_lp(p["mu"], 0.0, 5.0)
        lp += _half_cauchy_lp(p["tau"], 5.0) + x[1]  # log|d tau / d log tau|
        lp += jnp.sum(_normal_lp(p["theta_z"], 0.0, 1.0))
        theta = p["mu"] + p["tau"] * p["theta_z"]
        return lp + jnp.sum(_normal_lp(d["y"], theta, d["sigma"]))

    def numpyro_model(y, sigma):
        import numpyro
        import numpyro.distributions as nd

        mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
        theta_z = numpyro.sample("theta_z", nd.Normal(0.0, 1.0).expand([y.shape[0]]).to_event(1))
        numpyro.sample("y", nd.Normal(mu + tau * theta_z, sigma), obs=y)

    def derived(draws):
        out = dict(draws)
        out["theta"] = draws["mu"][..., None] + draws["tau"][..., None] * draws["theta_z"]
        return out

    return Spec(
        name="eight_schools", hbm_model=model, data=data,
        blackjax_logdensity=logdensity, blackjax_constrain=constrain,
        numpyro_model=numpyro_model, numpyro_data=dict(data),
        stan_code=EIGHT_SCHOOLS_STAN,
        stan_data={"J": len(data["y"]), "y": data["y"].tolist(), "sigma": data["sigma"].tolist()},
        derived=derived, params=("mu", "tau", "theta_z"),
    )


# ------------------------------------------------------------------ radon
RADON_STAN = """
data {
  int<lower=1> N; int<lower=1> J;
  vector[N] y; vector[N] floor; array[N] int<lower=1, upper=J> county;
  vector[2] beta_loc; vector<lower=0>[2] beta_scale;
  vector<lower=0>[2] sigma_county_scale; real<lower=0> sigma_scale; real<lower=0> eta;
}
parameters {
  vector[2] beta; vector<lower=0>[2] sigma_county; cholesky_factor_corr[2] L_county;
  matrix[J, 2] county_z; real<lower=0> sigma;
}
model {
  matrix[J, 2] effect = county_z * diag_pre_multiply(sigma_county, L_county)';
  beta ~ normal(beta_loc, beta_scale);
  sigma_county ~ normal(0, sigma_county_scale);
  L_county ~ lkj_corr_cholesky(eta);
  to_vector(county_z) ~ std_normal();
  sigma ~ normal(0, sigma_scale);
  y ~ normal(beta[1] + effect[county, 1] + (beta[2] + effect[county, 2]) .* floor, sigma);
}
"""


def radon_spec() -> Spec:
    """Correlated varying intercepts and floor slopes, non-centered (hbm's default)."""
    model, data = hbm.models.radon_varying_intercept_slope()
    y = np.asarray(data["y"], np.float64)
    floor = np.asarray(data["floor"], np.float64)
    county = np.asarray(data["county"], np.int32)
    data = {"y": y, "floor": floor, "county": county}
    n_county = int(county.max()) + 1
    sd_y, sd_x = _sd(y), _sd(floor)
    beta_loc = np.array([float(np.mean(y)), 0.0])
    beta_scale = np.array([2.5 * sd_y, 2.5 * sd_y / sd_x])
    sc_scale = np.array([sd_y, sd_y / sd_x])
    eta = 2.0
    bound = model.bind(data)
    layout = {n.name: slice(n.offset, n.offset + n.size) for n in bound.nodes}
    assert list(layout) == ["beta", "sigma_county", "L_county", "county_z", "sigma"], layout

    def constrain(x):
        z = jnp.tanh(x[..., layout["L_county"]][..., 0])
        cholesky = jnp.stack([
            jnp.stack([jnp.ones_like(z), jnp.zeros_like(z)], -1),
            jnp.stack([z, jnp.sqrt(1.0 - z * z)], -1)], -2)
        return {
            "beta": x[..., layout["beta"]],
            "sigma_county": jnp.exp(x[..., layout["sigma_county"]]),
            "L_county": cholesky,
            "county_z": x[..., layout["county_z"]].reshape(x.shape[:-1] + (n_county, 2)),
            "sigma": jnp.exp(x[..., layout["sigma"]][..., 0]),
        }

    def logdensity(x, d):
        p = constrain(x)
        lp = jnp.sum(_normal_lp(p["beta"], beta_loc, beta_scale))
        lp += jnp.sum(_half_normal_lp(p["sigma_county"], sc_scale)) + jnp.sum(x[layout["sigma_county"]])
        # LKJCholesky(2, eta): (2 eta - 2) log L_11, plus the tanh Jacobian log(1 - z^2)
        # (log normalizer omitted: a constant).
        u = x[layout["L_county"]][0]
        log_1mz2 = 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))
        lp += (2.0 * eta - 2.0) * 0.5 * log_1mz2 + log_1mz2
        lp += jnp.sum(_normal_lp(p["county_z"], 0.0, 1.0))
        lp += _half_normal_lp(p["sigma"], sd_y) + x[layout["sigma"]][0]
        effect = p["county_z"] @ (p["sigma_county"][:, None] * p["L_county"]).T
        per_obs = effect[d["county"]]
        mean = p["beta"][0] + per_obs[:, 0] + (p["beta"][1] + per_obs[:, 1]) * d["floor"]
        return lp + jnp.sum(_normal_lp(d["y"], mean, p["sigma"]))

    def numpyro_model(y, floor, county):
        import numpyro
        import numpyro.distributions as nd

        beta = numpyro.sample("beta", nd.Normal(beta_loc, beta_scale).to_event(1))
        sigma_county = numpyro.sample("sigma_county", nd.HalfNormal(sc_scale).to_event(1))
        chol = numpyro.sample("L_county", nd.LKJCholesky(2, eta))
        z = numpyro.sample("county_z", nd.Normal(0.0, 1.0).expand([n_county, 2]).to_event(2))
        sigma = numpyro.sample("sigma", nd.HalfNormal(sd_y))
        effect = z @ (sigma_county[:, None] * chol).T
        per_obs = effect[county]
        mean = beta[0] + per_obs[:, 0] + (beta[1] + per_obs[:, 1]) * floor
        numpyro.sample("y", nd.Normal(mean, sigma), obs=y)

    def derived(draws):
        out = dict(draws)
        tril = draws["sigma_county"][..., :, None] * draws["L_county"]
        out["county_effect"] = np.einsum("...jk,...lk->...jl", draws["county_z"], tril)
        return out

    stan_data = {
        "N": len(y), "J": n_county, "y": y.tolist(), "floor": floor.tolist(),
        "county": (county + 1).tolist(), "beta_loc": beta_loc.tolist(),
        "beta_scale": beta_scale.tolist(), "sigma_county_scale": sc_scale.tolist(),
        "sigma_scale": sd_y, "eta": eta,
    }
    return Spec(
        name="radon", hbm_model=model, data=data,
        blackjax_logdensity=logdensity, blackjax_constrain=constrain,
        numpyro_model=numpyro_model, numpyro_data=dict(data),
        stan_code=RADON_STAN, stan_data=stan_data, derived=derived,
        params=("beta", "sigma_county", "L_county", "county_z", "sigma"),
    )


SPECS = {"eight_schools": eight_schools_spec, "radon": radon_spec}


# ------------------------------------------------------------------ log density check
def check_logdensities(spec: Spec, n_points: int = 5, seed: int = 1) -> list[dict]:
    """hbm's log density against each peer's at random unconstrained points.

    Call with float64 enabled. Returns one row per peer: the spread (max - min) over the
    points of ``peer - hbm`` (0 up to rounding when they agree up to a constant).
    """
    bound = spec.hbm_model.bind(spec.data)
    rng = np.random.default_rng(seed)
    xs = rng.normal(scale=0.7, size=(n_points, bound.size))
    hbm_lp = np.array([float(bound.logdensity(jnp.asarray(x))) for x in xs])
    params = [{k: np.asarray(v) for k, v in bound.constrain(jnp.asarray(x),
                                                         deterministic=False).items()}
              for x in xs]
    rows = []
    data = {k: jnp.asarray(v) for k, v in spec.data.items()}
    bj = np.array([float(spec.blackjax_logdensity(jnp.asarray(x), data)) for x in xs])
    rows.append(_check_row("blackjax (hand-written)", bj, hbm_lp))
    try:
        from numpyro.infer.util import potential_energy, unconstrain_fn

        nd = {k: jnp.asarray(v) for k, v in spec.numpyro_data.items()}
        npy = []
        for p in params:
            u = unconstrain_fn(spec.numpyro_model, (), nd, p)
            npy.append(-float(potential_energy(spec.numpyro_model, (), nd, u)))
        rows.append(_check_row("numpyro (-potential_energy)", np.array(npy), hbm_lp))
    except ImportError as e:
        rows.append({"peer": "numpyro", "status": f"not available ({e})"})
    return rows


def check_stan_logdensity(spec: Spec, posterior, n_points: int = 5, seed: int = 1) -> dict:
    """hbm against pystan's ``log_prob`` (with Jacobian) at the same constrained points."""
    bound = spec.hbm_model.bind(spec.data)
    rng = np.random.default_rng(seed)
    xs = rng.normal(scale=0.7, size=(n_points, bound.size))
    hbm_lp, stan_lp = [], []
    for x in xs:
        hbm_lp.append(float(bound.logdensity(jnp.asarray(x))))
        p = bound.constrain(jnp.asarray(x), deterministic=False)
        p = {k: np.asarray(v, np.float64).tolist() for k, v in p.items()}
        u = posterior.unconstrain_pars(p)
        stan_lp.append(float(posterior.log_prob(u, adjust_transform=True)))
    return _check_row("stan (log_prob)", np.array(stan_lp), np.array(hbm_lp))


def _check_row(peer, peer_lp, hbm_lp):
    diff = peer_lp - hbm_lp
    spread = float(np.max(diff) - np.min(diff))
    scale = float(np.max(np.abs(hbm_lp)))
    ok = spread <= 1e-9 * max(1.0, scale)
    return {"peer": peer, "constant offset": float(np.mean(diff)), "spread": spread,
            "status": "agree up to a constant" if ok else "DISAGREE"}


# ------------------------------------------------------------------ runners
@dataclass
class RunResult:
    """One library's two runs: timings, constrained draws and gradient counts."""

    first_seconds: float  # compile + first warmup+sampling
    seconds: list  # warmup + sampling of each later run (same shapes, new seed)
    draws: list  # per later run: name -> (chain, draw, ...) constrained
    gradients: list  # per later run: warmup + sampling, all chains
    extra: dict = field(default_factory=dict)
    compile_seconds: list = field(default_factory=list)  # JAX compile time inside each run


_COMPILE_SECONDS = [0.0]


def _on_duration(event, duration, **kwargs):
    if "/jax/core/compile/" in event or "compil" in event:
        _COMPILE_SECONDS[0] += float(duration)


jax.monitoring.register_event_duration_secs_listener(_on_duration)


class _Timer:
    """Wall time of a block and the JAX compilation time spent inside it."""

    def __enter__(self):
        self.compile0 = _COMPILE_SECONDS[0]
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.compile_seconds = _COMPILE_SECONDS[0] - self.compile0
        return False


def _block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def run_hbm(spec: Spec, chains, warmup, draws, seeds) -> RunResult:
    times, fits, compiles = [], [], []
    for seed in seeds:
        with _Timer() as t:
            fit = hbm.sample(spec.hbm_model, spec.data, chains=chains, warmup=warmup,
                             draws=draws, seed=seed, progress=False, log_likelihood=False)
        times.append(t.seconds)
        compiles.append(t.compile_seconds)
        fits.append(fit)
    draws_ = [{k: np.asarray(f.posterior[k]) for k in spec.params} for f in fits[1:]]
    grads = [int(f.info["warmup_gradient_evaluations"]) + int(f.sample_stats["n_steps"].sum())
             for f in fits[1:]]
    return RunResult(times[0], times[1:], draws_, grads, {"fits": fits[1:]}, compiles[1:])


def run_blackjax(spec: Spec, chains, warmup, draws, seeds) -> RunResult:
    import blackjax

    dtype = jnp.result_type(float)
    data = {k: jnp.asarray(v, dtype if np.issubdtype(np.asarray(v).dtype, np.floating) else None)
            for k, v in spec.data.items()}
    logdensity = lambda x: spec.blackjax_logdensity(x, data)
    dim = spec.hbm_model.bind(spec.data).size

    def one_chain(key, position):
        warm_key, sample_key = jax.random.split(key)
        adapt = blackjax.window_adaptation(blackjax.nuts, logdensity)
        (state, parameters), winfo = adapt.run(warm_key, position, warmup)
        kernel = blackjax.nuts(logdensity, step_size=parameters["step_size"],
                               inverse_mass_matrix=parameters["inverse_mass_matrix"])

        def step(st, k):
            st, info = kernel.step(k, st)
            return st, (st.position, info.num_integration_steps)

        _, (xs, nsteps) = jax.lax.scan(step, state, jax.random.split(sample_key, draws))
        return xs, jnp.sum(winfo.info.num_integration_steps) + jnp.sum(nsteps)

    run = jax.jit(jax.vmap(one_chain))
    times, outs, compiles = [], [], []
    for seed in seeds:
        key = jax.random.PRNGKey(seed)
        init_key, run_key = jax.random.split(key)
        positions = jax.random.uniform(init_key, (chains, dim), dtype, -2.0, 2.0)
        with _Timer() as t:
            out = _block(run(jax.random.split(run_key, chains), positions))
        times.append(t.seconds)
        compiles.append(t.compile_seconds)
        outs.append(out)
    draws_ = [{k: np.asarray(v) for k, v in spec.blackjax_constrain(xs).items()}
              for xs, _ in outs[1:]]
    grads = [int(np.sum(np.asarray(g, np.int64))) for _, g in outs[1:]]
    return RunResult(times[0], times[1:], draws_, grads, {}, compiles[1:])


def run_numpyro(spec: Spec, chains, warmup, draws, seeds) -> RunResult:
    from numpyro.infer import MCMC, NUTS

    data = {k: jnp.asarray(v) for k, v in spec.numpyro_data.items()}
    mcmc = MCMC(NUTS(spec.numpyro_model), num_warmup=warmup, num_samples=draws,
                num_chains=chains, chain_method="vectorized", progress_bar=False)
    times, grads, draws_, compiles = [], [], [], []
    for seed in seeds:
        key = jax.random.PRNGKey(seed)
        warm_key, sample_key = jax.random.split(key)
        with _Timer() as t:
            mcmc.warmup(warm_key, **data, extra_fields=("num_steps",), collect_warmup=True)
            warm_steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])
            mcmc.run(sample_key, **data, extra_fields=("num_steps",))
            samples = _block(mcmc.get_samples(group_by_chain=True))
        times.append(t.seconds)
        compiles.append(t.compile_seconds)
        steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])
        grads.append(int(warm_steps.astype(np.int64).sum() + steps.astype(np.int64).sum()))
        draws_.append({k: np.asarray(samples[k]) for k in spec.params})
    return RunResult(times[0], times[1:], draws_[1:], grads[1:], {}, compiles[1:])


def build_stan(spec: Spec):
    """pystan's compiled posterior and the build seconds (httpstan caches builds)."""
    import stan

    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        posterior = stan.build(spec.stan_code, data=spec.stan_data, random_seed=0)
    return posterior, time.perf_counter() - t


def run_stan(spec: Spec, chains, warmup, draws, seeds) -> RunResult:
    import stan

    posterior, build_seconds = build_stan(spec)
    shapes = spec.hbm_model.bind(spec.data).param_shapes
    times, draws_, grads, steps = [], [], [], []
    for seed in seeds:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            post = stan.build(spec.stan_code, data=spec.stan_data, random_seed=seed)  # cached
            t = time.perf_counter()
            fit = post.sample(num_chains=chains, num_warmup=warmup, num_samples=draws,
                              save_warmup=True)
            times.append(time.perf_counter() - t)
            n_leap = _stan_array(fit, "n_leapfrog__", chains, warmup + draws)
        # The step size is fixed after warmup: constant within each chain under the right
        # unstacking of pystan's draws (chain-major or interleaved); try both.
        order = "C"
        step = _stan_array(fit, "stepsize__", chains, warmup + draws, order)[:, warmup:]
        if not np.all(step == step[:, :1]):
            order = "F"
            step = _stan_array(fit, "stepsize__", chains, warmup + draws, order)[:, warmup:]
        assert np.all(step == step[:, :1]), "pystan chain layout not as expected"
        n_leap = _stan_array(fit, "n_leapfrog__", chains, warmup + draws, order)
        grads.append(int(n_leap.astype(np.int64).sum()))
        draws_.append({k: _stan_array(fit, k, chains, warmup + draws, order)[:, warmup:]
                       .reshape((chains, draws) + tuple(shapes[k])) for k in spec.params})
        steps.append(step)
    extra = {"posterior": posterior, "build_seconds": build_seconds, "step_sizes": steps[1:]}
    return RunResult(build_seconds + times[0], times[1:], draws_[1:], grads[1:], extra,
                     [0.0] * len(times[1:]))


def _stan_array(fit, name, chains, iterations, order="C"):
    """pystan's (..., chains * iterations) array as (chain, iteration, ...).

    ``order="C"``: the chains stacked one after another; ``"F"``: interleaved."""
    a = np.asarray(fit[name])
    shape = a.shape[:-1]
    if order == "C":
        a = a.reshape(shape + (chains, iterations))
    else:
        a = np.swapaxes(a.reshape(shape + (iterations, chains)), -1, -2)
    return np.moveaxis(np.moveaxis(a, -1, 0), -1, 0)


RUNNERS = {"hbm": run_hbm, "blackjax": run_blackjax, "numpyro": run_numpyro, "stan": run_stan}
