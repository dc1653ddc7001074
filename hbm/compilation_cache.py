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

The same directory keeps :func:`remembered` facts: answers of one-off runtime checks
(such as "does the unrolled leaf hash reproduce ``jax.random`` on this backend?") that
depend only on the JAX version and backend, so a second process need not trace, lower and
run the check again.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["ENVIRONMENT_VARIABLE", "default_directory", "enable", "enable_default",
           "remembered"]

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


_FACTS_FILE = "hbm-facts.json"


def remembered(name: str, check) -> bool:
    """``check()`` (a bool), computed once per JAX version, backend and ``name``: kept in
    the compilation cache directory when there is one (else computed every time)."""
    import jax

    directory = jax.config.jax_compilation_cache_dir
    if not directory:
        return bool(check())
    import json
    import tempfile

    import jaxlib

    key = (f"{name}|jax {jax.__version__}|jaxlib {jaxlib.__version__}|"
           f"{jax.default_backend()}")
    path = pathlib.Path(directory) / _FACTS_FILE
    try:
        facts = json.loads(path.read_text())
    except (OSError, ValueError):
        facts = {}
    if isinstance(facts, dict) and isinstance(facts.get(key), bool):
        return facts[key]
    value = bool(check())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        facts = facts if isinstance(facts, dict) else {}
        facts[key] = value
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                         suffix=".tmp") as handle:
            json.dump(facts, handle)
        os.replace(handle.name, path)
    except OSError:  # a read-only cache directory: the answer is still right
        pass
    return value
