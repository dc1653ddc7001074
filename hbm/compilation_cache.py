"""JAX's persistent compilation cache, on by default in a per-user directory.

A new Python process compiles hbm's programs (NUTS chunks, L-BFGS, ADVI) again, which
takes seconds per model. JAX can keep compiled executables on disk, keyed by the program,
the JAX, jaxlib and XLA versions and the device (its persistent compilation cache); a
second process fitting a model of the same structure and data shapes then loads them
instead of compiling. ``import hbm`` turns that cache on, with every program cached
however quickly it compiled, unless

- JAX already has a cache directory (``jax.config.update("jax_compilation_cache_dir",
  ...)`` or the ``JAX_COMPILATION_CACHE_DIR`` environment variable): that one is used;
- the environment variable ``HBM_COMPILATION_CACHE`` is ``0``, ``off``, ``false`` or
  ``no``: hbm leaves JAX's cache alone (the opt-out). Any other value is the directory.

The default directory is ``$XDG_CACHE_HOME/hbm/jax``, else ``~/.cache/hbm/jax``. Delete it
to reclaim the space; entries for other versions of JAX are never read again.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["ENVIRONMENT_VARIABLE", "default_directory", "enable", "enable_default"]

#: Opt-out switch (``0``) or directory, read by :func:`enable_default` at ``import hbm``.
ENVIRONMENT_VARIABLE = "HBM_COMPILATION_CACHE"
_OFF = {"0", "off", "false", "no"}


def default_directory() -> pathlib.Path:
    """``$XDG_CACHE_HOME/hbm/jax``, or ``~/.cache/hbm/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "hbm" / "jax"


def enable(directory=None) -> pathlib.Path:
    """Use JAX's persistent compilation cache in ``directory`` (default
    :func:`default_directory`) for every program, however quickly it compiles. Takes
    effect for programs compiled afterwards; returns the directory."""
    import jax

    directory = pathlib.Path(directory) if directory is not None else default_directory()
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def enable_default() -> pathlib.Path | None:
    """What ``import hbm`` does: :func:`enable` unless JAX already has a cache directory
    or ``HBM_COMPILATION_CACHE`` opts out (see the module docstring). Returns the
    directory in use by hbm's choice, or ``None``."""
    setting = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if setting.lower() in _OFF:
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:
        return None
    return enable(setting or None)

