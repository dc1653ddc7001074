"""The ``hbm`` command: ``hbm demo``, ``hbm fit MODEL``, ``hbm fit --formula "y ~ x +
(1 | g)" --data file.csv --family gaussian``, ``hbm resume DIR MODEL``, ``hbm models``.

Errors raised by hbm are printed as one clear line (exit status 2), not a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys


def _load_model(spec: str, data_csv: str | None):
    """A library model name, or ``path/file.py:function`` returning ``(model, data)``."""
    from hbm import models
    from hbm.errors import ConfigurationError

    df = None
    if data_csv is not None:
        import pandas as pd

        df = pd.read_csv(data_csv)
    if ":" in spec:
        path, func = spec.rsplit(":", 1)
        file = pathlib.Path(path)
        if not file.exists():
            raise ConfigurationError(f"model file {path!r} does not exist")
        module_spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, func):
            raise ConfigurationError(f"{path} has no function {func!r}")
        fn = getattr(module, func)
    else:
        library = models.available()
        if spec not in library:
            raise ConfigurationError(f"unknown model {spec!r}; `hbm models` lists the library "
                                     f"({', '.join(sorted(library))})")
        fn = library[spec]
    return fn(df) if df is not None else fn()


def _save_current_figure(plot, path: pathlib.Path) -> pathlib.Path:
    """Save what an ArviZ plot drew: ArviZ 1.x returns a PlotCollection that saves itself,
    ArviZ 0.x draws on the current matplotlib figure."""
    import matplotlib.pyplot as plt

    if hasattr(plot, "savefig"):
        plot.savefig(path, dpi=90, bbox_inches="tight")
    else:
        plt.gcf().savefig(path, dpi=90, bbox_inches="tight")
    plt.close("all")
    return path


def _write_figures(fit, out: pathlib.Path, prefix: str) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import arviz as az
    import matplotlib.pyplot as plt

    from hbm.diagnostics import arviz_major_version

    written = []
    idata = fit.to_arviz()
    backend = {"backend": "matplotlib"} if arviz_major_version(az) >= 1 else {}
    scalar_vars = [k for k, v in fit.posterior.items() if v.ndim == 2][:6]
    if scalar_vars:
        plot = az.plot_rank(idata, var_names=scalar_vars, **backend)
        written.append(_save_current_figure(plot, out / f"{prefix}_rank.png"))
    from hbm import plots

    # population parameters and scales beside the group effects as a caterpillar plot
    path = out / f"{prefix}_forest.png"
    plots.forest(fit, path=str(path))
    plt.close("all")
    written.append(path)
    return written


def _ppc_figure(fit, path: pathlib.Path) -> pathlib.Path:
    """Posterior predictive check: observed data against replicated data sets."""
    import matplotlib

    matplotlib.use("Agg")
    import arviz as az

    from hbm.diagnostics import arviz_major_version

    idata = fit.to_arviz(posterior_predictive=True)
    if arviz_major_version(az) >= 1:
        plot = az.plot_ppc_dist(idata, num_samples=100, backend="matplotlib")
    else:
        plot = az.plot_ppc(idata, num_pp_samples=100)
    return _save_current_figure(plot, path)


def _demo(args) -> int:
    import numpy as np
    import pandas as pd

    import hbm

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, data = hbm.models.radon_varying_intercept_slope()
    print("hbm demo: radon (Gelman & Hill ch. 13), log radon ~ floor with county-varying "
          "intercepts and slopes, LKJ-correlated")
    print(f"  {len(np.asarray(data['y']))} houses in {len(model.coords.get('county', []))} "
          "counties\n")

    fit = hbm.sample(model, data, chains=args.chains, warmup=args.warmup, draws=args.draws,
                     seed=args.seed, progress="force" if sys.stderr.isatty() else False)
    scalars = [k for k, v in fit.posterior.items() if v.ndim <= 3 and "effect" not in k]
    pd.set_option("display.width", 120)
    print("NUTS posterior summary (population-level parameters):")
    print(fit.summary(var_names=scalars).to_string())
    n_div = int(np.sum(fit.sample_stats["diverging"]))
    print(f"\n  divergences: {n_div}; step sizes: "
          f"{np.round(fit.info['step_size'], 3).tolist()}; sampling took "
          f"{fit.info['times']['warmup'] + fit.info['times']['sampling']:.1f} s\n")

    approx = hbm.advi(model, data, method="fullrank", seed=args.seed, progress=False)
    print(f"ADVI (full-rank): {approx.info['num_steps']} steps, Pareto k-hat "
          f"{approx.info['khat']:.2f}\n")
    # the model is written centered (county_effect is a MultivariateNormal node): the
    # classical MAP is the mode of the model as written, whatever parameterization NUTS used
    report = hbm.map_vs_mean(model, data, fit=fit, seed=args.seed)
    advi_means = {}
    for name, draws in approx.posterior.items():
        mean = draws.reshape(-1, *draws.shape[2:]).mean(0)
        for idx in np.ndindex(mean.shape):
            advi_means[(name, idx)] = float(mean[idx])
    shown = report[[not str(i).split("[")[0].endswith("_effect") for i in report.index]]
    columns = [c for c in ("map", "mode_jacobian", "mean", "sd", "std_distance", "collapsed",
                           "outside_90") if c in shown.columns]
    print("MAP beside the NUTS posterior (population-level parameters):")
    print(shown[columns].round(3).to_string())
    print(f"\n  {int(report['collapsed'].sum()) if 'collapsed' in report else 0} collapsed "
          f"group scale(s); {int(report['outside_90'].sum()) if 'outside_90' in report else 0}"
          " MAP(s) outside the central 90% posterior interval")

    written = []
    nc = out / "radon_nuts.nc"
    fit.to_arviz().to_netcdf(str(nc))
    written.append(nc)
    written += _write_figures(fit, out, "radon")
    written.append(_ppc_figure(fit, out / "radon_ppc.png"))
    figure = out / "radon_map_vs_mean.png"
    hbm.plots.map_vs_mean(report, path=str(figure))
    written.append(figure)
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


def _fit(args) -> int:
    import hbm
    from hbm.errors import ConfigurationError

    if args.formula is not None:
        model, data = _formula_model(args)
    elif args.model is None:
        raise ConfigurationError("hbm fit needs a MODEL or --formula (with --data)")
    else:
        model, data = _load_model(args.model, args.data)
    kwargs = {}
    if args.method in ("nuts", "auto"):
        kwargs = dict(chains=args.chains, warmup=args.warmup, draws=args.draws)
    if args.checkpoint or args.store:
        if args.method != "nuts":
            raise ConfigurationError("--checkpoint and --store need --method nuts")
        kwargs.update(checkpoint=args.checkpoint, store=args.store)
    result = hbm.fit(model, data, method=args.method, seed=args.seed, **kwargs)
    return _report(result, args.out)


def _formula_model(args):
    """``hbm fit --formula "y ~ x + (1 | g)" --data file.csv --family ...``."""
    import hbm
    from hbm.errors import ConfigurationError

    if args.model is not None:
        raise ConfigurationError("give either a MODEL or --formula, not both")
    if args.data is None:
        raise ConfigurationError("--formula needs --data file.csv")
    import pandas as pd

    df = pd.read_csv(args.data)
    return hbm.formula(args.formula, df, family=args.family, link=args.link,
                       na_action=args.na_action)


def _resume(args) -> int:
    import hbm

    model, _ = _load_model(args.model, args.data)
    return _report(hbm.resume(args.checkpoint, model, previous=args.previous), args.out)


def _report(result, out) -> int:
    import pandas as pd

    pd.set_option("display.width", 120)
    print(f"method: {result.method}"
          + (f" (fell back: {result.fallback_reason})" if result.fallback_reason else ""))
    if result.partial:
        print(f"partial: {result.info.get('partial_reason')}")
    print(result.summary().to_string())
    if out:
        out = pathlib.Path(out)
        out.mkdir(parents=True, exist_ok=True)
        nc = out / "fit.nc"
        result.to_arviz().to_netcdf(str(nc))
        print(f"wrote {nc}")
    return 0


def _models(args) -> int:
    from hbm import models

    for name, fn in sorted(models.available().items()):
        doc = (fn.__doc__ or "").strip().splitlines()
        print(f"{name:32s} {doc[0] if doc else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hbm", description="Bayesian hierarchical models")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fit the radon model with NUTS, ADVI and MAP")
    demo.add_argument("--out", default="hbm-demo")
    demo.add_argument("--chains", type=int, default=4)
    demo.add_argument("--warmup", type=int, default=1000)
    demo.add_argument("--draws", type=int, default=1000)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    fit = sub.add_parser("fit", help="fit a library model, path/file.py:function, or "
                                     "--formula with --data")
    fit.add_argument("model", nargs="?", default=None)
    fit.add_argument("--data", default=None, help="CSV file passed to the model function")
    fit.add_argument("--formula", default=None,
                     help='an lme4/brms formula, e.g. "Reaction ~ Days + (Days | Subject)", '
                          "fitted to the --data CSV (see hbm.formula)")
    fit.add_argument("--family", default="gaussian", help="--formula: the response family")
    fit.add_argument("--link", default=None, help="--formula: the link (family default)")
    fit.add_argument("--na-action", dest="na_action", default="error",
                     choices=["error", "drop"], help="--formula: rows with missing values")
    fit.add_argument("--method", default="nuts",
                     choices=["auto", "nuts", "advi", "map", "laplace"])
    fit.add_argument("--chains", type=int, default=4)
    fit.add_argument("--warmup", type=int, default=1000)
    fit.add_argument("--draws", type=int, default=1000)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", default=None)
    fit.add_argument("--checkpoint", default=None, metavar="DIR",
                     help="NUTS: write the sampler state and draws to DIR after every chunk")
    fit.add_argument("--store", default=None, metavar="DIR",
                     help="NUTS: stream the draws to memory-mapped .npy files in DIR")
    fit.set_defaults(func=_fit)

    res = sub.add_parser("resume", help="continue a NUTS run from its --checkpoint directory")
    res.add_argument("checkpoint", metavar="DIR")
    res.add_argument("model", help="the model the run was started with")
    res.add_argument("--data", default=None, help="CSV file passed to the model function")
    res.add_argument("--previous", action="store_true",
                     help="use the checkpoint before the last (if the last is damaged)")
    res.add_argument("--out", default=None)
    res.set_defaults(func=_resume)

    lst = sub.add_parser("models", help="list the model library")
    lst.set_defaults(func=_models)
    return parser


def main(argv=None) -> int:
    from hbm.errors import HbmError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HbmError as e:
        print(f"hbm: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"hbm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
