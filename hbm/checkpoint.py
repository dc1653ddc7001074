"""Checkpoints of a NUTS run: the full sampler state and the draws so far, on disk.

A checkpoint is a directory that needs nothing but NumPy and JSON to read:

``checkpoint.json``
    Format version, the run's settings, the phase (``"probe"``, ``"warmup"``,
    ``"sampling"``) and iterations done in it, and the list of array files with their
    SHA-256 digests. ``checkpoint.prev.json`` is the previous good checkpoint.
``state-<n>.npz``
    The sampler state after chunk ``n``: every field of the per-chain warmup state
    (positions, log densities, gradients, step sizes, inverse mass matrices, dual-averaging
    and Welford accumulators, iteration counters), the centering weights of the chosen
    parameterization, the probe draws of ``reparam="auto"`` while they are needed, and the
    data. Random keys are not state: the key of chain ``c`` at iteration ``i`` is
    ``fold_in(chain_key[c], i)`` with chain keys derived from the seed.
``draws-<k>.npz``
    The ``k``-th chunk of sampling output (chain, draw, ...): flat unconstrained positions
    and the sampler statistics. Written once, never rewritten.

Every file is written to a temporary name, flushed and fsync'ed, then renamed, and the
JSON index is replaced last, so a run killed at any moment leaves the last complete
checkpoint readable; a file whose digest does not match is refused with a message that
names it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib

import numpy as np

from hbm.errors import HbmError

FORMAT_VERSION = 1
INDEX = "checkpoint.json"
PREVIOUS = "checkpoint.prev.json"

__all__ = ["CheckpointError", "save", "load", "FORMAT_VERSION"]


class CheckpointError(HbmError, ValueError):
    """A checkpoint is missing, truncated, corrupted or from an incompatible version."""


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: pathlib.Path):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: pathlib.Path, payload: bytes):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def save(path, meta: dict, state: dict, new_draws: dict | None = None) -> None:
    """Write a checkpoint: ``state`` arrays replace the previous state file; ``new_draws``
    (if any) is appended as the next draws chunk; ``meta`` is JSON-serializable."""
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / INDEX
    old = json.loads(index_path.read_text()) if index_path.exists() else None
    draws_files = list(old["draws_files"]) if old else []
    counter = (old["counter"] + 1) if old else 0
    if new_draws is not None:
        name = f"draws-{len(draws_files):05d}.npz"
        _atomic_write(directory / name, _npz_bytes(new_draws))
        draws_files.append({"file": name, "sha256": _sha256(directory / name)})
    state_name = f"state-{counter:06d}.npz"
    _atomic_write(directory / state_name, _npz_bytes(state))
    index = dict(meta, format_version=FORMAT_VERSION, counter=counter,
                 state_file={"file": state_name, "sha256": _sha256(directory / state_name)},
                 draws_files=draws_files)
    payload = json.dumps(index, indent=1, default=_json_default).encode()
    if old is not None:
        os.replace(index_path, directory / PREVIOUS)
    _atomic_write(index_path, payload)
    _fsync_dir(directory)
    # keep the state files of the current and the previous checkpoint only
    keep = {state_name, old["state_file"]["file"] if old else None}
    for f in directory.glob("state-*.npz"):
        if f.name not in keep:
            f.unlink(missing_ok=True)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint index")


def _read_npz(directory: pathlib.Path, entry: dict) -> dict:
    path = directory / entry["file"]
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing")
    if _sha256(path) != entry["sha256"]:
        raise CheckpointError(f"checkpoint file {path} is corrupted or truncated (its SHA-256 "
                              "does not match the index)")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # a file that hashes right but does not parse
        raise CheckpointError(f"checkpoint file {path} cannot be read: {e}") from e


def load(path, previous: bool = False):
    """Read and verify a checkpoint: ``(meta, state, draws)`` where ``draws`` concatenates
    the draw chunks along the draw axis. ``previous=True`` reads the one before."""
    directory = pathlib.Path(path)
    index_path = directory / (PREVIOUS if previous else INDEX)
    if not index_path.exists():
        raise CheckpointError(f"no checkpoint at {directory} ({index_path.name} is missing)")
    try:
        meta = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"the checkpoint index {index_path} is corrupted: {e}") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {meta.get('format_version')} is not "
                              f"supported (this hbm reads format {FORMAT_VERSION})")
    try:
        state = _read_npz(directory, meta["state_file"])
        chunks = [_read_npz(directory, entry) for entry in meta["draws_files"]]
    except CheckpointError as e:
        hint = ""
        if not previous and (directory / PREVIOUS).exists():
            hint = " The previous checkpoint may be intact: hbm.resume(path, previous=True)."
        raise CheckpointError(str(e) + "." + hint) from None
    draws = ({k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0]}
             if chunks else {})
    return meta, state, draws
