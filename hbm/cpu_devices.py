"""Every core by default: chains spread over the CPU's cores as XLA host devices.

XLA's CPU client shows one device, and a program on it (hbm's vectorized chains included)
mostly runs on one core. Asked before JAX starts its CPU backend, it shows several
(``--xla_force_host_platform_device_count``), and chains sharded over them
(``jax.shard_map``) run on all cores, as Stan, PyMC and nutpie use one core per chain.
``import hbm`` asks for one host device per core the process may use unless

- ``XLA_FLAGS`` already sets ``--xla_force_host_platform_device_count`` (yours wins);
- the environment variable ``HBM_CPU_DEVICES`` is a number: that many devices (``1``
  leaves XLA's default alone);
- JAX's CPU backend is already running (the request would have no effect): then chains
  stay on one device.

A program that does not shard runs on the first device as before; the other devices only
exist. :func:`resolve_chain_method` turns ``chain_method="auto"`` into ``"sharded"``
when there are several local devices that share the chains evenly, else
``"vectorized"``.
"""

from __future__ import annotations

import math
import os
import sys

__all__ = ["ENVIRONMENT_VARIABLE", "FLAG", "usable_cores", "request_host_devices",
           "resolve_chain_method"]

#: Number of CPU devices to ask for (``1`` opts out), read at ``import hbm``.
ENVIRONMENT_VARIABLE = "HBM_CPU_DEVICES"
FLAG = "--xla_force_host_platform_device_count"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _backend_started() -> bool:
    """Whether JAX has created its backends already (then XLA_FLAGS is read)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without this module: assume the worst
        return True
    return bool(getattr(xla_bridge, "_backends", None))


def request_host_devices() -> int | None:
    """What ``import hbm`` does (see the module docstring): add ``FLAG`` to ``XLA_FLAGS``
    for one CPU device per usable core. Returns the number asked for, or ``None`` if
    nothing was changed."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return None
    setting = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    try:
        count = int(setting) if setting else usable_cores()
    except ValueError:
        return None
    if count <= 1 or _backend_started():
        return None
    os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={count}".strip()
    return count


def resolve_chain_method(chain_method: str, num_chains: int, *,
                         linear_algebra: bool = False) -> str:
    """``"auto"`` -> ``"sharded"`` when the local devices of the default backend can share
    ``num_chains`` evenly among two or more of them and the program calls no LAPACK
    routine (``linear_algebra``; see :mod:`hbm.inference.chains`), else
    ``"vectorized"``; any other method is returned as is."""
    if chain_method != "auto":
        return chain_method
    if linear_algebra:
        return "vectorized"
    import jax

    devices = len(jax.local_devices())
    return "sharded" if num_chains > 1 and math.gcd(num_chains, devices) > 1 else "vectorized"
