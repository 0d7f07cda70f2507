"""Selection functions and the validation of user callbacks."""

import json
import math
import pickle
import threading

import cloudpickle
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from daskgmmis import selection as S
from daskgmmis.errors import CallbackError, InputError, InputTypeError

D = 3
finite = st.floats(-10, 10, allow_nan=False)
coord_value = st.one_of(finite, finite, finite, st.just(np.nan))  # ~1/4 missing
coords_st = st.integers(0, 40).flatmap(
    lambda n: arrays(np.float64, (n, D), elements=coord_value))


@st.composite
def boxes(draw):
    lo = draw(st.lists(st.one_of(st.none(), finite), min_size=D, max_size=D))
    width = draw(st.lists(st.floats(0.01, 10), min_size=D, max_size=D))
    hi = [None if draw(st.booleans()) and draw(st.booleans()) else
          (0.0 if lo_j is None else lo_j) + w for lo_j, w in zip(lo, width)]
    return S.Box(lo, hi)


spheres = st.builds(S.Sphere, st.lists(finite, min_size=D, max_size=D),
                    st.floats(0.01, 10))
sigmoids = st.builds(S.Sigmoid, st.integers(0, D - 1), finite, st.floats(0.01, 5),
                     st.sampled_from([1, -1]), st.sampled_from(["logistic", "normal"]))
leaves = st.one_of(boxes(), spheres, sigmoids)
selections = st.recursive(
    leaves, lambda inner: st.one_of(
        st.builds(S.Complement, inner),
        st.lists(inner, min_size=1, max_size=3).map(lambda s: S.And(*s)),
        st.lists(inner, min_size=1, max_size=3).map(lambda s: S.Or(*s))),
    max_leaves=5)


def brute(sel, x):
    """Row-by-row Python reference of every selection's documented formula."""
    out = []
    for row in x:
        if isinstance(sel, S.Box):
            v = all(math.isnan(c) or lo <= c <= hi
                    for c, lo, hi in zip(row, sel.lower, sel.upper))
        elif isinstance(sel, S.Sphere):
            d2 = sum((c - m) ** 2 for c, m in zip(row, sel.center) if not math.isnan(c))
            v = d2 <= sel.radius ** 2
        elif isinstance(sel, S.Sigmoid):
            c = row[sel.dim]
            t = sel.direction * (c - sel.threshold) / sel.width
            v = 1.0 if math.isnan(c) else (
                (1 / (1 + math.exp(-t)) if t >= 0 else math.exp(t) / (1 + math.exp(t)))
                if sel.profile == "logistic"
                else 0.5 * math.erfc(-t / math.sqrt(2)))
        elif isinstance(sel, S.Complement):
            v = 1 - brute(sel.sel, row[None])[0]
        elif isinstance(sel, S.And):
            v = np.prod([brute(s, row[None])[0] for s in sel.sels])
        else:
            v = 1 - np.prod([1 - brute(s, row[None])[0] for s in sel.sels])
        out.append(float(v))
    return np.array(out)


@settings(max_examples=150, deadline=None)
@given(selections, coords_st)
def test_values_match_brute_force(sel, x):
    got = sel(x)
    assert got.shape == (len(x),) and got.dtype == np.float64
    assert np.all((got >= 0) & (got <= 1))
    np.testing.assert_allclose(got, brute(sel, x), rtol=1e-12, atol=1e-14)


@settings(max_examples=60, deadline=None)
@given(selections, coords_st)
def test_dict_json_and_pickle_round_trips(sel, x):
    d = json.loads(json.dumps(sel.to_dict(), allow_nan=False))  # strict JSON: no Infinity
    rebuilt = S.selection_from_dict(d)
    assert rebuilt == sel and hash(rebuilt) == hash(sel)
    assert repr(rebuilt) == repr(sel)
    for restored in (pickle.loads(pickle.dumps(sel)), cloudpickle.loads(cloudpickle.dumps(sel))):
        np.testing.assert_array_equal(restored(x), sel(x))


@settings(max_examples=60, deadline=None)
@given(leaves, leaves, coords_st)
def test_operators_and_de_morgan(a, b, x):
    assert (~a) == S.Complement(a) and (a & b) == S.And(a, b) and (a | b) == S.Or(a, b)
    assert ~~a is a
    np.testing.assert_allclose((~(a | b))(x), (~a & ~b)(x), atol=1e-12)
    np.testing.assert_allclose((a | b)(x), a(x) + b(x) - a(x) * b(x), atol=1e-12)
    assert len((a & b & a).sels) == 3  # nested And flattened


def test_box_open_sides_and_closed_bounds():
    box = S.Box([0, None, -np.inf], [1, 2, None])
    assert box.lower.tolist() == [0, -np.inf, -np.inf] and box.upper.tolist() == [1, 2, np.inf]
    x = np.array([[0, -1e300, -1e300], [1, 2, 5], [1.0001, 0, 0], [0.5, 2.1, 0],
                  [np.nan, np.nan, np.nan]])
    np.testing.assert_array_equal(box(x), [1, 1, 0, 0, 1])
    assert S.Box(upper=[1.0])(np.array([[-1e9], [2.0]])).tolist() == [1, 0]
    assert box.to_dict() == {"type": "box", "lower": [0.0, None, None],
                             "upper": [1.0, 2.0, None]}


def test_sphere_and_sigmoid_values():
    sph = S.Sphere([1.0, 1.0], 2.0)
    x = np.array([[1, 3], [1, 3.0001], [np.nan, 2.5], [np.nan, 3.5]])
    np.testing.assert_array_equal(sph(x), [1, 0, 1, 0])
    sig = S.Sigmoid(1, threshold=20.0, width=0.5, direction=-1)  # a faint-end limit
    v = sig(np.array([[0, 20.0], [0, 19.0], [0, 21.0], [0, np.nan]]))
    np.testing.assert_allclose(v, [0.5, 1 / (1 + np.exp(-2)), 1 / (1 + np.exp(2)), 1.0])
    normal = S.Sigmoid(0, 0.0, 2.0, profile="normal")
    np.testing.assert_allclose(normal(np.array([[2.0], [-2.0]])), [0.8413447460685429,
                                                                  0.15865525393145707])
    assert np.isfinite(sig(np.array([[0, 1e308], [0, -1e308]]))).all()  # no overflow


def test_plain_callables_combine_and_are_validated():
    def upper_half(x):
        return x[:, 1] > 0

    sel = S.Box([-1, -1], [1, 1]) & upper_half
    x = np.array([[0, 0.5], [0, -0.5], [2, 0.5]])
    np.testing.assert_array_equal(sel(x), [1, 0, 0])
    np.testing.assert_array_equal((upper_half | S.Box([-1, -1], [1, 1]))(x), [1, 1, 1])
    with pytest.raises(InputTypeError, match="no JSON description"):
        sel.to_dict()
    with pytest.raises(CallbackError, match="outside \\[0, 1\\]"):
        (S.Box([0], [1]) & (lambda x: 2.0 * np.ones(len(x))))(np.zeros((2, 1)))


@pytest.mark.parametrize("build, words", [
    (lambda: S.Box(None, None), "at least one"),
    (lambda: S.Box([0, 1], [1, 0]), "lower < upper"),
    (lambda: S.Box([0, 0], [1, 1, 1]), "shape"),
    (lambda: S.Box([np.nan], [1]), "NaN is not a bound"),
    (lambda: S.Box(["a"], [1]), "numbers or None"),
    (lambda: S.Sphere([0, np.inf], 1), "finite"),
    (lambda: S.Sphere([0, 0], 0), "> 0"),
    (lambda: S.Sigmoid(-1, 0, 1), "dim"),
    (lambda: S.Sigmoid(0, 0, 1, direction=2), "direction"),
    (lambda: S.Sigmoid(0, 0, 1, profile="step"), "profile"),
    (lambda: S.And(), "at least one"),
    (lambda: S.selection_from_dict({"type": "cube"}), "expected one of"),
    (lambda: S.selection_from_dict({"type": "sphere", "center": [0]}), "missing keys"),
    (lambda: S.selection_from_dict({"type": "box", "lower": [0], "hi": [1]}), "unexpected"),
])
def test_construction_errors(build, words):
    with pytest.raises((InputError, InputTypeError), match=words):
        build()


def test_coords_shape_checked():
    with pytest.raises(InputError, match=r"\(n, 2\)"):
        S.Box([0, 0], [1, 1])(np.zeros((4, 3)))
    with pytest.raises(InputError, match="dimension 2"):
        S.Sigmoid(2, 0, 1)(np.zeros((4, 2)))
    with pytest.raises(InputTypeError, match="numeric"):
        S.Sphere([0], 1)(np.array([["a"]]))


# ------------------------------------------------------------ evaluate_selection

X = np.random.default_rng(0).normal(size=(5, 2))


def test_evaluate_selection_accepts_bool_lists_and_ints():
    out = S.evaluate_selection(lambda x: x[:, 0] > 0, X)
    assert out.dtype == np.float64 and set(out) <= {0.0, 1.0}
    np.testing.assert_array_equal(out, (X[:, 0] > 0).astype(float))
    np.testing.assert_array_equal(S.evaluate_selection(lambda x: [1] * len(x), X), np.ones(5))


@pytest.mark.parametrize("callback, words", [
    (lambda x: np.ones((len(x), 1)), r"shape \(5,\).*found shape \(5, 1\)"),
    (lambda x: 0.5, r"found shape \(\)"),
    (lambda x: np.array(["a"] * len(x)), "found dtype <U1"),
    (lambda x: np.full(len(x), 0.5 + 0.5j), "found dtype complex128"),
    (lambda x: [None] * len(x), "found dtype object"),
    (lambda x: np.where(np.arange(len(x)) == 3, np.nan, 0.5), "1 NaN values \\(first at row 3\\)"),
    (lambda x: np.linspace(-0.5, 0.5, len(x)), "outside \\[0, 1\\] \\(row 0 is -0.5"),
    (lambda x: np.full(len(x), np.inf), "outside \\[0, 1\\]"),
])
def test_evaluate_selection_rejects_bad_output(callback, words):
    with pytest.raises(CallbackError, match=words) as info:
        S.evaluate_selection(callback, X, where="my_sel")
    assert str(info.value).startswith("my_sel")


def test_evaluate_selection_chains_callback_exceptions():
    def broken(x):
        raise KeyError("flux")

    with pytest.raises(CallbackError, match="sel_callback raised KeyError") as info:
        S.evaluate_selection(broken, X)
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(InputTypeError, match="callable"):
        S.evaluate_selection("box", X)


# ------------------------------------------------------- evaluate_covar_callback

SH = np.array([[2.0, 0.5], [0.5, 1.0]])


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_covar_callback_kinds(n):
    x = np.random.default_rng(1).normal(size=(n, 2))
    kind, a = S.evaluate_covar_callback(lambda v: SH, x)
    assert kind == "shared" and a.shape == (2, 2)  # also for n == D (probe call)
    kind, a = S.evaluate_covar_callback(lambda v: v ** 2 + 0.1, x)
    assert kind == "diag" and a.shape == (n, 2)   # also for n == D
    kind, a = S.evaluate_covar_callback(lambda v: np.broadcast_to(SH, (len(v), 2, 2)), x)
    assert kind == "full" and a.shape == (n, 2, 2) and a.dtype == np.float64


def test_covar_callback_allows_psd_and_integer_output():
    kind, a = S.evaluate_covar_callback(lambda v: np.zeros((len(v), 2, 2), dtype=int), X)
    assert kind == "full" and a.dtype == np.float64


@pytest.mark.parametrize("callback, words", [
    (lambda v: np.ones((len(v), 3)), r"found shape \(5, 3\)"),
    (lambda v: np.ones(len(v)), r"found shape \(5,\)"),
    (lambda v: np.array([["a", "b"]] * len(v)), "dtype <U1"),
    (lambda v: np.where(np.arange(len(v))[:, None] == 2, np.inf, np.ones((len(v), 2))),
     "row 2, column 0 is inf; expected a finite variance"),
    (lambda v: -np.ones((len(v), 2)), "negative variance"),
    (lambda v: np.broadcast_to([[1.0, 0.5], [0.0, 1.0]], (len(v), 2, 2)), "not symmetric"),
    (lambda v: np.broadcast_to([[1.0, 2.0], [2.0, 1.0]], (len(v), 2, 2)),
     "not positive semi-definite"),
    (lambda v: np.array([[1.0, np.nan], [np.nan, 1.0]]), "shared matrix.*expected finite"),
])
def test_covar_callback_rejects_bad_output(callback, words):
    with pytest.raises(CallbackError, match=words):
        S.evaluate_covar_callback(callback, X)


def test_covar_callback_inconsistent_shapes_and_raising():
    x = np.zeros((2, 2))
    with pytest.raises(CallbackError, match=r"for 1 row"):
        S.evaluate_covar_callback(lambda v: np.ones((2, 2)) if len(v) == 2 else np.ones(3), x)

    def broken(v):
        raise ZeroDivisionError("bad")

    with pytest.raises(CallbackError, match="noise_fn raised ZeroDivisionError") as info:
        S.evaluate_covar_callback(broken, x, where="noise_fn")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_check_picklable():
    S.check_picklable(lambda x: x[:, 0] > 0, "sel_callback")  # cloudpickle handles lambdas
    S.check_picklable(S.Box([0], [1]) | S.Sphere([0], 2), "sel_callback")
    lock = threading.Lock()

    def locked(x):
        with lock:
            return np.ones(len(x))

    with pytest.raises(CallbackError, match="sel_callback: .*cannot be serialized") as info:
        S.check_picklable(locked, "sel_callback")
    assert info.value.__cause__ is not None
