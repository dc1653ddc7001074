"""Encoding a NUTS run for :mod:`hbm.checkpoint` and checking that a model matches.

A checkpoint holds the run's :class:`~hbm.inference.settings.SampleSettings`, its phase
and progress, the per-chain sampler state (the leaves of the warmup state), the partial
centering weights, the per-chain keys and the draws so far. The model is Python code and
is passed again to :func:`hbm.resume`; :func:`model_structure` records enough of it to
refuse a model that does not match.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from hbm.inference.common import observed_keys
from hbm.model import BoundModel

__all__ = ["model_structure", "check_same_structure", "save", "restore_arrays"]


def model_structure(bound: BoundModel) -> dict:
    """What a checkpoint's state depends on: each parameter's name, shape and number of
    unconstrained coordinates, in order, and the observed data keys (JSON-ready)."""
    return {"parameters": [[n.name, list(n.shape), int(n.size)] for n in bound.nodes],
            "observed": sorted(observed_keys(bound))}


def check_same_structure(saved: dict, current: dict, path) -> None:
    """A CheckpointError listing every difference between two :func:`model_structure`."""
    from hbm.checkpoint import CheckpointError

    if saved == current:
        return
    old = {p[0]: p[1:] for p in saved.get("parameters", [])}
    new = {p[0]: p[1:] for p in current["parameters"]}
    differences = [f"parameter '{k}' is missing from the model" for k in old if k not in new]
    differences += [f"parameter '{k}' is not in the checkpoint" for k in new if k not in old]
    differences += [f"parameter '{k}' has shape {tuple(new[k][0])} (checkpoint: "
                    f"{tuple(old[k][0])})" for k in new if k in old and new[k] != old[k]]
    if not differences and list(old) != list(new):
        differences.append(f"the parameters are in another order ({list(new)}; checkpoint: "
                           f"{list(old)})")
    if saved.get("observed") != current["observed"]:
        differences.append(f"the observed data keys are {current['observed']} (checkpoint: "
                           f"{saved.get('observed')})")
    raise CheckpointError(f"the model passed to resume does not match the checkpoint at {path}: "
                          + "; ".join(differences))


def save(run, path, new_draws=None) -> None:
    """Write ``run`` (a :class:`~hbm.inference.nuts.NUTSRun`) to its checkpoint directory,
    appending ``new_draws`` (a sampling chunk) if given."""
    from hbm import checkpoint as ckpt

    leaves = jax.tree_util.tree_leaves(run.state)
    state = {f"state/{i}": np.asarray(v) for i, v in enumerate(leaves)}
    state.update({f"weights/{k}": np.asarray(v) for k, v in run.weights.items()})
    bind_reparam = run.bind_reparam
    if isinstance(bind_reparam, dict):
        state.update({f"bind_weights/{k}": np.asarray(v) for k, v in bind_reparam.items()})
        bind_meta = {k: "weights" for k in bind_reparam}
    else:
        bind_meta = bind_reparam
    state.update({f"keys/{k}": np.asarray(v) for k, v in run.keys.items()})
    if run.probe_positions is not None:
        state["probe_positions"] = np.asarray(run.probe_positions)
    meta = dict(settings=run.settings.to_meta(), phase=run.phase, done=run.done,
                num_state_leaves=len(leaves), bind_reparam=bind_meta,
                warmup_stats=run.stats, times=run.times, model=run.model.name,
                structure=model_structure(run.bound), float64=bool(jax.config.jax_enable_x64))
    first = not (pathlib.Path(path) / ckpt.INDEX).exists()
    data = {k: np.asarray(v) for k, v in run.bound.data.items()} if first else None
    ckpt.save(path, meta, state, new_draws, dims=run.model.dims, data=data)


def restore_arrays(state: dict, prefix: str) -> dict:
    """The arrays saved under ``prefix/`` in a checkpoint's state, by name."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + "/")}
