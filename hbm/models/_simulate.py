"""Random keys for the data simulators: an int seed or a JAX PRNG key."""

from __future__ import annotations

import jax
import numpy as np

from hbm.errors import ConfigurationError


def as_key(key_or_seed):
    """A JAX PRNG key from an ``int`` seed, or the key itself."""
    if isinstance(key_or_seed, (int, np.integer)) and not isinstance(key_or_seed, bool):
        return jax.random.key(int(key_or_seed))
    try:
        if jax.dtypes.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
            return key_or_seed
        if key_or_seed.dtype == np.uint32 and key_or_seed.shape == (2,):
            return jax.random.wrap_key_data(key_or_seed)
    except AttributeError:
        pass
    raise ConfigurationError(f"expected an int seed or a JAX PRNG key, got {key_or_seed!r}")
