"""Selection functions and the checks applied to user callbacks.

A selection function ``Omega(coords) -> (n,)`` gives, for each row of noisy
coordinates ``coords`` (shape ``(n, D)``, data units), the probability in
``[0, 1]`` that a row at that position made it into the catalog. Any callable
with that contract works as ``sel_callback``; the classes here are the common
shapes, picklable (plain attributes, no closures) so they travel to dask workers,
combinable with ``~``, ``&`` and ``|``, and describable as plain JSON::

    sel = Box([0, 0], [10, None]) & ~Sphere([5, 5], 1.0)
    sel.to_dict()        # {"type": "and", "selections": [...]}
    selection_from_dict(sel.to_dict())(coords)

Missing coordinates (NaN) follow one rule: **a leaf selection ignores the
dimensions a row does not have**, i.e. a cut on a missing feature is passed
(the catalog could not have cut on a value it did not measure). ``Box`` checks
only the observed dimensions, ``Sphere`` measures the distance in the observed
dimensions only, ``Sigmoid`` returns 1 when its dimension is missing.
Combinators are plain arithmetic on their children's values
(``Complement = 1 - Omega``, ``And = product``, ``Or = 1 - prod(1 - Omega)``), so
``~Box(...)`` gives 0 to a row whose observed dimensions are all inside the box.

The helpers :func:`evaluate_selection`, :func:`evaluate_covar_callback`,
:func:`evaluate_projection_callback` and :func:`check_picklable` validate user callbacks for the fit and for
:func:`daskgmmis.simulate.draw`, raising :class:`~daskgmmis.errors.CallbackError`
with the callback's name, what was expected and what was found.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable

import numpy as np
from scipy.special import expit, ndtr

from .errors import CallbackError, InputError, InputTypeError
from .noise import kind_of, noise_class

__all__ = [
    "Selection",
    "Box",
    "Sphere",
    "Sigmoid",
    "Complement",
    "And",
    "Or",
    "selection_from_dict",
    "evaluate_selection",
    "evaluate_covar_callback",
    "evaluate_projection_callback",
    "check_picklable",
]


def _as_coords(coords, D: int | None, who: str) -> np.ndarray:
    """``coords`` as a float64 (n, D) array; ``D=None`` accepts any width."""
    x = np.asarray(coords)
    if x.ndim != 2 or (D is not None and x.shape[1] != D):
        want = "(n, D)" if D is None else f"(n, {D})"
        raise InputError(f"{who}: expected coords of shape {want}; found {x.shape}.")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InputTypeError(f"{who}: expected numeric coords; found dtype {x.dtype}.")
    return x.astype(np.float64, copy=False)


def _finite_vector(v, name: str, D: int | None = None) -> np.ndarray:
    try:
        a = np.atleast_1d(np.asarray(v, dtype=np.float64))
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected numbers; found {v!r}.") from None
    if a.ndim != 1 or (D is not None and a.shape[0] != D):
        raise InputError(f"{name}: expected shape ({'D' if D is None else D},); found {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: expected finite values; found {a.tolist()}.")
    return a


def _finite_scalar(v, name: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"{name}: expected a number; found {v!r}.")
    v = float(v)
    if not math.isfinite(v) or (positive and v <= 0):
        raise InputError(f"{name}: expected a finite number{' > 0' if positive else ''}; "
                         f"found {v}.")
    return v


def _json_number(v: float):
    """JSON has no infinity: open sides of a box are written as null."""
    return None if math.isinf(v) else float(v)


class Selection(abc.ABC):
    """Base class of the built-in selection functions.

    Subclasses implement ``__call__(coords) -> (n,)`` float64 in ``[0, 1]``,
    ``to_dict()`` and ``_key()`` (a hashable tuple of the defining values).
    The operators ``~a``, ``a & b`` and ``a | b`` build :class:`Complement`,
    :class:`And` and :class:`Or`; the other operand of ``&``/``|`` may be any
    selection callable.
    """

    @abc.abstractmethod
    def __call__(self, coords) -> np.ndarray:
        """``Omega`` at ``coords`` (n, D): shape (n,), float64 in ``[0, 1]``."""

    @abc.abstractmethod
    def to_dict(self) -> dict:
        """Plain-JSON description; :func:`selection_from_dict` inverts it."""

    @abc.abstractmethod
    def _key(self) -> tuple:
        """Hashable defining values (equality and hashing)."""

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def __invert__(self) -> "Selection":
        return Complement(self)

    def __and__(self, other) -> "Selection":
        return And(self, other)

    def __rand__(self, other) -> "Selection":
        return And(other, self)

    def __or__(self, other) -> "Selection":
        return Or(self, other)

    def __ror__(self, other) -> "Selection":
        return Or(other, self)


def _box_side(b, open_value: float, name: str) -> np.ndarray | None:
    """One side of a Box as a (D,) float array, None entries replaced by +-inf."""
    if b is None:
        return None
    obj = np.atleast_1d(np.asarray(b, dtype=object))
    if obj.ndim != 1:
        raise InputError(f"Box {name}: expected shape (D,); found {obj.shape}.")
    try:
        a = np.array([open_value if v is None else v for v in obj], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"Box {name}: expected numbers or None; found {b!r}.") from None
    if np.isnan(a).any():
        raise InputError(f"Box {name}: NaN is not a bound; use None or +-inf for an open "
                         f"side. Found {a.tolist()}.")
    return a


class Box(Selection):
    """Axis-aligned box: ``Omega = 1`` inside (bounds included), 0 outside.

    Parameters
    ----------
    lower, upper : array_like, shape (D,), or None
        Corners of the box in data units. ``None`` entries or ``-inf``/``+inf``
        leave that side open; ``lower=None`` (or ``upper=None``) opens every lower
        (upper) side. Where both sides are set, ``lower < upper``.

    Notes
    -----
    A missing (NaN) coordinate passes the cut in its dimension: a row is inside
    when every *observed* coordinate is within its bounds.
    """

    def __init__(self, lower=None, upper=None):
        if lower is None and upper is None:
            raise InputError("Box: give at least one of lower, upper (shape (D,)).")
        lo, hi = _box_side(lower, -np.inf, "lower"), _box_side(upper, np.inf, "upper")
        lo = np.full_like(hi, -np.inf) if lo is None else lo
        hi = np.full_like(lo, np.inf) if hi is None else hi
        if lo.shape != hi.shape:
            raise InputError(f"Box: lower and upper must both have shape (D,); found "
                             f"{lo.shape} and {hi.shape}.")
        if not np.all(lo < hi):
            j = int(np.argmax(~(lo < hi)))
            raise InputError(f"Box: expected lower < upper in every dimension; dimension "
                             f"{j} has lower={lo[j]}, upper={hi[j]}.")
        self.lower, self.upper = lo, hi

    @property
    def D(self) -> int:
        """Number of dimensions."""
        return self.lower.shape[0]

    def __call__(self, coords) -> np.ndarray:
        """Evaluate ``Omega``.

        Parameters
        ----------
        coords : array_like, shape (n, D)
            Data units; NaN marks a missing coordinate (passes its cut).

        Returns
        -------
        ndarray, shape (n,), float64
            1.0 inside the box, 0.0 outside.
        """
        x = _as_coords(coords, self.D, "Box")
        # NaN compares False both ways, so "not outside" lets missing values pass
        outside = (x < self.lower) | (x > self.upper)
        return (~outside.any(axis=1)).astype(np.float64)

    def to_dict(self) -> dict:
        """``{"type": "box", "lower": [...], "upper": [...]}`` (null = open side)."""
        return {"type": "box", "lower": [_json_number(v) for v in self.lower],
                "upper": [_json_number(v) for v in self.upper]}

    def _key(self) -> tuple:
        return tuple(self.lower.tolist()), tuple(self.upper.tolist())

    def __repr__(self) -> str:
        return f"Box(lower={self.lower.tolist()}, upper={self.upper.tolist()})"


class Sphere(Selection):
    """Ball: ``Omega = 1`` where ``|x - center| <= radius``, 0 outside.

    Parameters
    ----------
    center : array_like, shape (D,)
        Data units, finite.
    radius : float
        Data units, finite and > 0.

    Notes
    -----
    With missing (NaN) coordinates the distance is measured in the observed
    dimensions only (the row's projection against the ball's projection).
    """

    def __init__(self, center, radius: float):
        self.center = _finite_vector(center, "Sphere center")
        self.radius = _finite_scalar(radius, "Sphere radius", positive=True)

    @property
    def D(self) -> int:
        """Number of dimensions."""
        return self.center.shape[0]

    def __call__(self, coords) -> np.ndarray:
        """Evaluate ``Omega``.

        Parameters
        ----------
        coords : array_like, shape (n, D)
            Data units; NaN marks a missing coordinate (left out of the distance).

        Returns
        -------
        ndarray, shape (n,), float64
            1.0 inside the ball, 0.0 outside.
        """
        x = _as_coords(coords, self.D, "Sphere")
        d2 = np.nansum((x - self.center) ** 2, axis=1)
        return (d2 <= self.radius ** 2).astype(np.float64)

    def to_dict(self) -> dict:
        """``{"type": "sphere", "center": [...], "radius": r}``."""
        return {"type": "sphere", "center": self.center.tolist(), "radius": self.radius}

    def _key(self) -> tuple:
        return tuple(self.center.tolist()), self.radius

    def __repr__(self) -> str:
        return f"Sphere(center={self.center.tolist()}, radius={self.radius})"


class Sigmoid(Selection):
    """Smooth (probabilistic) edge along one dimension.

    ``Omega(x) = F(direction * (x[dim] - threshold) / width)`` with ``F`` the
    logistic function (``profile="logistic"``) or the standard normal CDF
    (``profile="normal"``). ``Omega = 1/2`` at the threshold; ``direction=+1``
    keeps rows above it (e.g. a minimum flux), ``-1`` rows below it (e.g. a
    limiting magnitude). The normal profile is the completeness of a hard cut at
    ``threshold`` on values with Gaussian scatter of standard deviation ``width``.

    Parameters
    ----------
    dim : int
        Index of the dimension cut on, ``0 <= dim``; coords need ``D > dim``.
    threshold : float
        Position of the edge, data units.
    width : float
        Scale of the edge, data units, > 0.
    direction : {1, -1}
        Side that is kept.
    profile : {"logistic", "normal"}
        Shape of the edge.

    Notes
    -----
    A row whose coordinate ``dim`` is missing (NaN) gets ``Omega = 1``.
    """

    PROFILES = ("logistic", "normal")

    def __init__(self, dim: int, threshold: float, width: float, direction: int = 1,
                 profile: str = "logistic"):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 0:
            raise InputError(f"Sigmoid dim: expected an integer >= 0; found {dim!r}.")
        if direction not in (1, -1) or isinstance(direction, bool):
            raise InputError(f"Sigmoid direction: expected +1 or -1; found {direction!r}.")
        if profile not in self.PROFILES:
            raise InputError(f"Sigmoid profile: expected one of {self.PROFILES}; found "
                             f"{profile!r}.")
        self.dim = int(dim)
        self.threshold = _finite_scalar(threshold, "Sigmoid threshold")
        self.width = _finite_scalar(width, "Sigmoid width", positive=True)
        self.direction = int(direction)
        self.profile = profile

    def __call__(self, coords) -> np.ndarray:
        """Evaluate ``Omega``.

        Parameters
        ----------
        coords : array_like, shape (n, D) with ``D > dim``
            Data units; NaN in column ``dim`` gives 1.

        Returns
        -------
        ndarray, shape (n,), float64
            Values in ``[0, 1]``.
        """
        x = _as_coords(coords, None, "Sigmoid")
        if x.shape[1] <= self.dim:
            raise InputError(f"Sigmoid: cuts on dimension {self.dim}; coords have only "
                             f"{x.shape[1]} columns.")
        with np.errstate(over="ignore"):  # t = +-inf is fine: F(+-inf) = 1 or 0
            t = self.direction * (x[:, self.dim] - self.threshold) / self.width
        omega = expit(t) if self.profile == "logistic" else ndtr(t)
        return np.where(np.isnan(t), 1.0, omega)

    def to_dict(self) -> dict:
        """``{"type": "sigmoid", "dim", "threshold", "width", "direction", "profile"}``."""
        return {"type": "sigmoid", "dim": self.dim, "threshold": self.threshold,
                "width": self.width, "direction": self.direction, "profile": self.profile}

    def _key(self) -> tuple:
        return self.dim, self.threshold, self.width, self.direction, self.profile

    def __repr__(self) -> str:
        return (f"Sigmoid(dim={self.dim}, threshold={self.threshold}, width={self.width}, "
                f"direction={self.direction}, profile={self.profile!r})")


def _check_child(sel, who: str):
    if not callable(sel):
        raise InputTypeError(f"{who}: expected selection callables; found {sel!r}.")
    return sel


def _child_dict(sel, who: str) -> dict:
    if not isinstance(sel, Selection):
        raise InputTypeError(f"{who}.to_dict: {sel!r} is a plain callable, which has no "
                             f"JSON description; build it from daskgmmis.selection classes.")
    return sel.to_dict()


class Complement(Selection):
    """``Omega = 1 - sel(coords)``: rows the wrapped selection would reject.

    Parameters
    ----------
    sel : callable
        A selection function (a :class:`Selection` or any callable honouring the
        selection contract; the latter is validated on every call).
    """

    def __init__(self, sel):
        self.sel = _check_child(sel, "Complement")

    def __call__(self, coords) -> np.ndarray:
        """Evaluate ``1 - sel(coords)``; shape (n,), float64 in ``[0, 1]``."""
        return 1.0 - evaluate_selection(self.sel, coords, where=repr(self.sel))

    def __invert__(self):
        # exact (no 1 - (1 - x) rounding) and keeps reprs short
        return self.sel

    def to_dict(self) -> dict:
        """``{"type": "complement", "selection": {...}}``."""
        return {"type": "complement", "selection": _child_dict(self.sel, "Complement")}

    def _key(self) -> tuple:
        return (self.sel,)

    def __repr__(self) -> str:
        return f"Complement({self.sel!r})"


class _Combination(Selection):
    """Shared code of :class:`And` and :class:`Or` (flattens nested same-type nodes)."""

    _type = ""

    def __init__(self, *sels):
        name = type(self).__name__
        if not sels:
            raise InputError(f"{name}: expected at least one selection.")
        flat = []
        for s in sels:
            flat.extend(s.sels if type(s) is type(self) else (_check_child(s, name),))
        self.sels = tuple(flat)

    def _values(self, coords) -> np.ndarray:
        return np.stack([evaluate_selection(s, coords, where=repr(s)) for s in self.sels])

    def to_dict(self) -> dict:
        """``{"type": "and"|"or", "selections": [{...}, ...]}``."""
        name = type(self).__name__
        return {"type": self._type, "selections": [_child_dict(s, name) for s in self.sels]}

    def _key(self) -> tuple:
        return self.sels

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.sels))})"


class And(_Combination):
    """Intersection: ``Omega = prod_j sel_j(coords)`` (independent selections).

    Parameters
    ----------
    *sels : callable
        One or more selection functions; nested ``And`` nodes are flattened.
    """

    _type = "and"

    def __call__(self, coords) -> np.ndarray:
        """Evaluate the product; shape (n,), float64 in ``[0, 1]``."""
        return self._values(coords).prod(axis=0)


class Or(_Combination):
    """Union: ``Omega = 1 - prod_j (1 - sel_j(coords))`` (independent selections).

    Parameters
    ----------
    *sels : callable
        One or more selection functions; nested ``Or`` nodes are flattened.
    """

    _type = "or"

    def __call__(self, coords) -> np.ndarray:
        """Evaluate the union; shape (n,), float64 in ``[0, 1]``."""
        return 1.0 - (1.0 - self._values(coords)).prod(axis=0)


_DICT_KEYS = {
    "box": ({"type"}, {"lower", "upper"}),
    "sphere": ({"type", "center", "radius"}, set()),
    "sigmoid": ({"type", "dim", "threshold", "width"}, {"direction", "profile"}),
    "complement": ({"type", "selection"}, set()),
    "and": ({"type", "selections"}, set()),
    "or": ({"type", "selections"}, set()),
}


def selection_from_dict(d: dict) -> Selection:
    """Build a selection from its JSON description (inverse of ``to_dict``).

    Parameters
    ----------
    d : dict
        ``{"type": "box", "lower": [...], "upper": [...]}`` (null = open side),
        ``{"type": "sphere", "center": [...], "radius": r}``,
        ``{"type": "sigmoid", "dim": j, "threshold": t, "width": w,
        "direction": 1, "profile": "logistic"}``,
        ``{"type": "complement", "selection": {...}}``,
        ``{"type": "and" | "or", "selections": [{...}, ...]}``.

    Returns
    -------
    Selection

    Raises
    ------
    InputError
        Unknown type, missing or unexpected keys, or invalid values.
    """
    if not isinstance(d, dict):
        raise InputTypeError(f"selection: expected a dict with a 'type' key; found {d!r}.")
    kind = d.get("type")
    if kind not in _DICT_KEYS:
        raise InputError(f"selection type: expected one of {sorted(_DICT_KEYS)}; found {kind!r}.")
    required, optional = _DICT_KEYS[kind]
    missing, extra = required - d.keys(), d.keys() - required - optional
    if missing or extra:
        raise InputError(f"selection of type {kind!r}: missing keys {sorted(missing)}, "
                         f"unexpected keys {sorted(extra)}; expected {sorted(required)} "
                         f"plus optional {sorted(optional)}.")
    if kind == "box":
        return Box(d.get("lower"), d.get("upper"))
    if kind == "sphere":
        return Sphere(d["center"], d["radius"])
    if kind == "sigmoid":
        return Sigmoid(d["dim"], d["threshold"], d["width"], d.get("direction", 1),
                       d.get("profile", "logistic"))
    if kind == "complement":
        return Complement(selection_from_dict(d["selection"]))
    if not isinstance(d["selections"], (list, tuple)):
        raise InputError(f"selection of type {kind!r}: 'selections' must be a list; found "
                         f"{d['selections']!r}.")
    cls = And if kind == "and" else Or
    return cls(*(selection_from_dict(s) for s in d["selections"]))


# ------------------------------------------------------------ callback checks


def _call(callback: Callable, coords: np.ndarray, where: str):
    if not callable(callback):
        raise InputTypeError(f"{where}: expected a callable f(coords); found {callback!r}.")
    try:
        return callback(coords)
    except CallbackError:       # already names the callback (a time limit)
        raise
    except Exception as e:
        raise CallbackError(f"{where} raised {type(e).__name__} when called on coords of "
                            f"shape {coords.shape}: {e}") from e


def _as_numeric(out, where: str, kinds: str, expected: str) -> np.ndarray:
    try:
        arr = np.asarray(out)
    except Exception as e:  # ragged lists and the like
        raise CallbackError(f"{where}: expected {expected}; found an object numpy cannot "
                            f"convert ({type(e).__name__}: {e}).") from e
    if arr.dtype.kind not in kinds:
        raise CallbackError(f"{where}: expected {expected}; found dtype {arr.dtype} "
                            f"(type {type(out).__name__}).")
    return arr


def evaluate_selection(sel_callback: Callable, coords, *,
                       where: str = "sel_callback") -> np.ndarray:
    """Call a selection function and check what it returns.

    Parameters
    ----------
    sel_callback : callable
        ``Omega(coords (n, D)) -> (n,)`` probabilities; booleans are accepted.
    coords : array_like, shape (n, D)
        Positions to evaluate, data units.
    where : str
        Name of the callback in error messages.

    Returns
    -------
    ndarray, shape (n,), float64
        Values in ``[0, 1]``.

    Raises
    ------
    CallbackError
        The callback raised (the original exception is chained), or returned a
        wrong shape, non-numeric values, NaN, or values outside ``[0, 1]``.
    """
    x = np.asarray(coords)
    n = x.shape[0]
    expected = f"an array of shape ({n},) with probabilities in [0, 1] (or booleans)"
    arr = _as_numeric(_call(sel_callback, x, where), where, "biuf", expected)
    if arr.shape != (n,):
        raise CallbackError(f"{where}: expected {expected}; found shape {arr.shape}.")
    arr = arr.astype(np.float64, copy=False)
    nan = np.isnan(arr)
    if nan.any():
        raise CallbackError(f"{where}: expected {expected}; found {int(nan.sum())} NaN values "
                            f"(first at row {int(np.argmax(nan))}).")
    bad = (arr < 0) | (arr > 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise CallbackError(f"{where}: expected {expected}; found {int(bad.sum())} values "
                            f"outside [0, 1] (row {i} is {arr[i]}; range {arr.min()} .. "
                            f"{arr.max()}).")
    return arr


def evaluate_covar_callback(covar_callback: Callable, coords, *,
                            where: str = "covar_callback") -> tuple[str, np.ndarray]:
    """Call a noise-covariance callback and classify and check what it returns.

    Parameters
    ----------
    covar_callback : callable
        ``S(coords (n, D))`` returning full covariances ``(n, D, D)``, diagonal
        variances ``(n, D)`` or one shared ``(D, D)`` matrix, data units squared.
    coords : array_like, shape (n, D)
        Positions (usually the error-free ones) at which the noise is wanted.
    where : str
        Name of the callback in error messages.

    Returns
    -------
    kind : {"full", "diag", "shared"}
        As :func:`daskgmmis.kernels.noise_kind_of` names them.
    noise : ndarray, float64
        The callback's output, shape ``(n, D, D)``, ``(n, D)`` or ``(D, D)``.

    Raises
    ------
    CallbackError
        The callback raised (chained), or returned a wrong shape, non-numeric or
        non-finite values, negative variances, or non-symmetric / non positive
        semi-definite matrices.

    Notes
    -----
    With ``n == D`` a ``(D, D)`` output is ambiguous (shared matrix or one row of
    variances per row); the callback is then called once more on the first row
    alone: a ``(D, D)`` answer means shared, a ``(1, D)`` answer diagonal.
    Entries of the noise that belong to missing (NaN) coordinates are not checked.
    """
    x = np.asarray(coords, dtype=np.float64)
    n, D = x.shape
    expected = (f"noise covariances of shape ({n}, {D}, {D}) (full), ({n}, {D}) (diagonal "
                f"variances) or ({D}, {D}) (shared), numeric")
    arr = _as_numeric(_call(covar_callback, x, where), where, "iuf", expected)
    arr = arr.astype(np.float64, copy=False)
    try:
        kind = kind_of(arr, n, D)
    except InputError:
        raise CallbackError(f"{where}: expected {expected}; found shape {arr.shape}.") from None
    if n == D and arr.shape == (D, D) and D > 1:
        probe = _as_numeric(_call(covar_callback, x[:1], where), where, "iuf", expected)
        if probe.shape not in ((D, D), (1, D)):
            raise CallbackError(f"{where}: returned shape {arr.shape} for {n} rows but "
                                f"{probe.shape} for 1 row; expected (1, {D}) or ({D}, {D}).")
        kind = kind_of(probe, None, D)
    noise = noise_class(kind).from_array(arr)
    try:
        noise.validate(x, 0, name=f"{where} output" + ("" if noise.per_row
                                                       else " (shared matrix)"))
    except InputError as e:
        raise CallbackError(str(e)) from None
    return kind, arr


def evaluate_projection_callback(projection_callback: Callable, coords, d: int, *,
                                 where: str = "projection_callback") -> np.ndarray:
    """Call a projection callback and check what it returns.

    Parameters
    ----------
    projection_callback : callable
        ``R(t (n, D))`` returning the projection matrices of rows with true
        positions ``t``: per row ``(n, d, D)``, or one shared ``(d, D)`` matrix.
    coords : array_like, shape (n, D)
        True positions, model units.
    d : int
        Dimension of the data's space (the catalog's features).
    where : str
        Name of the callback in error messages.

    Returns
    -------
    ndarray, float64, shape (n, d, D) or (d, D)

    Raises
    ------
    CallbackError
        The callback raised (chained), or returned a wrong shape, non-numeric or
        non-finite values (a row observed in fewer dimensions than ``d`` has no
        meaning for a row that was never observed).
    """
    t = np.asarray(coords, dtype=np.float64)
    n, D = t.shape
    expected = f"projection matrices of shape ({n}, {d}, {D}) or ({d}, {D}), numeric"
    arr = _as_numeric(_call(projection_callback, t, where), where, "iuf", expected)
    if arr.shape not in ((n, d, D), (d, D)):
        raise CallbackError(f"{where}: expected {expected}; found shape {arr.shape}.")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        where_bad = np.argwhere(bad)[0]
        raise CallbackError(f"{where}: returned a non-finite entry {arr[tuple(where_bad)]} at "
                            f"index {tuple(int(i) for i in where_bad)}; expected finite "
                            f"matrices (every feature of an imputed row is observed).")
    return arr


def check_picklable(obj, name: str) -> None:
    """Check that ``obj`` can be shipped to dask workers (``cloudpickle.dumps``).

    Parameters
    ----------
    obj : object
        Usually a user callback.
    name : str
        Its argument name, for the message.

    Raises
    ------
    CallbackError
        Serialization failed; the message names the object and the reason.
    """
    import cloudpickle

    try:
        cloudpickle.dumps(obj)
    except Exception as e:
        raise CallbackError(
            f"{name}: {obj!r} cannot be serialized with cloudpickle to send it to dask "
            f"workers ({type(e).__name__}: {e}). Use a module-level function or a class "
            f"with plain attributes that holds no open files, locks, sockets or clients."
        ) from e
