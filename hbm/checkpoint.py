"""Checkpoints of a NUTS run: the full sampler state and the draws so far, on disk.

A checkpoint is a directory that needs nothing but NumPy, JSON and a NetCDF reader
(xarray, netCDF4 or ``scipy.io.netcdf_file``) to read:

``checkpoint.json``
    Format version, the run's settings, the phase (``"probe"``, ``"warmup"``,
    ``"sampling"``) and iterations done in it, the state file and the list of draw chunks,
    each with its number of draws and its files' SHA-256 digests.
    ``checkpoint.prev.json`` is the previous good checkpoint.
``data.npz``
    The run's data (``data/<key>``), written once.
``state-<n>.npz``
    The sampler state after chunk ``n``: every field of the per-chain warmup state
    (positions, log densities, gradients, step sizes, inverse mass matrices, dual-averaging
    and Welford accumulators, iteration counters), the centering weights of the chosen
    parameterization, the probe draws of ``reparam="auto"`` while they are needed, and the
    random keys (``keys/<name>``, one per chain and phase): the key of chain ``c`` at
    iteration ``i`` of a phase is ``fold_in(keys[c], i)``, so keys never change from chunk
    to chunk.
``posterior-<k>.nc``, ``sample_stats-<k>.nc``, ``log_likelihood-<k>.nc``
    The ``k``-th chunk of kept draws, one NetCDF-3 file per ArviZ group, with dimensions
    ``(chain, draw, ...)`` (the model's ``dims`` where it names them) and a ``draw``
    coordinate that counts from the start of sampling. Written once, never rewritten.
    Booleans are stored as bytes and 64-bit integers as 32-bit ones, with the original
    dtype in the variable's ``hbm_dtype`` attribute. The posterior so far is, with xarray,
    ``xr.concat([xr.open_dataset(f) for f in sorted(glob("posterior-*.nc"))], "draw")``
    (the index lists the chunks that belong to the checkpoint).

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

FORMAT_VERSION = 2
INDEX = "checkpoint.json"
PREVIOUS = "checkpoint.prev.json"

__all__ = ["CheckpointError", "save", "load", "check_new", "atomic_write", "npz_bytes",
           "FORMAT_VERSION"]


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


def atomic_write(path: pathlib.Path, payload: bytes):
    """Write ``payload`` to ``path`` atomically: a temporary file, flushed and fsynced,
    renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def npz_bytes(arrays: dict) -> bytes:
    """``arrays`` as the bytes of an ``.npz`` file."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


_NETCDF_TYPES = {np.dtype(t) for t in ("int8", "int16", "int32", "float32", "float64")}


def _netcdf_storable(value: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``value`` in a dtype NetCDF-3 holds, and the original dtype's name if it changed."""
    if value.dtype in _NETCDF_TYPES:
        return value, None
    if value.dtype == bool:
        return value.astype(np.int8), "bool"
    if np.issubdtype(value.dtype, np.integer):
        info = np.iinfo(np.int32)
        if value.size == 0 or (value.min() >= info.min and value.max() <= info.max):
            return value.astype(np.int32), value.dtype.name
    return value.astype(np.float64), value.dtype.name


def _netcdf_bytes(arrays: dict, first_draw: int, dims: dict) -> bytes:
    """One group of a draws chunk, ``name -> (chain, draw, ...)``, as a NetCDF-3 file."""
    from scipy.io import netcdf_file

    chains, count = next(iter(arrays.values())).shape[:2]
    buf = io.BytesIO()
    f = netcdf_file(buf, "w", version=2)
    sizes = {"chain": chains, "draw": count}
    for name, size in sizes.items():
        f.createDimension(name, size)
    f.createVariable("chain", "i", ("chain",))[:] = np.arange(chains, dtype=np.int32)
    f.createVariable("draw", "i", ("draw",))[:] = first_draw + np.arange(count, dtype=np.int32)
    for name, value in arrays.items():
        value = np.asarray(value)
        named = list(dims.get(name, ()))
        axes = []
        for i, size in enumerate(value.shape[2:]):
            axis = named[i] if i < len(named) else f"{name}_dim_{i}"
            if sizes.get(axis, size) != size or axis in arrays:
                axis = f"{name}_dim_{i}"
            if axis not in sizes:
                f.createDimension(axis, size)
                sizes[axis] = size
            axes.append(axis)
        stored, original = _netcdf_storable(value)
        variable = f.createVariable(name, stored.dtype, ("chain", "draw", *axes))
        variable[:] = stored
        if original is not None:
            variable.hbm_dtype = original
    f.flush()
    payload = buf.getvalue()
    f.close()
    return payload


def _read_netcdf(path: pathlib.Path) -> dict:
    from scipy.io import netcdf_file

    with netcdf_file(path, "r", mmap=False) as f:
        arrays = {}
        for name, variable in f.variables.items():
            if name in ("chain", "draw"):
                continue
            value = np.array(variable[:])
            original = getattr(variable, "hbm_dtype", None)
            if original is not None:
                value = value.astype(original.decode() if isinstance(original, bytes)
                                     else original)
            arrays[name] = value
    return dict(sorted(arrays.items()))  # the order of the run's (JAX-sorted) dicts


def save(path, meta: dict, state: dict, new_draws: dict | None = None,
         dims: dict | None = None, data: dict | None = None) -> None:
    """Write a checkpoint: ``state`` arrays replace the previous state file; ``new_draws``
    (``group -> name -> (chain, draw, ...)``), if any, is appended as the next draws
    chunk; ``meta`` is JSON-serializable; ``dims`` names parameter axes; ``data`` is
    written with the first checkpoint of a run and kept."""
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / INDEX
    old = json.loads(index_path.read_text()) if index_path.exists() else None
    if old is not None and old.get("data_file"):
        data_file = old["data_file"]
    else:
        atomic_write(directory / "data.npz",
                      npz_bytes({f"data/{k}": v for k, v in (data or {}).items()}))
        data_file = {"file": "data.npz", "sha256": _sha256(directory / "data.npz")}
    draws_files = list(old["draws_files"]) if old else []
    counter = (old["counter"] + 1) if old else 0
    if new_draws is not None:
        first_draw = sum(entry["draws"] for entry in draws_files)
        files, count = {}, 0
        for group, arrays in new_draws.items():
            if not arrays:
                continue
            name = f"{group}-{len(draws_files):05d}.nc"
            atomic_write(directory / name, _netcdf_bytes(arrays, first_draw, dims or {}))
            files[group] = {"file": name, "sha256": _sha256(directory / name)}
            count = next(iter(arrays.values())).shape[1]
        draws_files.append({"draws": count, "files": files})
    state_name = f"state-{counter:06d}.npz"
    atomic_write(directory / state_name, npz_bytes(state))
    index = dict(meta, format_version=FORMAT_VERSION, counter=counter,
                 state_file={"file": state_name, "sha256": _sha256(directory / state_name)},
                 data_file=data_file, draws_files=draws_files)
    payload = json.dumps(index, indent=1, default=_json_default).encode()
    if old is not None:  # a copy, not a move: the index never goes missing, even briefly
        atomic_write(directory / PREVIOUS, index_path.read_bytes())
    atomic_write(index_path, payload)
    _fsync_dir(directory)
    # keep the state files of the current and the previous checkpoint only
    keep = {state_name, old["state_file"]["file"] if old else None}
    for f in directory.glob("state-*.npz"):
        if f.name not in keep:
            f.unlink(missing_ok=True)


def check_new(path) -> None:
    """Refuse to start a run in a directory that already holds a checkpoint: it may be
    the only copy of a long run's draws."""
    index_path = pathlib.Path(path) / INDEX
    if not index_path.exists():
        return
    try:
        meta = json.loads(index_path.read_text())
        where = (f" (phase {meta['phase']!r}, {meta['done']} iterations done)"
                 if "phase" in meta and "done" in meta else "")
    except (OSError, ValueError):
        where = ""
    raise CheckpointError(
        f"checkpoint directory {path} already holds a checkpoint{where}: continue that run "
        "with hbm.resume(path, model), or remove the directory (or pass another path) to "
        "start a new one")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint index")


def _verify(directory: pathlib.Path, entry: dict) -> pathlib.Path:
    path = directory / entry["file"]
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing")
    if _sha256(path) != entry["sha256"]:
        raise CheckpointError(f"checkpoint file {path} is corrupted or truncated (its SHA-256 "
                              "does not match the index)")
    return path


def _read(path: pathlib.Path, reader) -> dict:
    try:
        return reader(path)
    except Exception as e:  # a file that hashes right but does not parse
        raise CheckpointError(f"checkpoint file {path} cannot be read: {e}") from e


def _read_npz(path: pathlib.Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def load(path, previous: bool = False):
    """Read and verify a checkpoint: ``(meta, state, draws)``, where ``draws`` yields the
    draw chunks in order, each ``group -> name -> (chain, draw, ...)``, read one at a time
    (every file's digest is checked before this returns). ``previous=True`` reads the
    checkpoint before the last."""
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
        state = _read(_verify(directory, meta["state_file"]), _read_npz)
        state.update(_read(_verify(directory, meta["data_file"]), _read_npz))
        chunks = [{group: _verify(directory, entry) for group, entry in chunk["files"].items()}
                  for chunk in meta["draws_files"]]
    except CheckpointError as e:
        hint = ""
        if not previous and (directory / PREVIOUS).exists():
            hint = " The previous checkpoint may be intact: hbm.resume(path, previous=True)."
        raise CheckpointError(str(e) + "." + hint) from None

    def draws():
        for files in chunks:
            yield {group: _read(path, _read_netcdf) for group, path in files.items()}

    return meta, state, draws()
