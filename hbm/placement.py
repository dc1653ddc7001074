"""Placing batches of data sets on devices and processes (simulation studies, SBC).

A batch of data sets is one leading axis of the programs of :mod:`hbm.batch`. Here it is
split evenly over the process's local devices: each device runs the vmapped single-device
program on its own slice, with no communication (:func:`shard_program` says why not one
SPMD program over a mesh). A batch is padded to a multiple of the device count with
further data sets whose results are dropped.

With several processes (``jax.distributed.initialize`` before the call), every process
runs the same call: each fits its share of every batch (a contiguous slice of the padded
batch) on its local devices, and the per-data-set results of the batch are gathered to
every process (:func:`jax.experimental.multihost_utils.process_allgather`, as raw bytes,
so every dtype survives bit for bit whatever ``jax_enable_x64`` says). Compiled programs
never span processes; only the gathers and broadcasts do, which on CPU need JAX's CPU
collectives (gloo; ``jax_cpu_collectives_implementation``). Process 0 alone reads and
writes a study's directory and broadcasts what it read.

Each data set's result depends only on its key (from the seed and its global index), and
a vmapped lane computes the same whatever the other lanes hold, so one device, several
devices and several processes give the same table.

Linear algebra on CPU: a program that calls LAPACK (:func:`hbm.inference.chains.
calls_linear_algebra`) must not run on several host devices of one process at once (the
deadlock described in :mod:`hbm.inference.chains`), so it runs on one device per process.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from hbm.errors import ConfigurationError, HbmError

__all__ = ["Placement", "resolve_placement", "MIN_LANES", "shard_program",
           "gather_rows", "from_process_zero", "check_same_everywhere", "placement_info"]

#: a device runs at least this many data sets per call: XLA compiles a batch of one
#: (a degenerate axis) differently, which changes the rounding
MIN_LANES = 2


class Placement(NamedTuple):
    """Where a study's batches run.

    ``devices``: this process's devices; ``lanes``: data sets each process runs per batch
    (its share of the batch, padded: at least ``MIN_LANES`` per device, a multiple of
    every process's device count); ``process_index`` and ``process_count`` as JAX reports
    them; ``device_counts``: devices per process; ``note``: why fewer devices than asked
    for, or None."""

    devices: tuple
    lanes: int
    process_index: int
    process_count: int
    device_counts: tuple
    note: str | None = None


def _local_devices(devices) -> list:
    local = jax.local_devices()
    if devices is None:
        return list(local)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= int(devices) <= len(local):
            raise ConfigurationError(f"devices={int(devices)}: this process has "
                                     f"{len(local)} local device(s)")
        return list(local[:int(devices)])
    if isinstance(devices, jax.Device):
        devices = [devices]
    try:
        chosen = list(devices)
    except TypeError as e:
        raise ConfigurationError("devices must be None, a number of local devices or a "
                                 f"sequence of jax devices, got {type(devices).__name__}") \
            from e
    if not chosen:
        raise ConfigurationError("devices is empty")
    for d in chosen:
        if not isinstance(d, jax.Device):
            raise ConfigurationError(f"devices holds {d!r}, not a jax device")
        if d not in local:
            raise ConfigurationError(f"device {d} is not a local device of process "
                                     f"{jax.process_index()}; each process passes its own")
    if len(set(chosen)) != len(chosen):
        raise ConfigurationError("devices lists a device twice")
    if len({d.platform for d in chosen}) > 1:
        raise ConfigurationError("devices mixes platforms")
    return chosen


def resolve_placement(devices, batch: int, *, linear_algebra=False) -> Placement:
    """The placement of batches of ``batch`` data sets on ``devices`` (None: every local
    device; a number ``n``: the first ``n``; or a sequence of local ``jax.Device``), of
    which a process uses as many as its share of a batch fills with ``MIN_LANES`` data
    sets each. On CPU a program that calls LAPACK (``linear_algebra``: a bool, or a
    function returning it, asked only on several CPU devices) keeps one device.
    Collective when several processes run (each passes its own devices)."""
    chosen = _local_devices(devices)
    count = jax.process_count()
    share = -(-batch // count)
    chosen = chosen[:max(1, min(len(chosen), share // MIN_LANES))]
    note = None
    if (len(chosen) > 1 and chosen[0].platform == "cpu"
            and (linear_algebra() if callable(linear_algebra) else linear_algebra)):
        note = ("the model calls LAPACK routines, which must not run on several CPU host "
                "devices at once (see hbm.inference.chains): one device per process")
        chosen = chosen[:1]
    if count > 1:
        counts = tuple(int(c) for c in gather_rows_raw(np.asarray([len(chosen)], np.int32)))
    else:
        counts = (len(chosen),)
    unit = math.lcm(*counts)
    lanes = unit * -(-max(share, MIN_LANES) // unit)
    return Placement(tuple(chosen), lanes, jax.process_index(), count, counts, note)


class _PerDevice:
    """A batch program run as one single-device executable per device (see
    :func:`shard_program`), compiled per argument shapes, in parallel threads."""

    def __init__(self, program: Callable, devices: tuple, batched: tuple):
        self._jitted = jax.jit(lambda *args: program(*args))
        self._devices = devices
        self._batched = batched
        self._executables: dict = {}

    def _chunks(self, args) -> list:
        n = len(self._devices)
        size = {a.shape[0] for arg, b in zip(args, self._batched) if b
                for a in jax.tree.leaves(arg)}
        if len(size) != 1 or next(iter(size)) % n:
            raise ConfigurationError(f"a batch of {sorted(size)} data sets cannot be split "
                                     f"evenly over {n} devices")
        m = next(iter(size)) // n
        return [[jax.tree.map(lambda a: a[i * m:(i + 1) * m], arg) if b else arg
                 for arg, b in zip(args, self._batched)] for i in range(n)]

    def _compile(self, chunks) -> list:
        from concurrent.futures import ThreadPoolExecutor

        def abstract(chunk, device):
            sharding = jax.sharding.SingleDeviceSharding(device)
            return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype,
                                                               sharding=sharding), chunk)

        lowered = [self._jitted.lower(*abstract(c, d)) for c, d in zip(chunks, self._devices)]
        with ThreadPoolExecutor(len(lowered)) as pool:  # XLA compiles without the GIL
            return list(pool.map(lambda low: low.compile(), lowered))

    def __call__(self, *args):
        if len(args) != len(self._batched):
            raise TypeError(f"expected {len(self._batched)} arguments, got {len(args)}")
        chunks = self._chunks(args)
        signature = jax.tree.structure(chunks[0]), tuple(
            (np.shape(a), np.dtype(a.dtype)) for a in jax.tree.leaves(chunks[0]))
        if signature not in self._executables:
            self._executables[signature] = self._compile(chunks)
        outputs = [executable(*jax.device_put(chunk, device))  # dispatched asynchronously
                   for executable, chunk, device in zip(self._executables[signature], chunks,
                                                        self._devices)]
        return jax.tree.map(lambda *parts: np.concatenate([np.asarray(p) for p in parts]),
                            *outputs)


def shard_program(program: Callable, placement: Placement, batched: Sequence[bool]):
    """``program(*args)`` over a batch (leading axis of the ``batched`` arguments, the
    others shared) with the batch split evenly over ``placement.devices``.

    Each device runs the single-device program on its slice (dispatched asynchronously,
    so the devices run at once), not one SPMD program over a mesh: XLA compiles a
    partitioned program with a different pass pipeline (it may, for example, keep
    ``x / sqrt(y)`` where the single-device pipeline emits ``x * rsqrt(y)``), which changes
    the rounding, and a study's results are to be the same bit for bit on one device and
    on many. The price is one compilation per device (run in parallel threads). Returns
    host (numpy) arrays; one device: the program itself, its arguments put there."""
    devices = placement.devices
    batched = tuple(bool(b) for b in batched)
    if len(devices) == 1:
        device = devices[0]
        return lambda *args: program(*jax.device_put(args, device))
    return _PerDevice(program, devices, batched)


def gather_rows_raw(array: np.ndarray) -> np.ndarray:
    """``array`` of every process concatenated along axis 0 in process order (the same
    shape everywhere), moved as bytes."""
    from jax.experimental import multihost_utils

    array = np.ascontiguousarray(array)
    rows = array.shape[0]
    raw = array.reshape(rows, -1).view(np.uint8).reshape(rows, -1)
    out = np.asarray(multihost_utils.process_allgather(raw, tiled=True))
    return np.ascontiguousarray(out).view(array.dtype).reshape((-1,) + array.shape[1:])


def gather_rows(placement: Placement, tree: Any) -> Any:
    """Every leaf (numpy, leading axis: this process's data sets) concatenated over the
    processes in process order; the tree itself with one process."""
    if placement.process_count == 1:
        return tree
    return jax.tree.map(lambda a: gather_rows_raw(np.asarray(a)), tree)


def _broadcast_bytes(payload: bytes | None) -> bytes:
    from jax.experimental import multihost_utils

    source = jax.process_index() == 0
    size = int(multihost_utils.broadcast_one_to_all(
        np.asarray(len(payload) if source else 0, np.int32)))
    buffer = (np.frombuffer(payload, np.uint8) if source else np.zeros(size, np.uint8))
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer)))


def from_process_zero(placement: Placement, make: Callable[[], Any]) -> Any:
    """``make()`` run on process 0 only and its value (or its HbmError, raised again)
    sent to every process."""
    if placement.process_count == 1:
        return make()
    payload = None
    if placement.process_index == 0:
        try:
            payload = pickle.dumps(("value", make()))
        except HbmError as e:
            payload = pickle.dumps(("error", type(e), str(e)))
    kind, *rest = pickle.loads(_broadcast_bytes(payload))
    if kind == "error":
        raise rest[0](rest[1])
    return rest[0]


def check_same_everywhere(placement: Placement, what: str, text: str) -> None:
    """Raise ConfigurationError on every process unless each passed the same ``text``
    (a call's settings: the processes must make the same call)."""
    if placement.process_count == 1:
        return
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)[None]
    everyone = gather_rows_raw(digest)
    if not (everyone == everyone[0]).all():
        differing = [i for i in range(len(everyone)) if not (everyone[i] == everyone[0]).all()]
        raise ConfigurationError(f"the processes called with different {what} "
                                 f"(process(es) {differing} differ from process 0)")


def placement_info(placement: Placement) -> dict:
    """What ``result.info`` records about the placement."""
    lanes = placement.lanes
    return {
        "devices": [str(d) for d in placement.devices],
        "device_count": len(placement.devices),
        "process_index": placement.process_index,
        "process_count": placement.process_count,
        "devices_per_process": list(placement.device_counts),
        "datasets_per_call": lanes,  # per process, padded
        "padded_batch": lanes * placement.process_count,
        "placement_note": placement.note,
    }
