"""Test configuration: float64 everywhere, so exact comparisons are meaningful."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
# hermetic runs: no persistent compilation cache shared between test runs (and inherited by
# the CLI's subprocesses); tests/test_compilation_cache.py turns it on where it is tested
os.environ["HBM_COMPILATION_CACHE"] = "0"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
