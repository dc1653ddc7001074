"""lme4/brms formulas compiled to ordinary hbm models: :func:`formula`.

``model, data = hbm.formula("Reaction ~ Days + (Days | Subject)", df)`` parses the
formula with the ``formulae`` library (:mod:`hbm.formulas.terms`), builds the design on the
host once (:mod:`hbm.formulas.design`: population design matrix, integer group codes and
per-observation group predictors), picks autoscaled default priors
(:mod:`hbm.formulas.priors`, after rstanarm) and the family (:mod:`hbm.formulas.families`),
and returns a plain :class:`hbm.Model` (:mod:`hbm.formulas.build`): ``hbm.sample``,
``hbm.find_map``, ``hbm.advi``, ``hbm.prior_predictive`` and ``fit.predict`` work on it
unchanged. ``model.formula_spec`` holds the prior table (``.priors``) and
``.new_data(df)`` for predictions, also for new group levels.
"""

from hbm.formulas.build import FormulaSpec, formula
from hbm.formulas.families import FAMILIES, LINKS

__all__ = ["formula", "FormulaSpec", "FAMILIES", "LINKS"]
