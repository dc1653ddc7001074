"""The exceptions hbm raises.

Every error hbm raises on purpose derives from :class:`HbmError`, so a caller can catch
all of them at once. The subclasses also derive from the matching built-in (``ValueError``
or ``TypeError``) so that generic handlers keep working.
"""

from __future__ import annotations


class HbmError(Exception):
    """Base class of every error raised by hbm."""


class ModelError(HbmError, ValueError):
    """The model is malformed: a prior reads an undefined parameter, a likelihood does
    not return a dict of distributions, a discrete prior on a sampled parameter, ..."""


class ModelTypeError(HbmError, TypeError):
    """A model component has the wrong type (e.g. a prior node that is neither a
    distribution nor a callable)."""


class DataError(HbmError, ValueError):
    """The data are invalid: a missing key, NaN or inf, a non-numeric value, values
    outside a likelihood's support, shapes that do not broadcast."""


class InitializationError(HbmError, RuntimeError):
    """No initial point with a finite log density and gradient could be found."""


class ConfigurationError(HbmError, ValueError):
    """An argument of an inference routine is invalid (chains <= 0, unknown method...)."""


class SamplingError(HbmError, RuntimeError):
    """Sampling failed in a way that could not be recovered from."""


class ConstraintError(HbmError, ValueError):
    """A value lies outside the support of a constraint, or a constraint has no bijector."""
