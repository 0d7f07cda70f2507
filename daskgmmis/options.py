"""The one definition of the fit options: default, constraint, documentation, CLI spelling.

:class:`FitOptions` is a frozen dataclass with one field per option of
:func:`daskgmmis.fit`. Each field is declared once, with

* its default;
* its constraint - a tuple of :class:`Constraint` objects, any of which the
  value may satisfy (scikit-learn's ``_parameter_constraints`` idea), checked
  once when a :class:`FitOptions` is built;
* its documentation (numpydoc text; its first sentence is the CLI help);
* its command-line spelling (:class:`Cli`), or the reason it is Python-only;
* whether it is part of the fitted problem a checkpoint must match.

Everything that used to copy the options by hand reads this table:
:func:`daskgmmis.fit` (its signature and its docstring are generated from it),
:func:`daskgmmis.em.fit_best`, :class:`daskgmmis.GaussianMixture` (its defaults
are tested against it), :func:`daskgmmis.cv_fit`, the ``daskgmmis fit``
command (its options are generated from it), the fit report and the
checkpoint fingerprint.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import os
import re
import textwrap
from dataclasses import dataclass, field

import numpy as np

from .background import Background
from .errors import InputError, InputTypeError
from .init import INIT_METHODS

__all__ = ["FitOptions", "Cli", "Constraint", "Interval", "OneOf", "validate_option",
           "option_fields", "INIT_METHODS"]


# ---------------------------------------------------------------- constraints


class Constraint:
    """One acceptable kind of value of an option.

    ``accepts_type(v)``: ``v`` has a type this constraint is about (a failure is
    then a value error, :class:`InputError`; else a type error,
    :class:`InputTypeError`). ``ok(v)``: ``v`` satisfies it.
    """

    description = "?"

    def accepts_type(self, value) -> bool:
        return self.ok(value)

    def ok(self, value) -> bool:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.description


def _is_int(v) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, (numbers.Real, np.integer, np.floating)) \
        and not isinstance(v, (bool, np.bool_))


class Interval(Constraint):
    """A finite integer or real number in ``[low, high]`` (``open`` ends excluded)."""

    def __init__(self, kind: type, low=None, high=None, *, low_open: bool = False):
        self.kind, self.low, self.high, self.low_open = kind, low, high, low_open
        what = "an integer" if kind is int else "a finite number"
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low}")
        if high is not None:
            bounds.append(f"<= {high}")
        self.description = " ".join([what] + [" and ".join(bounds)] if bounds else [what])

    def accepts_type(self, value) -> bool:
        # 2.5 for an integer option is a wrong value (not a wrong type)
        return _is_real(value)

    def ok(self, value) -> bool:
        if not (_is_int(value) if self.kind is int else _is_real(value)):
            return False
        if self.kind is not int and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


class OneOf(Constraint):
    """One of a fixed set of strings."""

    def __init__(self, values):
        self.values = tuple(values)
        self.description = f"one of {self.values}"

    def accepts_type(self, value) -> bool:
        return isinstance(value, str)

    def ok(self, value) -> bool:
        return isinstance(value, str) and value in self.values


class _Predicate(Constraint):
    """A constraint given by a test (and the type family it is about)."""

    def __init__(self, description: str, test, type_test=None):
        self.description, self._test, self._type_test = description, test, type_test

    def accepts_type(self, value) -> bool:
        return (self._type_test or self._test)(value)

    def ok(self, value) -> bool:
        return bool(self._test(value))


NONE = _Predicate("None", lambda v: v is None)
# a truthy string such as "no" would silently mean True: booleans only
BOOL = _Predicate("True or False", lambda v: isinstance(v, (bool, np.bool_)))
CALLABLE = _Predicate("a callable taking coords (n, D)", callable)
PATH = _Predicate("a path (str or os.PathLike)", lambda v: isinstance(v, (str, os.PathLike)))
BACKGROUND = _Predicate("a daskgmmis.Background", lambda v: isinstance(v, Background))
SEED = _Predicate("an int seed, a numpy Generator or a SeedSequence",
                  lambda v: _is_int(v) or isinstance(v, (np.random.Generator,
                                                         np.random.SeedSequence)))
# a distributed.Client, duck-typed (distributed need not be imported to check it)
CLIENT = _Predicate("a distributed.Client (connect with distributed.Client(address))",
                    lambda v: all(hasattr(v, a) for a in ("compute", "persist",
                                                          "scheduler_info")))


# the indices themselves are checked against K by mstep.parse_frozen
FROZEN = _Predicate("a dict {'amp'|'mean'|'covar': indices} or a sequence of component "
                    "indices", lambda v: isinstance(v, dict) or not isinstance(v, (str, bytes))
                    and hasattr(v, "__len__"))


def validate_option(name: str, value, constraints, expected: str | None = None,
                    error: type | None = None) -> None:
    """Raise unless ``value`` satisfies one of ``constraints``.

    Parameters
    ----------
    name : str
        The option, named first in the message.
    value
    constraints : sequence of Constraint
    expected : str, optional
        What to say was expected (default: the constraints' descriptions).
    error : type, optional
        The exception class (default: see Raises).

    Raises
    ------
    InputError
        The value has an acceptable type but is out of range (or not allowed).
    InputTypeError
        The value has none of the acceptable types.
    """
    if any(c.ok(value) for c in constraints):
        return
    if expected is None:
        texts = [str(c) for c in constraints]
        # "None, True or False" rather than "None or True or False"
        expected = texts[0] if len(texts) == 1 else (
            ", ".join(texts) if " or " in texts[-1] else " or ".join(texts))
    cls = error or (InputError if any(c.accepts_type(value) for c in constraints)
                    else InputTypeError)
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    found = text if cls is InputError else f"{type(value).__name__} {text}"
    raise cls(f"{name}: expected {expected}; found {found}.")


# ------------------------------------------------------------------ metadata


@dataclass(frozen=True)
class Cli:
    """How an option is spelled on the command line (``daskgmmis fit``).

    Attributes
    ----------
    flags : tuple of str
        Option strings, the preferred first (later ones are aliases).
    value : str
        What the option's text holds: ``"float"``, ``"int"``, ``"choice"``,
        ``"flag"`` (present = True), ``"toggle"`` (``--x/--no-x``), ``"spec"``
        (JSON or module:function, parsed by the command), ``"json"``,
        ``"path"``.
    dest : str, optional
        Name of the command's parameter (default: the option's name).
    metavar : str, optional
    help : str, optional
        Help text (default: the first sentence of the option's documentation).
    default : object
        Default on the command line when it differs from the library's (e.g.
        ``init_method``: chosen from ``--init-model``); :data:`SAME` otherwise.
    """

    flags: tuple
    value: str
    dest: str | None = None
    metavar: str | None = None
    help: str | None = None
    default: object = "__same__"


SAME = "__same__"


def _option(default, constraints, doc: str, *, cli: Cli | None = None,
            python_only: str | None = None, problem: bool = False,
            expected: str | None = None, error: type | None = None):
    """A :class:`FitOptions` field: default, constraints, doc, CLI spelling.

    ``problem``: part of the fitted problem (the checkpoint fingerprint).
    Exactly one of ``cli`` and ``python_only`` (the reason) is given.
    ``expected``/``error``: the wording and class of a refusal when the
    generated ones would say less (see :func:`validate_option`).
    """
    assert (cli is None) != (python_only is None)
    meta = {"constraints": tuple(constraints), "doc": textwrap.dedent(doc).strip(),
            "cli": cli, "python_only": python_only, "problem": problem,
            "expected": expected, "error": error}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FitOptions:
    """Every option of a fit, validated when built (see the module docstring).

    Build with keywords (``FitOptions(tol=1e-4, n_init=4)``); unknown names and
    invalid values raise :class:`InputTypeError` / :class:`InputError` naming
    the option. :meth:`replace` returns a validated copy.
    """

    init_method: str = _option(
        "kmeans", (OneOf(INIT_METHODS),), """
        Initialization: ``"kmeans"`` (k-means|| on the data), ``"random"``
        (components at random rows), ``"minmax"`` (means uniform in the data's
        bounding box) or ``"none"`` (the model's current parameters). The
        default finds the basin of the right answer where a random start does
        not: on pyGMMis's demo geometry (4,000 rows, noise sd 0.5, ~50 % cut away)
        it gives KL(truth || fit) 0.015-0.038 and N_orig within 6 % over six
        seeds, where random starts gave KL 1.4-2.6 and N_orig up to 8.5x the truth.""",
        cli=Cli(("--init-method",), "choice", default=None,
                help="Initialization [default: kmeans, k-means|| on the data; with "
                     "--init-model: that model]."),
        problem=True)
    w: float = _option(
        0.0, (Interval(float, 0),), """
        Covariance regularization in data units: ``w**2`` is added to the diagonal
        of every covariance (scikit-learn's ``reg_covar`` is ``w**2``).""",
        cli=Cli(("-w", "--w"), "float"), problem=True)
    cutoff: float | None = _option(
        None, (NONE, Interval(float, 0, low_open=True)), """
        Neighborhood size in 1-D-equivalent sigmas; ``None``: every row touches
        every component.""",
        cli=Cli(("--cutoff",), "float"), problem=True,
        expected="None or a number of sigmas > 0", error=InputError)
    sel_callback: object = _option(
        None, (NONE, CALLABLE), """
        Selection function Ω(coords (n, D)) -> (n,) probabilities in [0, 1]
        (booleans accepted) that a row at noisy position ``coords`` is in the
        catalog. With it the fit recovers the population *before* selection by
        imputing the unobserved rows (docs/design.md §1.4); Ω enters the
        likelihood, not the responsibilities. Must be picklable for a
        distributed client.""",
        cli=Cli(("--selection",), "spec", dest="selection", metavar="SPEC",
                help="Selection function (truncated fit): built-in JSON such as "
                     '\'{"type": "box", "lower": [0, 0], "upper": [10, 10]}\', @file.json, '
                     "or module:function / file.py:function for your own Omega(coords)."),
        problem=True, expected="a callable taking coords (n, D), or None")
    covar_callback: object = _option(
        None, (NONE, CALLABLE), """
        Noise covariance of an unobserved row at arbitrary true positions:
        returns (n, D, D), (n, D) diagonal variances, or one (D, D) matrix.
        Default: the shared noise matrix when ``covar`` is one, else no noise.""",
        cli=Cli(("--covar-callback",), "spec", metavar="SPEC",
                help="Noise of unobserved rows: JSON (D, D) matrix, JSON list of D "
                     "variances, or module:function / file.py:function."),
        problem=True, expected="a callable taking coords (n, D), or None")
    projection_callback: object = _option(
        None, (NONE, CALLABLE), """
        Projection of an unobserved row (truncated fits with ``projection``): at
        true positions ``t`` (n, D) returns the rows' matrices (n, d, D), or one
        (d, D) matrix; the imputed rows are observed at ``R t`` plus noise, where
        the selection is evaluated. Needed with ``sel_callback`` when the
        projection is per row; default: the shared projection. Must be picklable
        for a distributed client.""",
        cli=Cli(("--projection-callback",), "spec", metavar="SPEC",
                help="Projection of unobserved rows (truncated fits of a catalog with "
                     "per-row projections): module:function / file.py:function returning "
                     "(n, d, D) matrices at true positions (n, D)."),
        problem=True, expected="a callable taking coords (n, D), or None")
    background: Background | None = _option(
        None, (NONE, BACKGROUND), """
        Uniform background fitted jointly; its ``amp`` is updated in place.""",
        python_only="built by the command from --bg-lower, --bg-upper, --bg-amp, "
                    "--bg-amp-min, --bg-amp-max and --bg-fixed (or saved with --init-model)",
        problem=True, expected="a daskgmmis.Background or None")
    tol: float | None = _option(
        None, (NONE, Interval(float, 0)), """
        Distance to the fixed point at which EM stops: the likelihood still to
        gain (mean logL per row, extrapolated from the last plain EM step and EM's
        slowest recent contraction rate) below ``tol``, and the relative change of
        N_orig still to come below ``sqrt(tol)``; with imputation, also the last
        20 recorded likelihoods within ``tol`` of one another. A fit crawling
        along a ridge does not stop. Default (None) ``0.01 / N``: within 0.01
        nats of total likelihood, about 0.14 standard errors of the fixed point along any
        direction, and N_orig within 0.1 of its smallest standard error
        ``1 / sqrt(N)``. A ``tol`` far below the imputation's Monte-Carlo resolution
        warns (:class:`~daskgmmis.errors.PrecisionWarning`).""",
        cli=Cli(("--tol",), "float",
                help="Stop within this mean logL per row of the fixed point "
                     "[default: 0.01 / N]."),
        expected="None or a finite number >= 0", error=InputError)
    maxiter: int = _option(
        1000, (Interval(int, 0),), """
        Maximum number of EM iterations (M-steps) per start.""",
        cli=Cli(("--maxiter", "--max-iter"), "int"))
    frozen: object = _option(
        None, (NONE, FROZEN), """
        ``{"amp": [...], "mean": [...], "covar": [...]}`` component indices whose
        values are held; a plain sequence freezes all three (with
        ``init_method="none"``).""",
        cli=Cli(("--frozen",), "json", metavar="JSON",
                help='Components held fixed: \'{"amp": [0], "mean": [0, 2], "covar": []}\' '
                     "or '[0, 2]' (all three); needs a start (--init-model)."),
        problem=True)
    rng: object = _option(
        None, (NONE, SEED), """
        Seed of every random choice (initialization, imputation, the starts).""",
        cli=Cli(("--seed",), "int", dest="seed",
                help="Random seed (initialization, imputation, restarts)."),
        problem=True)
    client: object = _option(
        None, (NONE, CLIENT), """
        Default: the active client if any, else dask's local threaded scheduler.""",
        python_only="the cluster is chosen by --scheduler, --scheduler-file, --workers "
                    "and --memory-limit")
    checkpoint: str | os.PathLike | None = _option(
        None, (NONE, PATH), """
        File for the EM state, written atomically after every iteration. If it
        holds a checkpoint of the same problem the fit resumes from it and ends
        bit-identical to an uninterrupted fit; a checkpoint of another problem
        is refused (:class:`~daskgmmis.errors.CheckpointError`). Only with
        ``n_init=1``.""",
        cli=Cli(("--checkpoint",), "path",
                help="EM state file, written every iteration; a rerun resumes from it."))
    split_n_merge: int = _option(
        0, (Interval(int, 0),), """
        Split-and-merge attempts after EM converges (Ueda et al. 2000, as in
        Bovy's XD and pyGMMis): merge the pair with the largest responsibility
        overlap, split the broadest other component, run a partial EM on those
        three, then a full EM; keep the result only if the likelihood improves
        by more than ``tol``. Each attempt tries the next candidate triple.
        Needs K >= 3.""",
        cli=Cli(("--split-n-merge",), "int",
                help="Split-and-merge attempts after EM converges (Ueda et al. 2000): "
                     "kept only where the likelihood improves; needs K >= 3."))
    oversampling: float = _option(
        4.0, (Interval(float, 0, low_open=True),), """
        Monte-Carlo precision of the imputation: candidates per estimated
        unobserved row (see :func:`daskgmmis.imputation.candidate_count`), and at
        least :data:`daskgmmis.imputation.MIN_CANDIDATES` per fit. The candidates
        are a fixed sample, redrawn only when the parameters move away from where
        it was drawn; the standard errors in ``FitResult.mc_error`` scale as
        ``1 / sqrt(oversampling)``. Cost per iteration: a Gaussian density and the
        moments of the ``oversampling (1 - f) / f`` unobserved candidates per
        observed row (no E-step, no callback); the callbacks run on
        ``oversampling / f`` candidates per row at each redraw.""",
        cli=Cli(("--oversampling",), "float"), problem=True)
    estimate_mc_error: bool = _option(
        True, (BOOL,), """
        Estimate the Monte-Carlo error of the truncated fit's ``logL`` and ``N_orig``
        (``FitResult.mc_error``) once it has stopped. It costs :data:`GROUPS
        <daskgmmis.imputation.GROUPS>` + P E-steps of the whole catalog (P packed
        parameters up to 128; above that the secants of the last steps), once per fit.
        Measured (``benchmarks/mc_error_cost.py``: default fits of the demo,
        cut2d and cut4d scenarios, and 200,000 rows with K=8, D=4, 121 parameters):
        7-16 % of the fit's time; 6 s, the time of 140 iterations, on the largest.
        ``False``
        skips it - ``FitResult.mc_error`` is then None, and the
        :class:`~daskgmmis.errors.PrecisionWarning` for a ``tol`` below it is not
        given - and leaves the fit itself unchanged. Nothing to estimate without
        ``sel_callback``.""",
        cli=Cli(("--mc-error/--no-mc-error",), "toggle",
                help="Estimate the Monte-Carlo error of logL and N_orig after a truncated "
                     "fit (costs GROUPS + P E-steps)."))
    persist: bool | None = _option(
        None, (NONE, BOOL), """
        Keep the data in (cluster) memory across iterations; default: when it
        fits in half the workers' memory limits (a quarter of free RAM locally).""",
        cli=Cli(("--persist/--no-persist",), "toggle",
                help="Keep the catalog in cluster memory (default: when it fits)."))
    accelerate: bool = _option(
        True, (BOOL,), """
        Anderson acceleration of the EM map (Walker & Ni 2011; Henderson &
        Varadhan 2019): every other plain EM step is replaced by the point that
        the last 9 pairs ``(x, M(x))`` put at the fixed point - the same fixed
        points in far fewer iterations where EM crawls (the N_orig ridge of a
        truncated fit, heavy noise). A mixed point is kept only if it gains at
        least what the last step gained (exact: the map is deterministic). Where
        the pairs show EM leaving a saddle (mixing would lead back onto it) the
        mixed point is the over-relaxed step ``x + eta (M(x) - x)`` instead, eta
        doubling from 2 while kept, up to 64 (Salakhutdinov & Roweis 2003; not
        with ``sel_callback``): measured on 200,000 rows, K=8, D=4
        (``benchmarks/local_maxima.py``), fits that crept for 905 - 1000+
        iterations converged in 237 - 249. With ``sel_callback``, on a ridge along
        N_orig where EM crawls, the mixed point is the Newton point on EM's
        Jacobian, probed with one E-step per packed parameter (counted in
        ``FitResult.passes``; models of up to 128): a 4-D cut that ended at
        ``maxiter=1000`` converges in 320. Fewer pairs for a
        model above ~2 million parameters, none (plain EM) above ~8 million
        (:data:`daskgmmis.memory.MEMORY_BYTES`). ``False`` gives textbook
        EM, step for step.""",
        cli=Cli(("--accelerate/--no-accelerate",), "toggle"), problem=True)
    n_init: int = _option(
        1, (Interval(int, 1),), """
        Number of starts (each from its own random stream); the fit with the
        highest final likelihood is kept (at most
        :data:`daskgmmis.memory.MAX_N_INIT`, checked with the memory plan). EM
        climbs to a local maximum: with many overlapping components one start
        may miss the best. Measured (``benchmarks/local_maxima.py``: 200,000
        rows, K=8, D=4, overlapping): 1 of 4 single default starts (``rng``
        0-3) reached the best maximum, 0.037 nats per row above the next
        (scikit-learn's ``GaussianMixture``: 0 of 8 single starts);
        ``n_init=4`` reached it for 3 of the 4, ``split_n_merge=3`` from each of
        the 3 single starts that missed it.""",
        cli=Cli(("--n-init", "--restarts"), "int",
                help="Fit from this many starts (--restarts is an alias); keep the "
                     "highest likelihood."))
    callback_timeout: float | None = _option(
        None, (NONE, Interval(float, 0, low_open=True)), """
        Seconds one call of ``sel_callback``, ``covar_callback`` or
        ``projection_callback`` may take;
        past that the fit stops with a ``CallbackError`` naming the callback
        (default: no limit).""",
        cli=Cli(("--callback-timeout",), "float", metavar="SECONDS"),
        expected="None or a finite number of seconds > 0")
    prefit: bool = _option(
        False, (BOOL,), """
        With ``sel_callback``: every start is first fitted without the selection
        (and its imputation), then with it from that result - pyGMMis's recipe:
        the plain fit puts the components where the observed rows are and the
        imputation then extends them into the unobserved region, where from a
        random start the weakly constrained unobserved volume can attract
        runaway components. Ignored without ``sel_callback``.""",
        cli=Cli(("--prefit",), "flag",
                help="With --selection: start each truncated fit from a fit without it."),
        problem=True)
    stepwise: int = _option(
        0, (Interval(int, 0, 1000),), """
        Passes of stepwise (online) EM before batch EM (docs/design.md §1.7): the
        blocks in a seeded random order, one block per worker thread per group,
        an M-step after every group on running statistics blended with the step
        size ``eta_t = ((t0 + 1) / (t + t0 + 1))**alpha``, alpha = 1, t0 = 20
        (chosen by measurement: 2 passes then one batch E-step ended 4e-4 nats
        per row below the batch answer on 10^6 rows, K=20, where the former
        ``(t + 1)**-0.6`` ended 3.4e-3 below and batch EM needed 14 passes);
        batch EM then polishes and decides convergence. Stepwise EM gains with
        the number of groups a pass (blocks / worker threads; aim for >= 50).
        0: batch EM only. The group size is fixed at the start (kept on
        resume).""",
        cli=Cli(("--stepwise",), "int", metavar="PASSES",
                help="Passes of stepwise (online) EM over groups of blocks before batch "
                     "EM (large catalogs)."),
        problem=True)
    progress: bool = _option(
        False, (BOOL,), """
        Show progress on stderr: a header per start, one line per iteration
        (iteration, mean log-likelihood per row, its change, N_orig, seconds)
        and a one-line summary per start.""",
        cli=Cli(("--progress/--no-progress",), "toggle", default=None,
                help="Progress lines on stderr [default: when stderr is a terminal]."))

    def __post_init__(self):
        for f in dataclasses.fields(self):
            validate_option(f.name, getattr(self, f.name), f.metadata["constraints"],
                            f.metadata["expected"], f.metadata["error"])

    # ---------------------------------------------------------------- table

    @classmethod
    def create(cls, options: "FitOptions | None" = None, **kwargs) -> "FitOptions":
        """Options from a base (or the defaults) and keyword changes, validated.

        Raises
        ------
        InputTypeError
            An unknown option name.
        """
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            raise InputTypeError(f"unexpected option(s) {unknown}; the fit options are "
                                 f"{list(cls.names())}.")
        if options is None:
            return cls(**kwargs)
        if not isinstance(options, cls):
            raise InputTypeError(f"options: expected a daskgmmis.FitOptions; found "
                                 f"{type(options).__name__}.")
        return dataclasses.replace(options, **kwargs) if kwargs else options

    def replace(self, **changes) -> "FitOptions":
        """A validated copy with ``changes``."""
        return self.create(self, **changes)

    @classmethod
    def names(cls) -> tuple:
        """Option names in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict:
        """``{name: default}``."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    def as_dict(self) -> dict:
        """``{name: value}`` (shallow: callbacks and objects as they are)."""
        return {name: getattr(self, name) for name in self.names()}

    def report(self) -> dict:
        """The options as JSON-able values (for fit reports): callbacks by name,
        the background as its dict, the client by its scheduler address."""
        out = {}
        for name, value in self.as_dict().items():
            if value is None or isinstance(value, (bool, int, float, str)):
                out[name] = value
            elif isinstance(value, (np.integer, np.floating, np.bool_)):
                out[name] = value.item()
            elif isinstance(value, Background):
                out[name] = value.to_dict()
            elif isinstance(value, os.PathLike):
                out[name] = os.fspath(value)
            elif name == "frozen":
                out[name] = ({k: np.asarray(v).tolist() for k, v in value.items()}
                             if isinstance(value, dict) else np.asarray(value).tolist())
            elif name == "client":
                out[name] = getattr(getattr(value, "scheduler", None), "address", repr(value))
            elif callable(value):
                out[name] = callable_name(value)
            else:                       # a Generator or SeedSequence seed
                out[name] = repr(value)
        return out

    @classmethod
    def numpydoc(cls, indent: int = 4) -> str:
        """The options' "Parameters" entries (numpydoc), indented by ``indent``."""
        pad = " " * indent
        lines = []
        for f in dataclasses.fields(cls):
            lines.append(f"{pad}{f.name} : {_type_text(f)}, default {f.default!r}")
            lines.extend(textwrap.wrap(f.metadata["doc"], 84 - indent,
                                       initial_indent=pad + "    ",
                                       subsequent_indent=pad + "    ",
                                       break_on_hyphens=False))
        return "\n".join(lines)

    @classmethod
    def signature_parameters(cls) -> list:
        """Keyword-only :class:`inspect.Parameter` objects, one per option."""
        return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                  annotation=f.type) for f in dataclasses.fields(cls)]


def option_fields() -> tuple:
    """The :class:`dataclasses.Field` of every option (metadata: constraints, doc,
    cli, python_only, problem)."""
    return dataclasses.fields(FitOptions)


def _type_text(f) -> str:
    return " or ".join(str(c) for c in f.metadata["constraints"])


def callable_name(cb):
    """A callback as JSON: its ``to_dict()`` (built-in selections) or module.qualname."""
    if cb is None:
        return None
    if hasattr(cb, "to_dict"):
        return cb.to_dict()
    return f"{getattr(cb, '__module__', '?')}.{getattr(cb, '__qualname__', type(cb).__name__)}"


def cli_help(f) -> str:
    """Help text of an option on the command line: its own, else the doc's first sentence."""
    cli = f.metadata["cli"]
    if cli is not None and cli.help:
        return cli.help
    doc = " ".join(f.metadata["doc"].split())
    doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc).replace("``", "")   # rst to text
    end = re.search(r"(?<!\bal)(?<!\be\.g)\. ", doc)
    return doc if end is None else doc[:end.start() + 1]
