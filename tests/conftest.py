"""Test configuration: float64 everywhere, so exact comparisons are meaningful."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# hermetic runs: no persistent compilation cache shared between test runs (and inherited by
# the CLI's subprocesses); tests/test_compilation_cache.py turns it on where it is tested
os.environ["HBM_COMPILATION_CACHE"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Each compiled XLA CPU executable holds a few memory mappings; a pytest-xdist worker
    that runs hundreds of modules accumulates tens of thousands (49,000 seen) and nears
    the kernel's ``vm.max_map_count`` (65,530), where LLVM's next code allocation fails
    inside XLA's compiler (a segfault, seen twice in ``make test``)."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()
