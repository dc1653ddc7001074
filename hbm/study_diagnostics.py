"""Rank-normalized split R-hat and bulk ESS in JAX, on the device, vectorized.

The convergence diagnostics of Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021),
"Rank-normalization, folding, and localization: An improved R-hat for assessing
convergence of MCMC", Bayesian Analysis 16(2), computed inside compiled programs so that
a simulation study over many data sets reduces its draws on the device
(:mod:`hbm.study`). Every function takes draws shaped ``(chains, draws, k)`` and treats the
``k`` elements independently (vectorized over that axis); all of them can be ``vmap``-ed
over data sets.

* Rank normalization: each chain is split in halves (the middle draw of an odd length
  dropped), the pooled values get fractional ranks ``r`` (ties averaged) and the normal
  scores ``Phi^-1((r - 3/8) / (N + 1/4))`` (Blom 1958), ``N`` the number of pooled draws.
* R-hat: the larger of the split R-hat of the rank-normalized draws (bulk) and of the
  rank-normalized folded draws ``|x - median(x)|`` (tail), each
  ``sqrt(((n - 1)/n W + B/n) / W)`` over the split chains; NaN with fewer than 2 chains or
  4 draws, as ArviZ's ``rhat(method="rank")``.
* Bulk ESS: the effective sample size of the rank-normalized split chains, with
  autocovariances by FFT and Geyer's (1992) initial positive and initial monotone sequence
  estimators on the combined-chain autocorrelations (Vehtari et al. 2021, section 3.2);
  the autocorrelation time is floored at ``1 / log10(N)``, as ArviZ does.

These reproduce ArviZ's (0.x ``arviz.rhat`` / ``arviz.ess(method="bulk")``, 1.x
``arviz_stats``) to floating-point rounding; ``tests/test_study_diagnostics.py`` checks it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

__all__ = ["split_chains", "fractional_ranks", "rank_normalize", "rank_normalized_rhat",
           "ess_bulk", "autocovariance"]

_BLOM_OFFSET = 3.0 / 8.0


def split_chains(draws: jax.Array) -> jax.Array:
    """``(chains, n, k)`` -> ``(2 chains, n // 2, k)``: first and last halves of each chain."""
    n = draws.shape[1]
    half = n // 2
    return jnp.concatenate([draws[:, :half], draws[:, n - half:]], axis=0)


def fractional_ranks(values: jax.Array) -> jax.Array:
    """Ranks 1..N of each column of ``values`` (N, k), ties given their average rank."""

    def column(v):
        ordered = jnp.sort(v)
        below = jnp.searchsorted(ordered, v, side="left")
        at_most = jnp.searchsorted(ordered, v, side="right")
        return (below + at_most + 1).astype(v.dtype) / 2

    return jax.vmap(column, in_axes=1, out_axes=1)(values)


def rank_normalize(draws: jax.Array) -> jax.Array:
    """Normal scores of the pooled fractional ranks of ``draws`` (m, n, k), per element."""
    m, n, k = draws.shape
    size = m * n
    ranks = fractional_ranks(draws.reshape(size, k))
    return ndtri((ranks - _BLOM_OFFSET) / (size - 2 * _BLOM_OFFSET + 1)).reshape(m, n, k)


def _rhat(chains: jax.Array) -> jax.Array:
    """Potential scale reduction of ``(m, n, k)`` chains (no splitting)."""
    n = chains.shape[1]
    within = chains.var(axis=1, ddof=1).mean(axis=0)
    between = n * chains.mean(axis=1).var(axis=0, ddof=1)
    return jnp.sqrt((between / within + n - 1) / n)


def rank_normalized_rhat(draws: jax.Array) -> jax.Array:
    """Rank-normalized split R-hat (max of bulk and folded) of ``draws`` (chains, n, k).

    Returns ``(k,)``; NaN where a value is NaN, with fewer than 2 chains or fewer than 4
    draws per chain (as ArviZ).
    """
    chains, n, k = draws.shape
    if chains < 2 or n < 4:
        return jnp.full((k,), jnp.nan, dtype=draws.dtype)
    split = split_chains(draws)
    bulk = _rhat(rank_normalize(split))
    median = jnp.median(split.reshape(-1, k), axis=0)
    tail = _rhat(rank_normalize(jnp.abs(split - median)))
    rhat = jnp.maximum(bulk, tail)
    invalid = jnp.isnan(draws).any(axis=(0, 1)) | jnp.isnan(bulk) | jnp.isnan(tail)
    return jnp.where(invalid, jnp.nan, rhat)


def autocovariance(chains: jax.Array) -> jax.Array:
    """Biased autocovariance (divisor n) of each chain at every lag, by FFT: (m, n, k)."""
    n = chains.shape[1]
    centered = chains - chains.mean(axis=1, keepdims=True)
    length = 1 << int(2 * n - 1).bit_length()  # zero padding >= 2n - 1: no wrap-around
    spectrum = jnp.fft.rfft(centered, n=length, axis=1)
    return jnp.fft.irfft(spectrum * jnp.conj(spectrum), n=length, axis=1)[:, :n] / n


def _ess(chains: jax.Array) -> jax.Array:
    """Effective sample size of ``(m, n, k)`` chains (Geyer's initial monotone sequence)."""
    m, n, k = chains.shape
    total = m * n
    acov = autocovariance(chains)  # (m, n, k)
    mean_var = acov[:, 0].mean(axis=0) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + chains.mean(axis=1).var(axis=0, ddof=1)
    rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus  # (n, k), lags 0..n-1
    rho = rho.at[0].set(1.0)
    # pairs (rho[2j], rho[2j+1]); pair j >= 1 is visited while every earlier pair sum is
    # positive and 2j < n - 2 (Geyer's initial positive sequence)
    pairs = (n - 1 + 1) // 2  # pairs with both lags < n
    even = rho[0:2 * pairs:2]
    odd = rho[1:2 * pairs:2]
    sums = even + odd  # (pairs, k)
    j = jnp.arange(pairs)[:, None]
    reachable = (j >= 1) & (2 * j < n - 2)
    positive_before = jnp.cumprod(jnp.concatenate(
        [jnp.ones((1, k), bool), sums[:-1] > 0], axis=0).astype(jnp.int32), axis=0) > 0
    last = jnp.sum(reachable & positive_before, axis=0)  # J: index of the last visited pair
    # Geyer's initial monotone sequence on the pairs before J
    monotone = jax.lax.cummin(sums, axis=0)
    head = jnp.sum(jnp.where(j < last, monotone, 0.0), axis=0)
    last_sum = jnp.take_along_axis(sums, last[None], axis=0)[0]
    last_even = jnp.take_along_axis(even, last[None], axis=0)[0]
    tail = jnp.where((last_sum >= 0) | (last_even > 0), last_even, 0.0)
    tau = -1.0 + 2.0 * head + tail
    tau = jnp.maximum(tau, 1.0 / jnp.log10(float(total)))
    ess = total / tau
    constant = (chains.max(axis=(0, 1)) - chains.min(axis=(0, 1))) < jnp.finfo(
        chains.dtype).resolution
    ess = jnp.where(jnp.isnan(rho).any(axis=0), jnp.nan, ess)
    return jnp.where(constant, float(total), ess)


def ess_bulk(draws: jax.Array) -> jax.Array:
    """Bulk effective sample size of ``draws`` (chains, n, k) -> ``(k,)``: the ESS of the
    rank-normalized split chains. NaN where a value is NaN or with fewer than 4 draws."""
    chains, n, k = draws.shape
    if n < 4:
        return jnp.full((k,), jnp.nan, dtype=draws.dtype)
    ess = _ess(rank_normalize(split_chains(draws)))
    return jnp.where(jnp.isnan(draws).any(axis=(0, 1)), jnp.nan, ess)
