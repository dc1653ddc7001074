"""Parsing lme4/brms formulas with the ``formulae`` library (no hand-written parser).

``formulae`` (the parser underneath Bambi) tokenizes, parses and resolves the formula
language: the response, population terms (interactions ``a:b``, ``a*b``, calls such as
``np.log(x)``, ``scale(x)``, ``C(h)``) and group-specific terms ``(expr | factor)``,
including ``factor`` interactions ``(1 | g1:g2)`` and nesting ``(1 | g1/g2)``, which it
expands to ``(1 | g1) + (1 | g1:g2)``.

Two things are added on top of it, both at the token / syntax-tree level:

- **Correlation blocks.** formulae resolves ``(1 + x | g)`` into the separate terms
  ``(1 | g)`` and ``(x | g)``; lme4 and brms read one parenthesized block as one
  correlated set. We walk formulae's syntax tree, resolve each ``( ... | ...)`` block on
  its own and keep its terms together, per grouping factor.
- **The double bar** ``(x || g)`` (lme4's uncorrelated terms), which formulae's grammar
  lacks. After formulae's scanner has tokenized the formula, two adjacent ``PIPE`` tokens
  are merged into one, and the remaining ``PIPE`` token is remembered; the block it
  belongs to is then split into its separate, uncorrelated terms ``(1 | g) + (0 + x | g)``
  (formulae's own resolution of the block already yields those term objects). No text is
  rewritten.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from formulae.expr import Binary, Grouping
from formulae.parser import Parser
from formulae.resolver import Resolver
from formulae.scanner import Scanner
from formulae.terms import GroupSpecificTerm, Intercept
from formulae.terms import Model as TermModel

from hbm.errors import ConfigurationError

__all__ = ["GroupBlock", "ParsedFormula", "parse_formula", "term_label"]


class GroupBlock(NamedTuple):
    """One set of group-specific terms sharing a grouping factor and a correlation."""

    factor: str               # "Subject", or "g1:g2" for an interaction factor
    factor_vars: tuple        # the data columns that make up the factor
    exprs: tuple              # formulae Intercept / Term objects, the predictors
    correlated: bool          # an LKJ-correlated block (more than one term, single bar)


class ParsedFormula(NamedTuple):
    formula: str
    response_ast: Any         # formulae syntax-tree node of the left-hand side
    response: Any             # formulae Response term
    common: list              # population (common) terms, formulae objects
    blocks: list              # GroupBlock, in formula order
    variables: set            # every data column the formula reads


def term_label(term) -> str:
    return "Intercept" if isinstance(term, Intercept) else term.name


def _merge_double_pipes(tokens):
    """Tokens with each ``PIPE PIPE`` pair merged into one ``PIPE``; the ids of the
    merged tokens (they mark uncorrelated blocks)."""
    out, doubled = [], set()
    for token in tokens:
        if token.kind == "PIPE" and out and out[-1].kind == "PIPE":
            if id(out[-1]) in doubled:
                raise ConfigurationError("formula has '|||', which is not a formula operator")
            doubled.add(id(out[-1]))
            continue
        out.append(token)
    return out, doubled


def _is_block(expr) -> bool:
    return (isinstance(expr, Grouping) and isinstance(expr.expression, Binary)
            and expr.expression.operator.kind == "PIPE")


def _find_blocks(expr, found: list):
    """The ``( ... | ... )`` groupings of the right-hand side, in order."""
    if _is_block(expr):
        found.append(expr)
        return
    if isinstance(expr, Binary):
        _find_blocks(expr.left, found)
        _find_blocks(expr.right, found)


def _group_terms(resolved) -> list:
    if isinstance(resolved, GroupSpecificTerm):
        return [resolved]
    if isinstance(resolved, TermModel):
        return list(resolved.group_terms)
    return []


def _factor_vars(term: GroupSpecificTerm, formula: str) -> tuple:
    names = []
    for component in term.factor.components:
        if type(component).__name__ != "Variable":
            raise ConfigurationError(
                f"formula {formula!r}: the grouping factor {term.factor.name!r} must be made "
                "of data columns (g, g1:g2 or g1/g2), not function calls")
        names.append(component.name)
    return tuple(names)


def parse_formula(formula: str) -> ParsedFormula:
    """Parse ``formula`` into its response, population terms and group blocks."""
    if not isinstance(formula, str) or not formula.strip():
        raise ConfigurationError(f"formula must be a non-empty string, got {formula!r}")
    try:
        tokens, doubled = _merge_double_pipes(Scanner(formula).scan())
        ast = Parser(tokens).parse()
    except ConfigurationError:
        raise
    except Exception as e:  # formulae's ScanError / ParseError
        raise ConfigurationError(f"cannot parse formula {formula!r}: {e}") from e
    if not (isinstance(ast, Binary) and ast.operator.kind == "TILDE"):
        raise ConfigurationError(f"formula {formula!r} needs a response: 'y ~ terms'")
    try:
        whole = Resolver(ast).resolve()
        raw_blocks = []
        _find_blocks(ast.right, raw_blocks)
        resolved = [(_group_terms(Resolver(b).resolve()),
                     id(b.expression.operator) in doubled) for b in raw_blocks]
    except Exception as e:  # formulae's ResolverError and friends
        raise ConfigurationError(f"cannot interpret formula {formula!r}: {e}") from e
    if not isinstance(whole, TermModel):
        whole = TermModel(whole)

    blocks, seen = [], {}
    for terms, uncorrelated in resolved:
        by_factor: dict[str, list] = {}
        for term in terms:
            key = (term_label(term.expr), term.factor.name)
            if key in seen:
                raise ConfigurationError(
                    f"formula {formula!r} has the group-specific term ({key[0]} | {key[1]}) "
                    "more than once")
            seen[key] = True
            by_factor.setdefault(term.factor.name, []).append(term)
        for factor, group in by_factor.items():
            factor_vars = _factor_vars(group[0], formula)
            if uncorrelated:  # (x || g) -> (1 | g) + (0 + x | g): one block per term
                for term in group:
                    blocks.append(GroupBlock(factor, factor_vars, (term.expr,), False))
            else:
                blocks.append(GroupBlock(factor, factor_vars, tuple(t.expr for t in group),
                                         len(group) > 1))
    variables = set(whole.var_names)
    return ParsedFormula(formula, ast.left, whole.response, list(whole.common_terms), blocks,
                         variables)
