"""Models as pure functions: an ordered prior DAG plus a likelihood.

A :class:`Model` maps parameter names to distributions (or to functions
``(params_so_far, data) -> distribution``) and has a likelihood
``(params, data) -> {data_key: distribution}``. :meth:`Model.bind` validates a data set
against it, eagerly and before anything is compiled, and returns a :class:`BoundModel`,
the flat view that samplers and optimizers use:

- ``logdensity(x)``: the log joint density over the *unconstrained* flat vector ``x``,
  including the log-det Jacobian of every constraint transform;
- ``constrain(x)`` / ``unconstrain(params)``: between ``x`` and the model's own parameters;
- ``init(key)``: an initial point drawn uniformly in (-2, 2), retried until finite.

Hierarchical location-scale nodes (a Normal, StudentT, Cauchy, Laplace, Logistic or
LogNormal whose location or scale depends on other parameters) are reparameterized here,
in one place. With a centering weight ``w`` per element the sampled coordinate is

    x = w * loc + scale**w * z,   z ~ base (the standard member of the family),
    theta = loc + scale**(1 - w) * (x - w * loc)

so ``w = 1`` is the centered and ``w = 0`` the non-centered parameterization, and values in
between are the partially centered ones of Gorinova, Moore & Hoffman (2020), "Automatic
Reparameterisation of Probabilistic Programs". The density of ``x`` is
``base.log_prob((x - w loc) / scale**w) - w log(scale)``, an exact change of variables, so
every choice gives the same posterior over the model's own parameters, which is what is
always reported.

A MultivariateNormal node whose location or Cholesky factor depends on other parameters
(correlated group effects ``theta_j ~ MultivariateNormal(loc, scale_tril=diag(sigma) L)``,
one row per group) is a hierarchical node too: non-centered it samples ``z`` with
``theta_j = loc_j + L_j z_j`` (log-Jacobian ``sum log diag L_j`` per row), centered it
samples ``theta`` itself, and partially centered it applies the weights element by element
along the sequential (Cholesky) form of the multivariate normal; see :mod:`hbm.reparam`
for the exact change of variables.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hbm import constraints
from hbm import reparam as reparam_lib
from hbm.dist.base import Distribution
from hbm.dist.multivariate import MultivariateNormal
from hbm.errors import DataError, HbmError, InitializationError, ModelError, ModelTypeError
from hbm.transforms import biject_to

REPARAM_MODES = ("centered", "noncentered")


# --------------------------------------------------------------------------- helpers
class _Params(dict):
    """The parameters defined so far; reading a later or unknown one is a ModelError."""

    def __init__(self, *args, node: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.node = node

    def __missing__(self, key):
        where = f"prior node '{self.node}'" if self.node else "the likelihood"
        raise ModelError(
            f"{where} reads parameter '{key}', which is not defined before it "
            f"(defined so far: {sorted(self)}). Prior nodes may only depend on earlier ones."
        )


class _Data(dict):
    """The data as a dict; a missing key is a DataError naming the reader."""

    def __init__(self, *args, reader: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.reader = reader

    def __missing__(self, key):
        raise DataError(
            f"{self.reader or 'the model'} reads data key '{key}', which is not in the data "
            f"(keys: {sorted(self)})"
        )

    def __getattr__(self, name):  # NamedTuple-style access also works
        try:
            return self[name]
        except DataError as e:
            raise AttributeError(name) from e


def _as_data_dict(data) -> dict:
    if data is None:
        return {}
    if hasattr(data, "_asdict"):
        data = data._asdict()
    if not isinstance(data, dict):
        raise DataError(
            f"data must be a dict (or NamedTuple) of arrays, got {type(data).__name__}"
        )
    return dict(data)


def _convert_leaf(key, value):
    """A numeric array leaf, or a DataError naming the key."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic, int, float, bool)) or (
        isinstance(value, (list, tuple))
    ):
        try:
            arr = np.asarray(value) if not isinstance(value, jax.Array) else value
        except Exception as e:  # ragged lists and the like
            raise DataError(f"data key '{key}' is not a numeric array: {e}") from e
        if not isinstance(arr, jax.Array):
            if arr.dtype == object or np.issubdtype(arr.dtype, np.complexfloating) or not (
                np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
            ):
                raise DataError(
                    f"data key '{key}' is not numeric (dtype {arr.dtype}); encode strings "
                    "as integer codes first"
                )
            if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
                bad = np.argwhere(~np.isfinite(arr))
                raise DataError(
                    f"data key '{key}' holds {len(bad)} NaN or inf value(s), first at index "
                    f"{tuple(int(i) for i in bad[0])}; drop or impute them"
                )
            return jnp.asarray(arr)
        if jnp.issubdtype(arr.dtype, jnp.complexfloating):
            raise DataError(f"data key '{key}' is complex (dtype {arr.dtype}); data must be real")
        if jnp.issubdtype(arr.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(arr))):
            bad = np.argwhere(~np.isfinite(np.asarray(arr)))
            raise DataError(
                f"data key '{key}' holds {len(bad)} NaN or inf value(s), first at index "
                f"{tuple(int(i) for i in bad[0])}; drop or impute them"
            )
        return arr
    if hasattr(value, "to_numpy"):  # pandas Series / DataFrame column
        return _convert_leaf(key, value.to_numpy())
    if hasattr(value, "_asdict") or isinstance(value, dict):
        inner = _as_data_dict(value)
        return {k: _convert_leaf(f"{key}.{k}", v) for k, v in inner.items()}
    raise DataError(f"data key '{key}' is not a numeric array (got {type(value).__name__})")


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_args(dist: Distribution, where: str):
    """Eagerly check a distribution's parameters against its argument constraints."""
    for name, constraint in dist.arg_constraints.items():
        value = getattr(dist, name, None)
        if value is None or not _is_concrete(value):
            continue
        value = jnp.asarray(value)
        if not jnp.issubdtype(value.dtype, jnp.number) and value.dtype != jnp.bool_:
            continue
        try:
            ok = np.asarray(constraint.check(value))
        except Exception:
            continue
        if not np.all(ok):
            bad = np.asarray(value)[~ok] if np.ndim(ok) else np.asarray(value)
            raise ModelError(
                f"{where}: {type(dist).__name__} parameter '{name}' must be {constraint}, "
                f"got {np.ravel(bad)[:5].tolist()}"
            )


def _support_violations(dist: Distribution, value) -> np.ndarray:
    ok = np.asarray(dist.support.check(value))
    return np.broadcast_to(ok, np.shape(ok))


def _check_group_codes(coords: dict, data: dict):
    """A data key named like a dim of ``coords`` holds integer group codes in
    ``[0, len(coords[dim]))``; whole-number floats are converted to integers."""
    for key in list(data):
        value = data[key]
        if key not in coords or isinstance(value, dict) or not _is_concrete(value):
            continue
        try:
            n = len(coords[key])
        except TypeError:
            raise ModelError(f"coords['{key}'] must be a sequence of labels, got "
                             f"{type(coords[key]).__name__}") from None
        arr = np.asarray(value)
        where = (f"data key '{key}' holds group codes of dim '{key}' (coords['{key}'] has {n} "
                 f"labels, valid codes are 0..{n - 1})")
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"{where} but has dtype {arr.dtype}")
        if not np.issubdtype(arr.dtype, np.integer):
            whole = arr == np.floor(arr)
            if not np.all(whole):
                first = tuple(int(i) for i in np.argwhere(~whole)[0])
                raise DataError(f"{where} but holds the non-integer value {arr[first]} at "
                                f"index {first}")
        bad = (arr < 0) | (arr >= n)
        if np.any(bad):
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(f"{where} but holds {arr[first].item()} at index {first}; "
                            f"{int(np.sum(bad))} code(s) out of range")
        if not np.issubdtype(arr.dtype, np.integer):
            data[key] = jnp.asarray(arr.astype(np.int32))


def _call_user(fn, params, data, where):
    """Call a model function during the eager structure pass; a raw error it raises on
    valid parameter values becomes a ModelError naming the culprit."""
    try:
        return fn(params, data)
    except ModelError as e:
        if where in str(e):
            raise
        raise ModelError(f"{where}: {e}") from e  # e.g. a distribution's own shape check
    except HbmError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the culprit named
        if isinstance(data, dict):
            _raise_float_index(fn, params, data, where, e)
            hint = _shape_hint(fn, params, data, where)
        else:
            hint = ""
        raise ModelError(f"{where} failed on valid parameter values: {hint}"
                         f"{type(e).__name__}: {e}") from e


#: Primitives whose index operands are clamped (or undefined) when out of bounds.
_INDEXING = ("gather", "dynamic_slice")
#: Call-like primitives whose inner jaxpr is walked (so indexing inside them is seen).
_CALLS = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint")


def _walk_indexing(jaxpr, consts, args, arg_keys, used: set, data: dict):
    """Evaluate on concrete values the part of ``jaxpr`` that computes indices, tracking
    which data keys each value depends on; an indexing op whose indices depend on data
    keys must be in bounds. ``args`` are thunks (evaluated only when needed)."""
    from jax.extend.core import Literal

    def is_var(v):
        return not isinstance(v, Literal)

    keys = {v: k for v, k in zip(jaxpr.invars, arg_keys)}
    checks, calls = [], []
    for eqn in jaxpr.eqns:  # forward: data-key dependence of every variable
        in_keys = [keys.get(v, frozenset()) if is_var(v) else frozenset() for v in eqn.invars]
        depends = frozenset().union(*in_keys)
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if depends and eqn.primitive.name in _CALLS and sub is not None:
            calls.append(eqn)
        elif eqn.primitive.name in _INDEXING and frozenset().union(*in_keys[1:]):
            checks.append(eqn)
        for v in eqn.outvars:
            keys[v] = depends
    needed = {v for e in checks for v in e.invars[1:] if is_var(v)}
    needed |= {v for e in calls for v in e.invars if is_var(v)}
    todo = set(map(id, checks + calls))
    for eqn in reversed(jaxpr.eqns):  # backward: the slice that computes the indices
        if id(eqn) in todo or any(v in needed for v in eqn.outvars):
            todo.add(id(eqn))
            needed |= {v for v in eqn.invars if is_var(v)}
    env = dict(zip(jaxpr.constvars, consts))
    thunks = dict(zip(jaxpr.invars, args))

    def read(v):
        if not is_var(v):
            return v.val
        if v not in env:
            env[v] = thunks[v]()
        return env[v]

    for eqn in jaxpr.eqns:
        if id(eqn) not in todo:
            continue
        values = [read(v) for v in eqn.invars]
        in_keys = [keys.get(v, frozenset()) if is_var(v) else frozenset() for v in eqn.invars]
        if eqn in calls:
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            inner, inner_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else \
                (sub, ())
            _walk_indexing(inner, inner_consts, [lambda x=x: x for x in values], in_keys,
                           used, data)
        if eqn in checks:
            _check_indices(eqn, values, in_keys, used, data)
        if any(v in needed for v in eqn.outvars):
            outs = eqn.primitive.bind(*values, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            env.update(zip(eqn.outvars, outs))


def _check_indices(eqn, values, in_keys, used: set, data: dict):
    index_keys = sorted(frozenset().union(*in_keys[1:]))
    used.update(index_keys)
    if eqn.primitive.name == "gather":
        operand, indices = values[0], np.asarray(values[1])
        dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
        bounds = [(indices[..., j], np.shape(operand)[dim] - sizes[dim], np.shape(operand)[dim])
                  for j, dim in enumerate(dn.start_index_map)]
    else:
        operand, starts = values[0], values[1:]
        sizes = eqn.params["slice_sizes"]
        bounds = [(np.asarray(s), np.shape(operand)[j] - sizes[j], np.shape(operand)[j])
                  for j, s in enumerate(starts[:np.ndim(operand)])]
    for idx, high, length in bounds:
        bad = (idx < 0) | (idx > high)
        if not np.any(bad):
            continue
        first = tuple(int(i) for i in np.argwhere(bad)[0]) if np.ndim(bad) else ()
        value = idx[first].item()
        # name the one key holding exactly this value there, when there is one
        culprits = [k for k in index_keys if np.shape(data[k]) == np.shape(idx)
                    and np.asarray(data[k])[first] == value] if len(index_keys) > 1 else []
        names = culprits if len(culprits) == 1 else index_keys
        raise DataError(
            f"data key{'s' if len(names) > 1 else ''} {', '.join(repr(k) for k in names)} "
            f"index{'' if len(names) > 1 else 'es'} an axis of length {length} in the "
            f"likelihood, but holds {value} at index {first}; valid indices are "
            f"0..{length - 1}")


def _check_index_data(p, data: dict, likelihood):
    """Integer data arrays that index parameters in the likelihood (``p["a"][d["g"]]``)
    must hold indices in bounds and no negative values: JAX clamps out-of-bounds gathers
    or returns arbitrary values, and wraps negative ones, silently. Found by tracing the
    likelihood to a jaxpr and evaluating it on the concrete data, following which data
    keys each index depends on. Best effort: a likelihood that cannot be traced or
    evaluated this way is not checked."""
    int_keys = sorted(k for k, v in data.items()
                      if isinstance(v, jax.Array) and _is_concrete(v)
                      and jnp.issubdtype(v.dtype, jnp.integer))
    if not int_keys:
        return
    others = {k: v for k, v in data.items() if k not in int_keys}

    def total(*arrays):
        dview = _Data({**others, **dict(zip(int_keys, arrays))}, reader="the likelihood")
        return [jnp.sum(d.log_prob(dview[k])) for k, d in likelihood(p, dview).items()]

    arrays = [data[k] for k in int_keys]
    used: set = set()
    try:
        closed = jax.make_jaxpr(total)(*arrays)
        _walk_indexing(closed.jaxpr, closed.consts, [lambda a=a: a for a in arrays],
                       [frozenset([k]) for k in int_keys], used, data)
    except DataError:
        raise
    except Exception:  # noqa: BLE001 - an optional check; the model was validated above
        return
    for key in sorted(used):
        arr = np.asarray(data[key])
        if np.any(arr < 0):
            first = tuple(int(i) for i in np.argwhere(arr < 0)[0])
            raise DataError(f"data key '{key}' indexes a parameter in the likelihood but holds "
                            f"the negative value {arr[first].item()} at index {first}; "
                            "indices must lie in 0..length-1 (negative ones would silently "
                            "wrap around)")


# ------------------------------------------------------- data keys behind a failure
def _index_keys(jaxpr, arg_keys) -> set:
    """The data keys on which an index operand of an indexing operation in ``jaxpr``
    depends, following data dependence forward from the inputs (``arg_keys``: the set of
    keys each input depends on) and into call-like primitives."""
    from jax.extend.core import Literal

    keys = dict(zip(jaxpr.invars, arg_keys))
    found: set = set()
    for eqn in jaxpr.eqns:
        in_keys = [frozenset() if isinstance(v, Literal) else keys.get(v, frozenset())
                   for v in eqn.invars]
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if eqn.primitive.name in _CALLS and sub is not None:
            found |= _index_keys(getattr(sub, "jaxpr", sub), in_keys)
        elif eqn.primitive.name in _INDEXING:
            found |= frozenset().union(*in_keys[1:])
        depends = frozenset().union(*in_keys)
        for v in eqn.outvars:
            keys[v] = depends
    return found


def _array_leaves(out) -> list:
    """The array parameters of a distribution or of a dict of them (what a traced model
    function computes)."""
    dists = list(out.values()) if isinstance(out, dict) else [out]
    return [jnp.asarray(v) for d in dists if isinstance(d, Distribution)
            for v in d.params().values() if v is not None]


def _raise_float_index(fn, params, data: dict, where: str, error: Exception):
    """Raise a DataError if a floating-point data key is used to index (``p["a"][d["g"]]``
    with float codes), the usual cause of JAX's "Indexer must have integer type".

    Each float key in turn is traced as integers, with the other float keys cast to
    integers as concrete values, and the data dependence of the jaxpr shows whether it
    feeds an index."""
    floats = sorted(k for k, v in data.items() if isinstance(v, jax.Array)
                    and _is_concrete(v) and jnp.issubdtype(v.dtype, jnp.floating))
    if not floats:
        return
    as_int = {k: data[k].astype(jnp.int32) for k in floats}
    reader = getattr(data, "reader", "")
    for key in floats:
        def traced(codes, key=key):
            return _array_leaves(fn(params, _Data({**data, **as_int, key: codes},
                                                  reader=reader)))
        try:
            closed = jax.make_jaxpr(traced)(as_int[key])
            feeds_index = key in _index_keys(closed.jaxpr, [frozenset([key])])
        except Exception:  # noqa: BLE001 - best effort: keep the original error
            continue
        if not feeds_index:
            continue
        arr = np.asarray(data[key])
        whole = arr == np.floor(arr)
        if np.all(whole):
            advice = (f"its values are whole numbers: convert them with "
                      f"data['{key}'].astype(int)")
        else:
            first = tuple(int(i) for i in np.argwhere(~whole)[0])
            advice = f"it holds the non-integer value {arr[first]} at index {first}"
        raise DataError(f"data key '{key}' indexes a parameter in {where} but has dtype "
                        f"{arr.dtype}; it must hold integer group codes (0, 1, ...); "
                        f"{advice}") from error


class _ReadLog(_Data):
    """A data view that records which keys are read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: list = []

    def __getitem__(self, key):
        self.read.append(key)
        return super().__getitem__(key)


def _filler(shape, dtype):
    """A valid stand-in array: ones (a valid scale), or zeros for integer codes."""
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.ones(shape, dtype)
    return jnp.zeros(shape, dtype)


def _join(names) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _shape_hint(fn, params, data: dict, where: str) -> str:
    """Which data keys have a shape that makes ``fn`` fail, as the start of an error
    message ("" when none is found).

    For the shape of each data key ``fn`` reads before it fails, every data key of that
    shape is replaced by a stand-in of the shape (same number of axes) of another data
    key or parameter; when ``fn`` then runs, the replaced keys it reads are the culprits
    and that shape is the expected one."""
    reader = getattr(data, "reader", "")
    log = _ReadLog(data, reader=reader)
    try:
        fn(params, log)
    except Exception:  # noqa: BLE001 - the failure being explained
        pass
    arrays = {k: v for k, v in data.items() if isinstance(v, jax.Array) and jnp.ndim(v)}
    shapes = dict.fromkeys(tuple(arrays[k].shape) for k in log.read if k in arrays)
    owners: dict = {}
    for key, v in arrays.items():
        owners.setdefault(tuple(v.shape), []).append(f"data key '{key}'")
    for name, v in dict(params).items():
        owners.setdefault(tuple(jnp.shape(v)), []).append(f"parameter '{name}'")
    found = []
    for shape in shapes:
        group = [k for k, v in arrays.items() if tuple(v.shape) == shape]
        for expected, names in owners.items():
            if len(expected) != len(shape) or expected == shape:
                continue
            trial = _ReadLog({**data, **{k: _filler(expected, arrays[k].dtype)
                                         for k in group}}, reader=reader)
            try:
                fn(params, trial)
            except Exception:  # noqa: BLE001 - this shape does not help
                continue
            culprits = [k for k in dict.fromkeys(trial.read) if k in group]
            keys = ", ".join(f"'{k}'" for k in culprits)
            found.append(f"data key{'s' if len(culprits) > 1 else ''} {keys} "
                         f"{'have' if len(culprits) > 1 else 'has'} shape {shape}, but "
                         f"{where} works with shape {expected} there (the shape of "
                         f"{_join(names)})")
    if not found:
        return ""
    return ("; or ".join(found) + "; check that these arrays have one entry per "
            "observation or group. The error was ")


def _shape_owners(shape: tuple, data: dict, params: dict, skip=()) -> list:
    """Data keys and parameters of exactly ``shape`` (for error messages)."""
    names = [f"data key '{k}'" for k, v in data.items()
             if k not in skip and isinstance(v, jax.Array) and tuple(v.shape) == shape]
    return names + [f"parameter '{k}'" for k, v in dict(params).items()
                    if tuple(jnp.shape(v)) == shape]


# ----------------------------------------------------------------------- structure
class Node(NamedTuple):
    """One prior node after binding: its shapes, support and parameterization.

    ``support`` and ``transform`` are those at the placeholder values used while binding
    and fix only the node's kind of constraint and its unconstrained shape. A support may
    depend on earlier parameters or on the data (``Uniform(0, p["upper"])``); its bounds
    at given values come from :meth:`BoundModel.supports` and
    :meth:`BoundModel.transforms`.
    """

    name: str
    shape: tuple  # constrained shape (batch + event)
    unconstrained_shape: tuple
    size: int  # number of unconstrained coordinates
    offset: int  # position in the flat vector
    support: Any
    transform: Any
    locscale: bool  # a hierarchical node (can be reparameterized)
    mode: str  # "centered", "noncentered" or "partial" (weights given at run time)
    multivariate: bool = False  # the hierarchical node is a MultivariateNormal


#: The centering weight of a multivariate node's fixed modes.
_MVN_WEIGHT = {"centered": 1.0, "noncentered": 0.0}


def _mvn_node(d, x, node: Node, weights):
    """(log density of the sampled coordinates ``x``, the model's value) of a hierarchical
    MultivariateNormal node (see :func:`hbm.reparam.mvn_from_coordinates`)."""
    loc = jnp.broadcast_to(d.loc, node.shape)
    if node.mode == "noncentered":  # theta = loc + L z, z standard normal
        value = loc + jnp.einsum("...ij,...j->...i", d.scale_tril, x)
        return jnp.sum(-0.5 * x**2) - 0.5 * x.size * math.log(2 * math.pi), value
    w = weights[node.name] if node.mode == "partial" else 1.0
    value, log_density = reparam_lib.mvn_from_coordinates(x, loc, d.scale_tril, w)
    if node.mode == "centered":
        value = x  # exactly, not through the round trip
    return jnp.sum(log_density), jnp.broadcast_to(value, node.shape)


def _node_fn(node) -> Callable:
    if isinstance(node, Distribution):
        return lambda p, d: node
    return node


class Model:
    """A Bayesian model: an ordered prior DAG and a likelihood, as pure functions.

    Parameters
    ----------
    prior : dict
        Ordered mapping of parameter name to a :class:`~hbm.dist.Distribution` or to a
        function ``(params_so_far, data) -> Distribution``.
    likelihood : callable, optional
        ``(params, data) -> {data_key: Distribution}``; each distribution explains the data
        under that key.
    dims, coords : dict, optional
        ArviZ dims (parameter or data key -> axis names) and coords (axis name -> labels).
    deterministic : dict, optional
        Derived quantities ``name -> fn(params, data)`` reported with the posterior.
    """

    def __init__(self, prior, likelihood=None, *, dims=None, coords=None, deterministic=None,
                 name=None):
        if not isinstance(prior, dict) or not prior:
            raise ModelTypeError("prior must be a non-empty dict of name -> distribution or "
                                 "function (params, data) -> distribution")
        for key, node in prior.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise ModelError(f"prior name {key!r} must be a valid identifier string")
            if not (isinstance(node, Distribution) or callable(node)):
                raise ModelTypeError(
                    f"prior node '{key}' must be a Distribution or a function (params, data) "
                    f"-> Distribution, got {type(node).__name__}"
                )
        if likelihood is not None and not callable(likelihood):
            raise ModelTypeError("likelihood must be a function (params, data) -> "
                                 "{data_key: Distribution}")
        if deterministic is not None and not isinstance(deterministic, dict):
            raise ModelTypeError("deterministic must be a dict name -> fn(params, data), got "
                                 f"{type(deterministic).__name__}")
        deterministic = dict(deterministic or {})
        for key, fn in deterministic.items():
            if not callable(fn):
                raise ModelTypeError(f"deterministic '{key}' must be a function (params, data)")
            if key in prior:
                raise ModelError(f"deterministic '{key}' has the name of a prior node")
        for what, value in (("dims", dims), ("coords", coords), ("deterministic",
                                                                   deterministic)):
            if value is not None and not isinstance(value, dict):
                raise ModelTypeError(f"{what} must be a dict, got {type(value).__name__}")
        self.prior = dict(prior)
        self.likelihood = likelihood
        self.dims = dict(dims or {})
        self.coords = dict(coords or {})
        self.deterministic = deterministic
        self.name = name or "model"
        self._logdensity_fn = None  # set by from_logdensity
        self._param_constraints = None
        self._param_shapes = None
        self._bind_cache: dict = {}

    # ------------------------------------------------------------ construction
    @classmethod
    def from_logdensity(cls, fn, params, shapes=None, *, dims=None, coords=None,
                        deterministic=None, name=None) -> "Model":
        """A model given by its log density ``fn(params, data) -> scalar`` over named
        parameters with the given constraints (default shape ``()``). It gets the
        constraint transforms but cannot simulate."""
        if not callable(fn):
            raise ModelTypeError("from_logdensity needs a function (params, data) -> scalar")
        if not isinstance(params, dict) or not params:
            raise ModelTypeError("params must be a non-empty dict name -> constraint")
        shapes = dict(shapes or {})
        for key, c in params.items():
            if not isinstance(c, constraints.Constraint):
                raise ModelTypeError(f"params['{key}'] must be an hbm.constraints constraint")
            if c.is_discrete:
                raise ModelError(f"parameter '{key}' has a discrete constraint {c}; NUTS "
                                 "samples continuous parameters only")
        unknown = set(shapes) - set(params)
        if unknown:
            raise ModelError(f"shapes names unknown parameters {sorted(unknown)}")
        model = cls.__new__(cls)
        model.prior = {k: None for k in params}
        model.likelihood = None
        model.dims = dict(dims or {})
        model.coords = dict(coords or {})
        model.deterministic = dict(deterministic or {})
        model.name = name or "model"
        model._logdensity_fn = fn
        model._param_constraints = dict(params)
        model._param_shapes = {k: tuple(np.atleast_1d(shapes[k]).astype(int).tolist())
                               if shapes.get(k) not in (None, ()) else ()
                               for k in params}
        model._bind_cache = {}
        return model

    @property
    def can_simulate(self) -> bool:
        return self._logdensity_fn is None

    @property
    def param_names(self) -> list[str]:
        return list(self.prior)

    def __repr__(self):
        return f"hbm.Model({self.name!r}, params={self.param_names})"

    # ------------------------------------------------------------------ binding
    def bind(self, data=None, reparam="noncentered") -> "BoundModel":
        """Validate ``data`` against the model and return its flat view.

        ``reparam`` is ``"centered"``, ``"noncentered"``, or a dict node name -> one of
        those or an array of centering weights in [0, 1] (partial centering)."""
        data = _as_data_dict(data)
        converted = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise DataError(f"data keys must be strings, got {key!r}")
            converted[key] = _convert_leaf(key, value)
        return BoundModel(self, converted, reparam)

    # --------------------------------------------------------------- simulation
    def simulate(self, key, data=None, params=None) -> dict:
        """Draw parameters from the prior (unless given) and every likelihood key from
        its distribution: a prior (or, with ``params``, posterior) predictive draw."""
        if not self.can_simulate:
            raise ModelError("a model built with Model.from_logdensity cannot simulate; "
                             "write it as a prior DAG and likelihood")
        data = _Data(_as_data_dict(data), reader="the model")
        p = _Params()
        for name, node in self.prior.items():
            key, sub = jax.random.split(key)
            if params is not None and name in params:
                p[name] = jnp.asarray(params[name])
                continue
            p.node = name
            d = _node_fn(node)(p, data)
            p[name] = d.sample(sub)
        p.node = ""
        out = dict(p)
        if self.likelihood is not None:
            lik = self.likelihood(p, data)
            for obs_key, d in lik.items():
                key, sub = jax.random.split(key)
                shape = d.shape
                if obs_key in data:
                    obs_shape = tuple(jnp.shape(data[obs_key]))
                    extra = len(obs_shape) - len(shape)
                    sample_shape = obs_shape[:extra] if extra > 0 else ()
                else:
                    sample_shape = ()
                out[obs_key] = d.sample(sub, sample_shape)
        for name, fn in self.deterministic.items():
            out[name] = fn(p, data)
        return out


class BoundModel:
    """A model bound to a data set: the flat unconstrained view used by the samplers.

    Every method is a pure function of its array arguments; ``data`` defaults to the data
    bound here and ``weights`` (centering weights of partially centered nodes) to the
    ones chosen at binding, so ``jax.jit(bound.logdensity)`` works as is and a driver can
    also pass data explicitly to reuse one compiled program across data sets.
    """

    def __init__(self, model: Model, data: dict, reparam):
        self.model = model
        self.data = data
        self.nodes: list[Node] = []
        self.weights: dict = {}
        self.size = 0
        self._links: dict = {}  # link of each location-scale node
        self._build(reparam)

    # ---------------------------------------------------------------- structure
    def _build(self, reparam):
        model, data = self.model, self.data
        if not isinstance(model.coords, dict):
            raise ModelError(f"coords must be a dict dim -> labels, got "
                             f"{type(model.coords).__name__}")
        _check_group_codes(model.coords, data)
        if isinstance(reparam, str):
            if reparam not in REPARAM_MODES:
                raise ModelError(f"reparam must be one of {REPARAM_MODES} or a dict, got "
                                 f"{reparam!r}")
            per_node = {}
            default = reparam
        elif isinstance(reparam, dict):
            per_node = dict(reparam)
            default = "noncentered"
            unknown = set(per_node) - set(model.prior)
            if unknown:
                raise ModelError(f"reparam names unknown parameters {sorted(unknown)}")
        else:
            raise ModelError("reparam must be 'centered', 'noncentered' or a dict")

        offset = 0
        if not model.can_simulate:
            for name, c in model._param_constraints.items():
                shape = model._param_shapes[name]
                t = biject_to(c)
                ushape = tuple(t.inverse_shape(shape))
                size = int(math.prod(ushape))
                self.nodes.append(Node(name, shape, ushape, size, offset, c, t, False,
                                       "centered"))
                offset += size
            self.size = offset
            self._check_density_shape()
            return

        p = _Params()
        dview = _Data(data)
        for name, node in model.prior.items():
            p.node = name
            dview.reader = f"prior node '{name}'"
            where = f"prior node '{name}'"
            d = _call_user(_node_fn(node), p, dview, where=where)
            if not isinstance(d, Distribution):
                raise ModelTypeError(f"{where} must give a Distribution, got "
                                     f"{type(d).__name__}")
            if d.is_discrete:
                raise ModelError(
                    f"{where} is a discrete {type(d).__name__}: NUTS samples continuous "
                    "parameters only; marginalize it out or make it data"
                )
            _check_args(d, where)
            shape = tuple(d.shape)
            function_node = callable(node) and not isinstance(node, Distribution)
            std = d.standardized() if function_node else None
            multivariate = function_node and isinstance(d, MultivariateNormal)
            locscale = std is not None or multivariate
            choice = per_node.get(name, default)
            if locscale:
                if isinstance(choice, str):
                    if choice not in REPARAM_MODES:
                        raise ModelError(f"reparam for '{name}' must be one of "
                                         f"{REPARAM_MODES} or weights, got {choice!r}")
                    mode = choice
                else:
                    try:
                        w = jnp.broadcast_to(jnp.asarray(np.asarray(choice, dtype=float),
                                                         dtype=jnp.result_type(float)), shape)
                    except (TypeError, ValueError) as e:
                        raise ModelError(f"centering weights for '{name}' must be numbers in "
                                         f"[0, 1] broadcasting to shape {shape}: {e}") from e
                    if not bool(jnp.all((w >= 0) & (w <= 1))):
                        raise ModelError(f"centering weights for '{name}' must lie in [0, 1]")
                    mode = "partial"
                    self.weights[name] = w
                transform = None
                ushape = shape
            else:
                if name in per_node and not isinstance(per_node[name], str):
                    raise ModelError(f"'{name}' is not a hierarchical node (a location-scale "
                                     "family or a MultivariateNormal whose parameters depend "
                                     "on other parameters); it cannot take centering weights")
                mode = "centered"
                transform = biject_to(d.support)
                ushape = tuple(transform.inverse_shape(shape))
            size = int(math.prod(ushape))
            self.nodes.append(Node(name, shape, ushape, size, offset, d.support, transform,
                                   locscale, mode, multivariate))
            offset += size
            self.size = offset
            # a valid value for the nodes below: the centre of the unconstrained space
            if multivariate:
                self._links[name] = "identity"
                p[name] = jnp.broadcast_to(d.loc, shape)
            elif locscale:
                self._links[name] = std.link
                value = std.loc + std.scale * jnp.zeros(shape)
                p[name] = jnp.exp(value) if std.link == "exp" else jnp.broadcast_to(value, shape)
            else:
                p[name] = transform.forward(jnp.zeros(ushape))
        p.node = ""
        self._check_likelihood(p)

    def _check_likelihood(self, p):
        model, data = self.model, self.data
        if model.likelihood is None:
            return
        lik = _call_user(model.likelihood, p, _Data(data, reader="the likelihood"),
                         where="the likelihood")
        if not isinstance(lik, dict) or not all(isinstance(v, Distribution)
                                                for v in lik.values()):
            raise ModelError("the likelihood must return a dict {data_key: Distribution}, "
                             f"got {type(lik).__name__}"
                             + ("" if not isinstance(lik, dict) else
                                f" with values {[type(v).__name__ for v in lik.values()]}"))
        for key, d in lik.items():
            if key not in data:
                raise DataError(f"the likelihood explains data key '{key}', which is not in "
                                f"the data (keys: {sorted(data)})")
            if key in model.prior:
                raise ModelError(f"'{key}' is both a parameter and an observed data key")
            _check_args(d, f"likelihood of '{key}'")
            obs = data[key]
            if isinstance(obs, dict):
                raise DataError(f"data key '{key}' explained by the likelihood must be an "
                                "array, got a dict")
            if obs.size == 0:
                raise DataError(f"data key '{key}' has no observations (shape "
                                f"{tuple(obs.shape)}); drop the key from the likelihood")
            try:
                shape = jnp.broadcast_shapes(d.shape, obs.shape)
            except ValueError:
                shape = None
            if shape != tuple(obs.shape):
                owners = _shape_owners(tuple(d.shape), data, p, skip=(key,)) \
                    if d.shape else []
                raise DataError(
                    f"the likelihood of '{key}' has shape {d.shape}, which does not broadcast "
                    f"to the data's shape {tuple(obs.shape)}"
                    + (f"; {_join(owners)} {'have' if len(owners) > 1 else 'has'} "
                       f"shape {d.shape}" if owners else "")
                )
            if not d.is_discrete and not jnp.issubdtype(obs.dtype, jnp.floating):
                obs = obs.astype(jnp.result_type(float))
                data[key] = obs
            if d.is_discrete and jnp.issubdtype(obs.dtype, jnp.floating):
                if not bool(jnp.all(obs == jnp.floor(obs))):
                    bad = np.argwhere(np.asarray(obs != jnp.floor(obs)))
                    raise DataError(f"data key '{key}' must hold integers for the "
                                    f"{type(d).__name__} likelihood; first non-integer at index "
                                    f"{tuple(int(i) for i in bad[0])}")
            ok = _support_violations(d, obs)
            if not np.all(ok):
                bad = np.argwhere(~np.broadcast_to(ok, obs.shape))
                first = tuple(int(i) for i in bad[0])
                raise DataError(
                    f"data key '{key}' has {len(bad)} value(s) outside the support "
                    f"({d.support}) of its {type(d).__name__} likelihood, first at index "
                    f"{first}: {np.asarray(obs)[first]}"
                )
        _check_index_data(p, data, model.likelihood)

    def _check_density_shape(self):
        x = jnp.zeros(self.size)
        try:
            out = jax.eval_shape(self.logdensity, x)
        except (ModelError, DataError):
            raise
        if out.shape != ():
            raise ModelError(f"the log density must return a scalar, got shape {out.shape}")

    # -------------------------------------------------------------- flat views
    @property
    def signature(self) -> tuple:
        """What compiled programs depend on: node structure and data shapes/dtypes."""
        leaves = jax.tree_util.tree_leaves_with_path(self.data)
        data_sig = tuple(sorted((jax.tree_util.keystr(path), tuple(jnp.shape(v)),
                                 str(jnp.asarray(v).dtype)) for path, v in leaves))
        nodes = tuple((n.name, n.mode, n.shape, n.size) for n in self.nodes)
        return nodes, data_sig, jax.config.jax_enable_x64

    @property
    def param_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def param_shapes(self) -> dict:
        return {n.name: n.shape for n in self.nodes}

    @property
    def reparam(self) -> dict:
        """The parameterization of each hierarchical node: mode, or weights if partial."""
        return {n.name: (self.weights[n.name] if n.mode == "partial" else n.mode)
                for n in self.nodes if n.locscale}

    def finite_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat boolean masks: whether each unconstrained coordinate, sent to ``-inf``
        (first) or ``+inf`` (second), drives its parameter to a finite edge of its support.

        Identity-like coordinates (real parameters, standardized non-centered or partially
        centered effects) never do; a log scale does at ``-inf``; a logit both ways. See
        :meth:`hbm.transforms.Transform.finite_limits`."""
        below, above = np.zeros(self.size, bool), np.zeros(self.size, bool)
        for n in self.nodes:
            span = slice(n.offset, n.offset + n.size)
            if n.locscale:
                # a centered node with an exp link (LogNormal) is a log scale; any other
                # location-scale coordinate is an unbounded location or a standardized z
                below[span] = n.mode == "centered" and self._links[n.name] == "exp"
            else:
                lo, hi = n.transform.finite_limits(n.unconstrained_shape)
                below[span], above[span] = np.ravel(lo), np.ravel(hi)
        return below, above

    def unravel(self, x) -> dict:
        """Flat unconstrained vector -> dict of unconstrained arrays."""
        return {n.name: jnp.reshape(x[n.offset:n.offset + n.size], n.unconstrained_shape)
                for n in self.nodes}

    def ravel(self, unconstrained: dict):
        return jnp.concatenate([jnp.ravel(unconstrained[n.name]) for n in self.nodes]) \
            if self.nodes else jnp.zeros(0)

    # ------------------------------------------------------------------ density
    def _forward(self, x, data, weights, jacobian=True):
        """(log density, constrained params, per-term log densities). Without the
        Jacobian (``jacobian=False``) the density is that of the constrained parameters
        (for the classical MAP); it is then meant for ``reparam="centered"``."""
        model = self.model
        u = self.unravel(x)
        terms = {}
        p = _Params()
        if not model.can_simulate:
            jac = 0.0
            for n in self.nodes:
                p[n.name] = n.transform.forward(u[n.name])
                jac = jac + jnp.sum(n.transform.log_abs_det_jacobian(u[n.name]))
            terms["jacobian"] = jac if jacobian else jnp.zeros(())
            terms["logdensity"] = model._logdensity_fn(dict(p), data)
            lp = terms["jacobian"] + terms["logdensity"]
            return lp, dict(p), terms
        dview = _Data(data)
        for n in self.nodes:
            p.node = n.name
            node = model.prior[n.name]
            d = _node_fn(node)(p, dview)
            un = u[n.name]
            if n.multivariate:
                lp_n, value = _mvn_node(d, un, n, weights)
            elif not n.locscale or n.mode == "centered":
                if n.locscale:  # centered location-scale: no transform beyond the link
                    std = d.standardized()
                    value = jnp.exp(un) if std.link == "exp" else un
                    z = (un - std.loc) / std.scale
                    lp_n = jnp.sum(std.base.log_prob(z)) - jnp.sum(
                        jnp.broadcast_to(jnp.log(std.scale), n.shape))
                    if std.link == "exp" and not jacobian:
                        lp_n = lp_n - jnp.sum(un)
                else:  # the bijection onto the support at the current values
                    transform = biject_to(d.support)
                    value = transform.forward(un)
                    lp_n = jnp.sum(d.log_prob(value))
                    if jacobian:
                        lp_n = lp_n + jnp.sum(transform.log_abs_det_jacobian(un))
            else:
                std = d.standardized()
                if n.mode == "noncentered":
                    lp_n = jnp.sum(std.base.log_prob(un))
                    value = std.loc + std.scale * un
                else:
                    w = weights[n.name]
                    log_scale = jnp.log(std.scale)
                    z = (un - w * std.loc) * jnp.exp(-w * log_scale)
                    lp_n = jnp.sum(std.base.log_prob(z)) - jnp.sum(
                        w * jnp.broadcast_to(log_scale, n.shape))
                    value = std.loc + jnp.exp((1 - w) * log_scale) * (un - w * std.loc)
                if std.link == "exp":
                    value = jnp.exp(value)
                value = jnp.broadcast_to(value, n.shape)
            terms[n.name] = lp_n
            p[n.name] = value
        p.node = ""
        if model.likelihood is not None:
            dview.reader = "the likelihood"
            for key, d in model.likelihood(p, dview).items():
                terms[key] = jnp.sum(d.log_prob(data[key]))
        lp = sum(terms.values())
        return lp, dict(p), terms

    def logdensity(self, x, data=None, weights=None, jacobian=True):
        """Log joint density at the flat unconstrained point ``x`` (with Jacobians unless
        ``jacobian=False``)."""
        data = self.data if data is None else data
        weights = self.weights if weights is None else weights
        return self._forward(x, data, weights, jacobian)[0]

    def logdensity_and_grad(self, x, data=None, weights=None):
        return jax.value_and_grad(self.logdensity)(x, data, weights)

    def log_terms(self, x, data=None, weights=None) -> dict:
        """Each prior node's and likelihood key's contribution to the log density."""
        data = self.data if data is None else data
        weights = self.weights if weights is None else weights
        return self._forward(x, data, weights)[2]

    def constrain(self, x, data=None, weights=None, deterministic=True) -> dict:
        """The model's own (constrained) parameters at ``x``, with deterministics."""
        data = self.data if data is None else data
        weights = self.weights if weights is None else weights
        params = self._forward(x, data, weights)[1]
        if deterministic:
            for name, fn in self.model.deterministic.items():
                params[name] = fn(_Params(params, node=name), _Data(data))
        return params

    def unconstrain(self, params: dict, data=None, weights=None):
        """Flat unconstrained vector of the given constrained parameters."""
        data = self.data if data is None else data
        weights = self.weights if weights is None else weights
        missing = [n.name for n in self.nodes if n.name not in params]
        if missing:
            raise ModelError(f"unconstrain needs every parameter; missing {missing}")
        p = _Params()
        parts = []
        dview = _Data(data)
        for n in self.nodes:
            value = jnp.asarray(params[n.name], dtype=jnp.result_type(float))
            if value.shape != n.shape:
                raise ModelError(f"parameter '{n.name}' has shape {value.shape}, expected "
                                 f"{n.shape}")
            if not self.model.can_simulate:
                u = n.transform.inverse(value)
            elif n.multivariate:
                p.node = n.name
                d = _node_fn(self.model.prior[n.name])(p, dview)
                w = _MVN_WEIGHT.get(n.mode)
                u = value if n.mode == "centered" else reparam_lib.mvn_to_coordinates(
                    value, d.loc, d.scale_tril, weights[n.name] if w is None else w)
            elif n.locscale:
                p.node = n.name
                std = _node_fn(self.model.prior[n.name])(p, dview).standardized()
                v = jnp.log(value) if std.link == "exp" else value
                if n.mode == "centered":
                    u = v
                elif n.mode == "noncentered":
                    u = (v - std.loc) / std.scale
                else:
                    w = weights[n.name]
                    u = (v - std.loc) * jnp.exp(-(1 - w) * jnp.log(std.scale)) + w * std.loc
                u = jnp.broadcast_to(u, n.shape)
            else:  # the inverse bijection onto the support at the current values
                p.node = n.name
                d = _node_fn(self.model.prior[n.name])(p, dview)
                u = biject_to(d.support).inverse(value)
            parts.append(jnp.ravel(u))
            p[n.name] = value
        return jnp.concatenate(parts) if parts else jnp.zeros(0)

    def supports(self, params, data=None) -> dict:
        """The support of each prior node at the given parameter values and data.

        Parameters
        ----------
        params : dict or array
            The model's own (constrained) parameters, name -> array, or a flat
            unconstrained vector (as taken by :meth:`constrain`). A node's support reads
            only the nodes before it: from a dict, supports are given up to and including
            the first node it lacks.
        data : dict, optional
            The data; defaults to the data bound here.

        Returns
        -------
        dict
            Node name -> :class:`~hbm.constraints.Constraint`, whose bounds may be arrays
            or JAX tracers.
        """
        return {name: d.support for name, d in self._distributions(params, data).items()}

    def transforms(self, params, data=None) -> dict:
        """The bijection from unconstrained space onto each node's support at the given
        parameter values and data: the map :meth:`constrain` and :meth:`unconstrain`
        apply to that node.

        Parameters
        ----------
        params : dict or array
            As for :meth:`supports`.
        data : dict, optional
            The data; defaults to the data bound here.

        Returns
        -------
        dict
            Node name -> :class:`~hbm.transforms.Transform`, or ``None`` for a
            hierarchical location-scale node (its unconstrained coordinates are set by
            the reparameterization, see :attr:`reparam`).
        """
        locscale = {n.name for n in self.nodes if n.locscale}
        return {name: None if name in locscale else biject_to(d.support)
                for name, d in self._distributions(params, data).items()}

    def _distributions(self, params, data=None) -> dict:
        """Node name -> prior distribution at ``params`` (see :meth:`supports`); for a
        model given by its log density, an object holding the fixed support."""
        if not isinstance(params, dict):
            params = self.constrain(params, data, deterministic=False)
        if not self.model.can_simulate:
            return {n.name: n for n in self.nodes}
        data = self.data if data is None else data
        dview = _Data(data)
        p = _Params()
        out = {}
        for n in self.nodes:
            p.node = n.name
            out[n.name] = _node_fn(self.model.prior[n.name])(p, dview)
            if n.name not in params:
                break
            p[n.name] = jnp.asarray(params[n.name])
        return out

    def log_likelihood(self, params: dict, data=None) -> dict:
        """Pointwise log likelihood of every observed key (shape of the data)."""
        data = self.data if data is None else data
        if self.model.likelihood is None:
            return {}
        out = {}
        for key, d in self.model.likelihood(_Params(params), _Data(data)).items():
            obs = data[key]
            out[key] = jnp.broadcast_to(d.log_prob(obs), jnp.shape(obs))
        return out

    # --------------------------------------------------------------------- init
    def init(self, key, num_tries: int = 100, radius: float = 2.0):
        """A point drawn uniformly in (-radius, radius) on the unconstrained space, redrawn
        up to ``num_tries`` times until the log density and its gradient are finite."""
        return self.init_many(key, 1, num_tries, radius)[0]

    def init_many(self, key, num_points: int, num_tries: int = 100, radius: float = 2.0,
                  with_logdensity: bool = False):
        """``num_points`` independent initial points, shape (num_points, size) (and their
        log densities, with ``with_logdensity``)."""
        cands = jax.random.uniform(key, (num_tries, num_points, self.size),
                                   minval=-radius, maxval=radius,
                                   dtype=jnp.result_type(float))
        first, first_lp = (np.asarray(v) for v in _finite_and_logdensity(self, cands[0]))
        if first.all():  # the usual case: one evaluation per point
            return (cands[0], first_lp) if with_logdensity else cands[0]
        ok, lp = _finite_and_logdensity(
            self, cands.reshape(num_tries * num_points, self.size))
        ok = np.asarray(ok).reshape(num_tries, num_points)
        lp = np.asarray(lp).reshape(num_tries, num_points)
        if not ok.any(axis=0).all():
            bad_point = cands[0, int(np.argmin(ok.any(axis=0)))]
            terms = {k: float(v) for k, v in self.log_terms(bad_point).items()}
            nonfinite = [k for k, v in terms.items() if not math.isfinite(v)]
            grad = jax.grad(self.logdensity)(bad_point)
            raise InitializationError(
                f"no initial point with a finite log density and gradient in {num_tries} "
                f"tries; non-finite terms: {nonfinite or 'none (the gradient is not finite: '}"
                f"{'' if nonfinite else str(self._nonfinite_grad_params(grad)) + ')'}"
            )
        first = np.argmax(ok, axis=0)
        points = cands[first, np.arange(num_points)]
        return (points, lp[first, np.arange(num_points)]) if with_logdensity else points

    def _nonfinite_grad_params(self, grad):
        g = self.unravel(grad)
        return [k for k, v in g.items() if not bool(jnp.all(jnp.isfinite(v)))]

    def check_init(self, params: dict):
        """Validate a user-supplied initial point (names, shapes, support) -> flat x."""
        unknown = set(params) - set(self.param_names)
        if unknown:
            raise ModelError(f"init names unknown parameters {sorted(unknown)}; the model's "
                             f"parameters are {self.param_names}")
        for n in self.nodes:
            if n.name in params:
                value = jnp.asarray(params[n.name])
                if value.shape != n.shape:
                    raise ModelError(f"init['{n.name}'] has shape {value.shape}, expected "
                                     f"{n.shape}")
        # supports at the given values where the nodes before are given, else at binding
        current = self.supports(params)
        for n in self.nodes:
            support = current.get(n.name, n.support)
            if n.name in params and not n.locscale and not bool(
                    jnp.all(support.check(jnp.asarray(params[n.name])))):
                raise ModelError(f"init['{n.name}'] lies outside the support ({support})")
        return params


def _finite_and_logdensity(bound: BoundModel, xs):
    """Whether the log density and its gradient are finite at each row of ``xs``, and
    the log density; the compiled check is cached per model structure, with the data as
    an argument."""
    key = ("finite_and_logdensity", bound.signature)
    cache = bound.model._bind_cache
    if key not in cache:
        def check(x, data, weights):
            lp, g = jax.value_and_grad(bound.logdensity)(x, data, weights)
            return jnp.isfinite(lp) & jnp.all(jnp.isfinite(g)), lp

        cache[key] = jax.jit(jax.vmap(check, in_axes=(0, None, None)))
    return cache[key](xs, bound.data, bound.weights)
