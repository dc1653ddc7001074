"""The benchmark models written once for hbm and once for each peer library.

Every peer gets the *identical* model: the same priors, the same non-centered
parameterization, and (for BlackJAX, whose log density we write by hand) the same
unconstrained coordinates and Jacobians as hbm. :func:`check_logdensities` compares the
log densities at random points in float64. Peers: BlackJAX, NumPyro, Stan (pystan 3) and
nutpie (a PyMC model compiled by ``nutpie.compile_pymc_model``, numba backend).

Peers are optional: each is imported inside the function that needs it, so this module
imports with hbm alone, and a missing peer is reported rather than fatal.

References: Hoffman and Gelman (2014), "The No-U-Turn Sampler"; Betancourt and Girolami
(2015), "Hamiltonian Monte Carlo for hierarchical models" (non-centering); Lewandowski,
Kurowicka and Joe (2009), the LKJ prior.
"""

from __future__ import annotations

import contextlib
import math
import os
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
    # () -> PyMCModel: the model for nutpie (PyMC is imported only when this is called)
    pymc_model: Callable | None = None
    # hbm's constrained parameters (one point) -> the peers' parameters, where the peers
    # write the model another way (radon's non-centered county_z); identity by default
    to_peer: Callable | None = None

    def peer_params(self, params: dict) -> dict:
        return dict(params) if self.to_peer is None else self.to_peer(params)


@dataclass
class PyMCModel:
    """A PyMC model of a spec and the maps between its variables and hbm's.

    ``to_pymc`` maps hbm's constrained parameters (one point) to PyMC's free random
    variables (constrained); ``from_pymc`` maps PyMC draws (name -> (chain, draw, ...))
    to hbm's parameter names.
    """

    model: object
    to_pymc: Callable
    from_pymc: Callable


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

    def pymc_model():
        import pymc as pm

        with pm.Model() as m:
            mu = pm.Normal("mu", 0.0, 5.0)
            tau = pm.HalfCauchy("tau", 5.0)  # PyMC's log transform: hbm's coordinates
            theta_z = pm.Normal("theta_z", 0.0, 1.0, shape=len(data["y"]))
            pm.Normal("y", mu + tau * theta_z, data["sigma"], observed=data["y"])
        names = ("mu", "tau", "theta_z")
        return PyMCModel(m, lambda p: {k: p[k] for k in names},
                         lambda draws: {k: draws[k] for k in names})

    return Spec(
        name="eight_schools", hbm_model=model, data=data,
        blackjax_logdensity=logdensity, blackjax_constrain=constrain,
        numpyro_model=numpyro_model, numpyro_data=dict(data),
        stan_code=EIGHT_SCHOOLS_STAN,
        stan_data={"J": len(data["y"]), "y": data["y"].tolist(), "sigma": data["sigma"].tolist()},
        derived=derived, params=("mu", "tau", "theta_z"), pymc_model=pymc_model,
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
generated quantities {
  matrix[J, 2] county_effect = county_z * diag_pre_multiply(sigma_county, L_county)';
}
"""


def radon_spec() -> Spec:
    """Correlated varying intercepts and floor slopes. hbm's model is written centered
    (``county_effect`` a MultivariateNormal node); bound non-centered, its coordinates
    are the peers' standard-normal ``county_z`` (``county_effect = county_z @ (diag(sigma)
    L)^T``), so the log densities agree up to a constant on the same flat layout. Draws
    are compared on ``county_effect``."""
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
    bound = model.bind(data, reparam="noncentered")
    layout = {n.name: slice(n.offset, n.offset + n.size) for n in bound.nodes}
    assert list(layout) == ["beta", "sigma_county", "L_county", "county_effect", "sigma"], \
        layout

    def peer_constrain(x):
        z = jnp.tanh(x[..., layout["L_county"]][..., 0])
        cholesky = jnp.stack([
            jnp.stack([jnp.ones_like(z), jnp.zeros_like(z)], -1),
            jnp.stack([z, jnp.sqrt(1.0 - z * z)], -1)], -2)
        return {
            "beta": x[..., layout["beta"]],
            "sigma_county": jnp.exp(x[..., layout["sigma_county"]]),
            "L_county": cholesky,
            "county_z": x[..., layout["county_effect"]].reshape(x.shape[:-1] + (n_county, 2)),
            "sigma": jnp.exp(x[..., layout["sigma"]][..., 0]),
        }

    def effects(p):
        tril = p["sigma_county"][..., :, None] * p["L_county"]
        return jnp.einsum("...jk,...lk->...jl", p["county_z"], tril)

    def constrain(x):
        p = peer_constrain(x)
        p["county_effect"] = effects(p)
        del p["county_z"]
        return p

    def to_peer(p):
        tril = np.asarray(p["sigma_county"])[:, None] * np.asarray(p["L_county"])
        z = np.linalg.solve(tril, np.asarray(p["county_effect"]).T).T
        return {"beta": p["beta"], "sigma_county": p["sigma_county"],
                "L_county": p["L_county"], "county_z": z, "sigma": p["sigma"]}

    def logdensity(x, d):
        p = peer_constrain(x)
        lp = jnp.sum(_normal_lp(p["beta"], beta_loc, beta_scale))
        lp += jnp.sum(_half_normal_lp(p["sigma_county"], sc_scale)) + jnp.sum(x[layout["sigma_county"]])
        # LKJCholesky(2, eta): (2 eta - 2) log L_11, plus the tanh Jacobian log(1 - z^2)
        # (log normalizer omitted: a constant).
        u = x[layout["L_county"]][0]
        log_1mz2 = 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))
        lp += (2.0 * eta - 2.0) * 0.5 * log_1mz2 + log_1mz2
        lp += jnp.sum(_normal_lp(p["county_z"], 0.0, 1.0))
        lp += _half_normal_lp(p["sigma"], sd_y) + x[layout["sigma"]][0]
        per_obs = effects(p)[d["county"]]
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
        effect = numpyro.deterministic("county_effect", z @ (sigma_county[:, None] * chol).T)
        per_obs = effect[county]
        mean = beta[0] + per_obs[:, 0] + (beta[1] + per_obs[:, 1]) * floor
        numpyro.sample("y", nd.Normal(mean, sigma), obs=y)

    def derived(draws):  # county_effect is among the compared parameters already
        return dict(draws)

    def pymc_model():
        # PyMC's LKJ distributions are on a packed covariance Cholesky factor (a different
        # parameterization); for 2 x 2 the LKJ(eta) density of the correlation r is
        # (1 - r^2)^(eta - 1), i.e. (1 + r) / 2 ~ Beta(eta, eta). PyMC samples the Beta in
        # log-odds: logit((1 + r) / 2) = 2 atanh(r), twice hbm's tanh coordinate (a linear
        # map: the log densities differ by a constant).
        import pymc as pm
        import pytensor.tensor as pt

        with pm.Model() as m:
            beta = pm.Normal("beta", beta_loc, beta_scale, shape=2)
            sigma_county = pm.HalfNormal("sigma_county", sc_scale, shape=2)
            corr_01 = pm.Beta("county_corr_01", eta, eta)
            county_z = pm.Normal("county_z", 0.0, 1.0, shape=(n_county, 2))
            sigma = pm.HalfNormal("sigma", sd_y)
            r = 2.0 * corr_01 - 1.0
            # effect = county_z @ (diag(sigma_county) L)^T with L = [[1, 0], [r, sqrt(1-r^2)]]
            intercept = sigma_county[0] * county_z[:, 0]
            slope = sigma_county[1] * (r * county_z[:, 0] + pt.sqrt(1.0 - r * r) * county_z[:, 1])
            mean = beta[0] + intercept[county] + (beta[1] + slope[county]) * floor
            pm.Normal("y", mean, sigma, observed=y)

        def to_pymc(p):
            return {"beta": p["beta"], "sigma_county": p["sigma_county"],
                    "county_corr_01": (1.0 + np.asarray(p["L_county"])[1, 0]) / 2.0,
                    "county_z": p["county_z"], "sigma": p["sigma"]}

        def from_pymc(draws):
            r = 2.0 * np.asarray(draws["county_corr_01"], np.float64) - 1.0
            one, zero = np.ones_like(r), np.zeros_like(r)
            cholesky = np.stack([np.stack([one, zero], -1),
                                 np.stack([r, np.sqrt(1.0 - r * r)], -1)], -2)
            out = {"beta": draws["beta"], "sigma_county": draws["sigma_county"],
                   "L_county": cholesky, "county_z": draws["county_z"],
                   "sigma": draws["sigma"]}
            out["county_effect"] = np.asarray(effects(out))
            del out["county_z"]
            return out

        return PyMCModel(m, to_pymc, from_pymc)

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
        params=("beta", "sigma_county", "L_county", "county_effect", "sigma"),
        pymc_model=pymc_model, to_peer=to_peer,
    )


SPECS = {"eight_schools": eight_schools_spec, "radon": radon_spec}


# ------------------------------------------------------------------ log density check
def check_logdensities(spec: Spec, n_points: int = 5, seed: int = 1) -> list[dict]:
    """hbm's log density against each peer's at random unconstrained points.

    Call with float64 enabled, on a spec built with it enabled (hbm's models may hold
    constants in the default float type). Returns one row per peer: the spread (max - min)
    over the points of ``peer - hbm`` (0 up to rounding when they agree up to a constant).
    """
    bound = spec.hbm_model.bind(spec.data)
    rng = np.random.default_rng(seed)
    xs = rng.normal(scale=0.7, size=(n_points, bound.size))
    hbm_lp = np.array([float(bound.logdensity(jnp.asarray(x))) for x in xs])
    params = [{k: np.asarray(v) for k, v in bound.constrain(jnp.asarray(x),
                                                         deterministic=False).items()}
              for x in xs]
    params = [spec.peer_params(p) for p in params]
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
    try:
        pymc = spec.pymc_model()
        logp = pymc.model.compile_logp(jacobian=True)
        pm_lp = np.array([float(logp(pymc_point(pymc, p))) for p in params])
        rows.append(_check_row("nutpie (PyMC compile_logp)", pm_lp, hbm_lp))
    except ImportError as e:
        rows.append({"peer": "nutpie", "status": f"not available ({e})"})
    return rows


def pymc_point(pymc: PyMCModel, params: dict) -> dict:
    """PyMC's unconstrained value variables at hbm's constrained point ``params``."""
    constrained = pymc.to_pymc(params)
    point = {}
    for rv in pymc.model.free_RVs:
        value = np.asarray(constrained[rv.name], np.float64)
        transform = pymc.model.rvs_to_transforms.get(rv)
        if transform is not None:
            value = np.asarray(transform.forward(value, *rv.owner.inputs).eval(), np.float64)
        point[pymc.model.rvs_to_values[rv].name] = value
    return point


def check_stan_logdensity(spec: Spec, posterior, n_points: int = 5, seed: int = 1) -> dict:
    """hbm against pystan's ``log_prob`` (with Jacobian) at the same constrained points."""
    bound = spec.hbm_model.bind(spec.data)
    rng = np.random.default_rng(seed)
    xs = rng.normal(scale=0.7, size=(n_points, bound.size))
    hbm_lp, stan_lp = [], []
    for x in xs:
        hbm_lp.append(float(bound.logdensity(jnp.asarray(x))))
        p = spec.peer_params(bound.constrain(jnp.asarray(x), deterministic=False))
        p = {k: np.asarray(v, np.float64).tolist() for k, v in p.items()}
        u = posterior.unconstrain_pars(p)
        stan_lp.append(float(posterior.log_prob(u, adjust_transform=True)))
    return _check_row("stan (log_prob)", np.array(stan_lp), np.array(hbm_lp))


def _check_row(peer, peer_lp, hbm_lp):
    diff = peer_lp - hbm_lp
    spread = float(np.max(diff) - np.min(diff))
    scale = float(np.max(np.abs(hbm_lp)))
    ok = spread <= 1e-11 * max(1.0, scale)  # float64 rounding; a float32 constant fails
    return {"peer": peer, "constant offset": float(np.mean(diff)), "spread": spread,
            "status": "agree up to a constant" if ok else "DISAGREE"}


# ------------------------------------------------------------------ runners
@dataclass
class RunResult:
    """One library's runs: timings, constrained draws and gradient counts.

    Lists hold one entry per timed run (after the first, compiling one). Gradient counts
    are summed over chains. ``sampling_seconds`` / ``sampling_gradients`` cover the
    sampling phase only (``nan`` where the library does not let it be timed).
    """

    first_seconds: float  # compile + first warmup+sampling
    seconds: list  # warmup + sampling of each later run (same shapes, new seed)
    draws: list  # per later run: name -> (chain, draw, ...) constrained
    gradients: list  # per later run: warmup + sampling, all chains
    extra: dict = field(default_factory=dict)
    compile_seconds: list = field(default_factory=list)  # JAX compile time inside each run
    sampling_seconds: list = field(default_factory=list)
    sampling_gradients: list = field(default_factory=list)


_COMPILE_SECONDS = [0.0]


def _on_duration(event, duration, **kwargs):
    # Tracing, lowering and XLA compilation (a persistent-cache hit is timed inside
    # backend_compile_duration). Not "/jax/compilation_cache/compile_time_saved_sec": that
    # reports time *not* spent.
    if event.startswith("/jax/core/compile/"):
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
    return jax.tree_util.tree_map(
        lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run_hbm(spec: Spec, chains, warmup, draws, seeds) -> RunResult:
    times, fits, compiles = [], [], []
    for seed in seeds:
        with _Timer() as t:
            fit = hbm.sample(spec.hbm_model, spec.data, chains=chains, warmup=warmup,
                             draws=draws, seed=seed, progress=False, log_likelihood=False)
        times.append(t.seconds)
        compiles.append(t.compile_seconds)
        fits.append(fit)
    fits = fits[1:]
    draws_ = [{k: np.asarray(f.posterior[k]) for k in spec.params} for f in fits]
    sampling_grads = [int(np.asarray(f.sample_stats["n_steps"], np.int64).sum()) for f in fits]
    grads = [int(f.info["warmup_gradient_evaluations"]) + g for f, g in zip(fits, sampling_grads)]
    return RunResult(times[0], times[1:], draws_, grads, {"fits": fits}, compiles[1:],
                     [float(f.info["times"]["sampling"]) for f in fits], sampling_grads)


def blackjax_programs(logdensity: Callable, warmup: int, draws: int):
    """BlackJAX's ``window_adaptation(nuts)`` and a ``lax.scan`` of ``nuts.step`` for one
    chain, jitted and vmapped over chains: ``warm(keys, positions) -> (state, step_size,
    inverse_mass_matrix, warmup leapfrog steps)`` and ``sample(keys, state, step_size,
    inverse_mass_matrix) -> (positions, leapfrog steps, divergences)``."""
    import blackjax

    def warm_one(key, position):
        adapt = blackjax.window_adaptation(blackjax.nuts, logdensity)
        (state, parameters), winfo = adapt.run(key, position, warmup)
        return (state, parameters["step_size"], parameters["inverse_mass_matrix"],
                jnp.sum(winfo.info.num_integration_steps))

    def sample_one(key, state, step_size, inverse_mass_matrix):
        kernel = blackjax.nuts(logdensity, step_size=step_size,
                               inverse_mass_matrix=inverse_mass_matrix)

        def step(st, k):
            st, info = kernel.step(k, st)
            return st, (st.position, info.num_integration_steps, info.is_divergent)

        _, (xs, nsteps, divergent) = jax.lax.scan(step, state, jax.random.split(key, draws))
        return xs, jnp.sum(nsteps), jnp.sum(divergent)

    return jax.jit(jax.vmap(warm_one)), jax.jit(jax.vmap(sample_one))


def run_blackjax(spec: Spec, chains, warmup, draws, seeds) -> RunResult:
    """``window_adaptation(nuts)`` then a ``lax.scan`` of ``nuts.step``, per chain,
    ``vmap``ped over chains; warmup and sampling are two jitted programs (timed apart)."""
    dtype = jnp.result_type(float)
    data = {k: jnp.asarray(v, dtype if np.issubdtype(np.asarray(v).dtype, np.floating) else None)
            for k, v in spec.data.items()}
    dim = spec.hbm_model.bind(spec.data).size
    warm, sample = blackjax_programs(lambda x: spec.blackjax_logdensity(x, data), warmup,
                                     draws)
    times, outs, compiles, sampling_times = [], [], [], []
    for seed in seeds:
        key = jax.random.PRNGKey(seed)
        init_key, warm_key, sample_key = jax.random.split(key, 3)
        positions = jax.random.uniform(init_key, (chains, dim), dtype, -2.0, 2.0)
        with _Timer() as t:
            state, step_size, inverse_mass, warm_steps = _block(
                warm(jax.random.split(warm_key, chains), positions))
            with _Timer() as ts:
                xs, steps, _ = _block(sample(jax.random.split(sample_key, chains), state,
                                             step_size, inverse_mass))
        times.append(t.seconds)
        compiles.append(t.compile_seconds)
        sampling_times.append(ts.seconds - ts.compile_seconds)
        outs.append((xs, int(np.sum(np.asarray(warm_steps, np.int64))),
                     int(np.sum(np.asarray(steps, np.int64)))))
    draws_ = [{k: np.asarray(v) for k, v in spec.blackjax_constrain(xs).items()}
              for xs, _, _ in outs[1:]]
    grads = [w + s for _, w, s in outs[1:]]
    return RunResult(times[0], times[1:], draws_, grads, {}, compiles[1:], sampling_times[1:],
                     [s for _, _, s in outs[1:]])


def run_numpyro(spec: Spec, chains, warmup, draws, seeds) -> RunResult:
    """``MCMC(NUTS(model), chain_method="vectorized")``: ``warmup`` then ``run`` (which
    recompiles on every call: its compile time is taken out of the sampling phase)."""
    from numpyro.infer import MCMC, NUTS

    data = {k: jnp.asarray(v) for k, v in spec.numpyro_data.items()}
    mcmc = MCMC(NUTS(spec.numpyro_model), num_warmup=warmup, num_samples=draws,
                num_chains=chains, chain_method="vectorized", progress_bar=False)
    times, grads, draws_, compiles, sampling_times, sampling_grads = [], [], [], [], [], []
    for seed in seeds:
        key = jax.random.PRNGKey(seed)
        warm_key, sample_key = jax.random.split(key)
        with _Timer() as t:
            mcmc.warmup(warm_key, **data, extra_fields=("num_steps",), collect_warmup=True)
            warm_steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])
            with _Timer() as ts:
                mcmc.run(sample_key, **data, extra_fields=("num_steps",))
                samples = _block(mcmc.get_samples(group_by_chain=True))
        times.append(t.seconds)
        compiles.append(t.compile_seconds)
        sampling_times.append(ts.seconds - ts.compile_seconds)
        steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])
        sampling_grads.append(int(steps.astype(np.int64).sum()))
        grads.append(int(warm_steps.astype(np.int64).sum()) + sampling_grads[-1])
        draws_.append({k: np.asarray(samples[k]) for k in spec.params})
    return RunResult(times[0], times[1:], draws_[1:], grads[1:], {}, compiles[1:],
                     sampling_times[1:], sampling_grads[1:])


def _sampling_phase(full_seconds, warm_only_seconds, full_warm_steps, warm_only_steps,
                     sampling_steps):
    """Sampling-phase seconds and gradients of a library that reports neither phase's
    time: a second run with the same seed, the same warmup and one draw takes the
    warmup (and the fixed costs) out: ``T(warmup + draws) - T(warmup + 1)`` covers draws
    2..n. Valid only when the warmups are identical (same leapfrog counts, checked);
    else ``nan``. ``sampling_steps``: (chain, draw) leapfrog steps of the full run."""
    if not np.array_equal(np.asarray(full_warm_steps), np.asarray(warm_only_steps)):
        return float("nan"), 0
    return (full_seconds - warm_only_seconds,
            int(np.asarray(sampling_steps, np.int64)[:, 1:].sum()))


def run_nutpie(spec: Spec, chains, warmup, draws, seeds) -> RunResult:
    """nutpie's NUTS on the spec's PyMC model (``nutpie.compile_pymc_model``, numba
    backend; chains on all usable cores, float64). The sampling phase is timed by
    :func:`_sampling_phase`."""
    import nutpie

    pymc = spec.pymc_model()
    t = time.perf_counter()
    compiled = nutpie.compile_pymc_model(pymc.model)
    compile_seconds = time.perf_counter() - t
    cores = usable_cores()

    def sample(seed, n_draws):
        t = time.perf_counter()
        trace = nutpie.sample(compiled, chains=chains, tune=warmup, draws=n_draws, seed=seed,
                              cores=cores, progress_bar=False)
        seconds = time.perf_counter() - t
        warm = np.asarray(trace.warmup_sample_stats["n_steps"], np.int64)
        return seconds, trace, warm, np.asarray(trace.sample_stats["n_steps"], np.int64)

    times, draws_, grads, sampling_times, sampling_grads = [], [], [], [], []
    for i, seed in enumerate(seeds):
        seconds, trace, warm_steps, steps = sample(seed, draws)
        times.append(seconds)
        if i == 0:
            continue
        grads.append(int(warm_steps.sum() + steps.sum()))
        posterior = {k: np.asarray(trace.posterior[k]) for k in trace.posterior.data_vars}
        draws_.append({k: np.asarray(v) for k, v in pymc.from_pymc(posterior).items()})
        warm_seconds, _, warm_only_steps, _ = sample(seed, 1)
        s, g = _sampling_phase(seconds, warm_seconds, warm_steps, warm_only_steps, steps)
        sampling_times.append(s)
        sampling_grads.append(g)
    extra = {"build_seconds": compile_seconds, "cores": cores}
    return RunResult(compile_seconds + times[0], times[1:], draws_, grads, extra,
                     [0.0] * len(times[1:]), sampling_times, sampling_grads)


@contextlib.contextmanager
def _quiet():
    """Silence a block down to the file descriptors (the C++ compiler that ``stan.build``
    runs writes to them directly); on an exception, show the captured tail."""
    import sys
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
                yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read()[-3000:])


def build_stan(spec: Spec):
    """pystan's compiled posterior and the build seconds (httpstan caches builds)."""
    import stan

    t = time.perf_counter()
    with _quiet():
        posterior = stan.build(spec.stan_code, data=spec.stan_data, random_seed=0)
    return posterior, time.perf_counter() - t


def run_stan(spec: Spec, chains, warmup, draws, seeds) -> RunResult:
    """pystan 3 (chains as separate processes, double precision). The sampling phase is
    timed by :func:`_sampling_phase`."""
    import stan

    posterior, build_seconds = build_stan(spec)
    shapes = spec.hbm_model.bind(spec.data).param_shapes
    times, draws_, grads, steps = [], [], [], []
    sampling_times, sampling_grads = [], []
    for i, seed in enumerate(seeds):
        with _quiet():
            post = stan.build(spec.stan_code, data=spec.stan_data, random_seed=seed)  # cached
            t = time.perf_counter()
            fit = post.sample(num_chains=chains, num_warmup=warmup, num_samples=draws,
                              save_warmup=True)
            times.append(time.perf_counter() - t)
        # The step size is fixed after warmup: constant within each chain under the right
        # unstacking of pystan's draws (chain-major or interleaved); try both.
        order = "C"
        step = _stan_array(fit, "stepsize__", chains, warmup + draws, order)[:, warmup:]
        if not np.all(step == step[:, :1]):
            order = "F"
            step = _stan_array(fit, "stepsize__", chains, warmup + draws, order)[:, warmup:]
        assert np.all(step == step[:, :1]), "pystan chain layout not as expected"
        if i == 0:
            continue
        n_leap = _stan_array(fit, "n_leapfrog__", chains, warmup + draws, order).astype(np.int64)
        grads.append(int(n_leap.sum()))
        draws_.append({k: _stan_array(fit, k, chains, warmup + draws, order)[:, warmup:]
                       .reshape((chains, draws) + tuple(shapes[k])) for k in spec.params})
        steps.append(step)
        with _quiet():
            t = time.perf_counter()
            warm_fit = post.sample(num_chains=chains, num_warmup=warmup, num_samples=1,
                                   save_warmup=True)
            warm_seconds = time.perf_counter() - t
        warm_only = _stan_array(warm_fit, "n_leapfrog__", chains, warmup + 1, order)
        s, g = _sampling_phase(times[-1], warm_seconds, n_leap[:, :warmup],
                               warm_only[:, :warmup], n_leap[:, warmup:])
        sampling_times.append(s)
        sampling_grads.append(g)
    extra = {"posterior": posterior, "build_seconds": build_seconds, "step_sizes": steps}
    return RunResult(build_seconds + times[0], times[1:], draws_, grads, extra,
                     [0.0] * len(times[1:]), sampling_times, sampling_grads)


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


RUNNERS = {"hbm": run_hbm, "blackjax": run_blackjax, "numpyro": run_numpyro,
           "nutpie": run_nutpie, "stan": run_stan}
