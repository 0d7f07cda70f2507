"""The bad-input matrix: every public entry point refuses bad input loudly.

Each case is one row of the table in ``docs/bad-input.md``: an entry point, a bad
input, the exact exception class (from :mod:`daskgmmis.errors`, each also a
built-in ``ValueError``/``TypeError``/``OSError``...) and words its message must
contain - the argument, what was expected, what was found and, where there is
one, the fix. Catalog and model-file cases damage real files on disk; the CLI
cases run the ``daskgmmis`` command in-process.
"""

import glob
import io
import json
import os
import pickle
import shutil
import threading
import zipfile

import numpy as np
import pytest
import zarr

import daskgmmis as dg
from daskgmmis.model import _content_hash
from daskgmmis.errors import OutputError, OutputExistsError
from daskgmmis.selection import Box

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 2))
VAR = RNG.uniform(0.1, 1.0, size=(200, 2))
INSIDE = X[Box([-1, -1], [1, 1])(X) > 0]           # a truncated catalog (Box selection)


def model(K=2, D=2):
    g = dg.GMM(K, D)
    g.mean = np.arange(K * D, dtype=float).reshape(K, D)
    return g


def with_params(**params):
    g = model()
    for name, value in params.items():
        setattr(g, name, value)
    return g


def scaled_amp(g, factor):
    """``g`` with its amplitudes scaled (leaving room for a background's share)."""
    g.amp = g.amp * factor
    return g


def at(arr, index, value):
    """A copy of ``arr`` with one entry replaced."""
    out = np.array(arr, dtype=float)
    out[index] = value
    return out


def tiled(matrix, n=200):
    return np.tile(np.asarray(matrix, dtype=float), (n, 1, 1))


NOT_PD = [[1.0, 2.0], [2.0, 1.0]]            # symmetric, eigenvalues 3 and -1
ASYM = [[1.0, 0.5], [0.0, 1.0]]


class _Hang:
    """A callback that never returns (until the module's tests end)."""

    def __init__(self):
        self.release = threading.Event()

    def __call__(self, coords):
        self.release.wait()
        return np.ones(len(coords))


HANG = _Hang()


@pytest.fixture(scope="module", autouse=True)
def _release_hung_callbacks():
    yield
    HANG.release.set()      # the abandoned calls' threads end


def fit(*args, **kwargs):
    kwargs.setdefault("maxiter", 3)
    return dg.fit(*args, **kwargs)


# ---------------------------------------------------------------- the matrix
# (entry point, bad input, call, exception class, message words). ``call`` gets
# a scratch directory for the cases that need files.

CASES = [
    # -- dg.fit: types
    ("fit", "gmm is not a GMM", lambda d: fit("gmm", X),
     dg.InputTypeError, ["gmm", "expected a daskgmmis.GMM", "found str"]),
    ("fit", "data of strings", lambda d: fit(model(), X.astype(str)),
     dg.InputTypeError, ["data", "expected a numeric array", "<U"]),
    ("fit", "data of objects", lambda d: fit(model(), np.array([[1, None]] * 3, dtype=object)),
     dg.InputTypeError, ["data", "expected a numeric array", "object"]),
    ("fit", "complex data", lambda d: fit(model(), X.astype(complex)),
     dg.InputTypeError, ["data", "numeric", "complex128"]),
    ("fit", "boolean data", lambda d: fit(model(), X > 0),
     dg.InputTypeError, ["data", "numeric", "bool"]),
    ("fit", "data is None", lambda d: fit(model(), None),
     dg.InputTypeError, ["data", "expected a numeric array", "object"]),
    ("fit", "covar of strings", lambda d: fit(model(), X, "abc"),
     dg.InputTypeError, ["covar", "expected a numeric array", "<U"]),
    ("fit", "complex covar", lambda d: fit(model(), X, VAR.astype(complex)),
     dg.InputTypeError, ["covar", "numeric", "complex"]),
    ("fit", "non-callable sel_callback", lambda d: fit(model(), X, sel_callback=3),
     dg.InputTypeError, ["sel_callback", "expected a callable", "found int"]),
    ("fit", "non-callable covar_callback", lambda d: fit(model(), X, covar_callback="S"),
     dg.InputTypeError, ["covar_callback", "expected a callable", "found str"]),
    ("fit", "background not a Background", lambda d: fit(model(), X, background=(0, 1)),
     dg.InputTypeError, ["background", "expected a daskgmmis.Background", "tuple"]),
    ("fit", "rng of wrong type", lambda d: fit(model(), X, rng="seed"),
     dg.InputTypeError, ["rng", "expected None, an int seed", "found str"]),
    ("fit", "client of wrong type", lambda d: fit(model(), X, client="tcp://x:8786"),
     dg.InputTypeError, ["client", "expected None or a distributed.Client", "found str",
                         "distributed.Client(address)"]),
    ("fit", "persist as a string", lambda d: fit(model(), X, persist="no"),
     dg.InputTypeError, ["persist", "expected None, True or False", "'no'"]),
    ("fit", "accelerate as a string", lambda d: fit(model(), X, accelerate="no"),
     dg.InputTypeError, ["accelerate", "expected True or False", "'no'"]),
    ("fit", "frozen indices not integers", lambda d: fit(model(), X, frozen=[0.5]),
     dg.InputTypeError, ["frozen", "expected integer component indices", "float64"]),
    # -- dg.fit: shapes and D mismatches
    ("fit", "1-D data", lambda d: fit(model(), X[:, 0]),
     dg.InputError, ["data", "expected 2-D", "(200,)"]),
    ("fit", "3-D data", lambda d: fit(model(), X[:, :, None]),
     dg.InputError, ["data", "expected 2-D", "(200, 2, 1)"]),
    ("fit", "no rows", lambda d: fit(model(), np.empty((0, 2))),
     dg.InputError, ["data", "at least one row", "(0, 2)"]),
    ("fit", "data D != model D", lambda d: fit(model(), np.ones((10, 3))),
     dg.InputError, ["data", "D=3", "gmm has D=2", "GMM(K, D=3)"]),
    ("fit", "covar rows != data rows", lambda d: fit(model(), X, VAR[:-1]),
     dg.InputError, ["covar", "(200, 2) diagonal variances", "found shape (199, 2)"]),
    ("fit", "covar D != data D", lambda d: fit(model(), X, np.ones((200, 3))),
     dg.InputError, ["covar", "expected None, a shared (D, D)", "found shape (200, 3)"]),
    ("fit", "full covar of wrong D", lambda d: fit(model(), X, np.ones((200, 3, 3))),
     dg.InputError, ["covar", "(200, 2, 2) full", "found shape (200, 3, 3)"]),
    ("fit", "footprint D != data D", lambda d: fit(model(), X, background=dg.Background(([0], [1]))),
     dg.InputError, ["background", "footprint has D=1", "data has D=2"]),
    ("fit", "covar with a catalog", lambda d: fit(model(), dg.write_catalog(d / "c.zarr", X), VAR),
     dg.InputError, ["covar", "catalog carries its own", "covar=None"]),
    # -- dg.fit: values
    ("fit", "Inf in data", lambda d: fit(model(), at(X, (3, 1), np.inf)),
     dg.InputError, ["data", "row 3, column 1 is inf", "expected a finite value or NaN"]),
    ("fit", "-Inf in data (late block)", lambda d: fit(model(), at(np.ones((50_000, 2)), (40_123, 0), -np.inf)),
     dg.InputError, ["data", "row 40123, column 0 is -inf", "finite value or NaN"]),
    ("fit", "a row with every feature missing", lambda d: fit(model(), at(X, 7, np.nan)),
     dg.InputError, ["data", "row 7 has every feature missing", "Drop them"]),
    ("fit", "a feature missing in every row", lambda d: fit(model(), at(X, (slice(None), 1), np.nan)),
     dg.InputError, ["data", "feature 1 is missing (NaN) in every row",
                     "expected at least one observed value"]),
    ("fit", "NaN variance of an observed feature", lambda d: fit(model(), X, at(VAR, (9, 1), np.nan)),
     dg.InputError, ["covar", "row 9, column 1 is nan", "expected a finite variance"]),
    ("fit", "negative variance", lambda d: fit(model(), X, at(VAR, (9, 0), -0.5)),
     dg.InputError, ["covar", "row 9, column 0", "negative variance (-0.5)", "expected >= 0",
                     "not standard deviations"]),
    ("fit", "Inf in a full covariance", lambda d: fit(model(), X, at(tiled(np.eye(2)), (4, 0, 1), np.inf)),
     dg.InputError, ["covar", "row 4 entry (0, 1) is inf", "expected finite covariances"]),
    ("fit", "full covariance not symmetric", lambda d: fit(model(), X, at(tiled(np.eye(2)), (5, 0, 1), 0.5)),
     dg.InputError, ["covar", "row 5 is not symmetric", "asymmetry 0.5", "expected a symmetric"]),
    ("fit", "full covariance not PSD", lambda d: fit(model(), X, at(tiled(np.eye(2)), 6, NOT_PD)),
     dg.InputError, ["covar", "row 6 is not positive semi-definite", "smallest eigenvalue -1",
                     "expected a valid covariance"]),
    ("fit", "shared covariance not PSD", lambda d: fit(model(), X, np.array(NOT_PD)),
     dg.InputError, ["covar", "shared (D, D) noise covariance is not positive semi-definite",
                     "smallest eigenvalue -1"]),
    ("fit", "shared covariance not symmetric", lambda d: fit(model(), X, np.array(ASYM)),
     dg.InputError, ["covar", "shared (D, D) noise covariance is not symmetric"]),
    ("fit", "shared covariance with NaN", lambda d: fit(model(), X, at(np.eye(2), (0, 1), np.nan)),
     dg.InputError, ["covar", "shared (D, D) noise covariance has NaN or Inf",
                     "expected finite values"]),
    ("fit", "K larger than the rows", lambda d: fit(model(K=300), X),
     dg.InputError, ["gmm", "K=300 components but only 200 usable rows",
                     "use fewer components or more data"]),
    # -- dg.fit: starting model (init_method="none")
    ("fit", "start model covariance not PD", lambda d: fit(with_params(covar=np.array([np.eye(2), NOT_PD])), X, init_method="none"),
     dg.InputError, ["gmm.covar[1]", "expected a positive-definite matrix",
                     "smallest eigenvalue is -1"]),
    ("fit", "start model covariance not symmetric", lambda d: fit(with_params(covar=np.array([ASYM, np.eye(2)])), X, init_method="none"),
     dg.InputError, ["gmm.covar[0]", "expected a symmetric matrix", "asymmetry of 0.5"]),
    ("fit", "start model negative amplitude", lambda d: fit(with_params(amp=np.array([-0.5, 1.5])), X, init_method="none"),
     dg.InputError, ["gmm.amp", "expected non-negative amplitudes", "-0.5 at component 0"]),
    ("fit", "start model NaN mean", lambda d: fit(with_params(mean=at(np.zeros((2, 2)), (1, 0), np.nan)), X, init_method="none"),
     dg.InputError, ["gmm.mean", "expected finite values", "NaN or Inf"]),
    ("fit", "start model of wrong shapes", lambda d: fit(with_params(covar=np.ones((2, 3, 3))), X, init_method="none"),
     dg.InputError, ["gmm.covar", "expected shape (K, D, D) = (2, 2, 2)", "(2, 3, 3)"]),
    # -- dg.fit: options
    ("fit", "unknown init_method", lambda d: fit(model(), X, init_method="kmeans++"),
     dg.InputError, ["init_method", "expected one of", "'kmeans++'"]),
    ("fit", "negative w", lambda d: fit(model(), X, w=-1.0),
     dg.InputError, ["w", "expected a finite number >= 0", "-1.0"]),
    ("fit", "NaN tol", lambda d: fit(model(), X, tol=np.nan),
     dg.InputError, ["tol", "expected None or a finite number >= 0", "nan"]),
    ("fit", "fractional maxiter", lambda d: dg.fit(model(), X, maxiter=2.5),
     dg.InputError, ["maxiter", "expected an integer >= 0", "2.5"]),
    ("fit", "cutoff as a string", lambda d: fit(model(), X, cutoff="3"),
     dg.InputError, ["cutoff", "expected None or a number of sigmas > 0", "'3'"]),
    ("fit", "negative cutoff", lambda d: fit(model(), X, cutoff=-2),
     dg.InputError, ["cutoff", "number of sigmas > 0", "-2"]),
    ("fit", "zero oversampling", lambda d: fit(model(), X, oversampling=0),
     dg.InputError, ["oversampling", "expected a finite number > 0", "found 0"]),
    ("fit", "frozen index out of range", lambda d: fit(model(), X, frozen=[5]),
     dg.InputError, ["frozen", "must lie in [0, 2)", "5..5"]),
    ("fit", "unknown frozen key", lambda d: fit(model(), X, frozen={"weights": [0]}),
     dg.InputError, ["frozen", "unknown keys ['weights']", "'amp', 'mean', 'covar'"]),
    ("fit", "n_init = 0", lambda d: fit(model(), X, n_init=0),
     dg.InputError, ["n_init", "expected an integer >= 1", "0"]),
    ("fit", "split_n_merge with K < 3", lambda d: fit(model(), X, split_n_merge=2),
     dg.InputError, ["split_n_merge", "needs K >= 3", "K=2"]),
    ("fit", "w so large its square overflows", lambda d: fit(model(), X, w=1e200),
     dg.InputError, ["w", "1e+200 squared", "overflows float64", "w <= 1e+150"]),
    ("fit", "cutoff so small every row is outside", lambda d: fit(model(), X, cutoff=1e-300),
     dg.InputError, ["cutoff=1e-300", "every row is outside every neighborhood", "200 of 200 rows", "3 to 6"]),
    ("fit", "oversampling of 1e9 candidates per row", lambda d: fit(model(), INSIDE, sel_callback=Box([-1, -1], [1, 1]), oversampling=1e9),
     dg.InputError, ["memory", "oversampling=1e+09", "lower oversampling"]),
    ("fit", "n_init = 10**9", lambda d: fit(model(), X, n_init=10**9),
     dg.InputError, ["n_init", "1000000000 starts", "at most 10000"]),
    ("fit", "sel_callback that never returns", lambda d: fit(model(), INSIDE, sel_callback=HANG, callback_timeout=0.5),
     dg.CallbackError, ["sel_callback", "did not return within callback_timeout=0.5 s", "coords of shape"]),
    ("fit", "covar_callback that never returns", lambda d: fit(model(), INSIDE, sel_callback=Box([-1, -1], [1, 1]), covar_callback=HANG, callback_timeout=0.5),
     dg.CallbackError, ["covar_callback", "did not return within callback_timeout=0.5 s"]),
    ("fit", "negative callback_timeout", lambda d: fit(model(), X, callback_timeout=-1),
     dg.InputError, ["callback_timeout", "expected None or a finite number of seconds > 0", "-1"]),
    ("fit", "checkpoint of garbage bytes", lambda d: (d.joinpath("ck.npz").write_bytes(b"\0" * 64), fit(model(), X, checkpoint=d / "ck.npz")),
     dg.CheckpointError, ["checkpoint", "ck.npz", "not a readable daskgmmis checkpoint",
                          "never unpickles", "remove it or pass another path"]),
    # -- dg.fit: misbehaving callbacks
    ("fit", "sel_callback raises", lambda d: fit(model(), INSIDE, sel_callback=lambda c: 1 / 0),
     dg.CallbackError, ["sel_callback", "raised ZeroDivisionError", "coords of shape"]),
    ("fit", "sel_callback returns a wrong shape", lambda d: fit(model(), INSIDE, sel_callback=lambda c: np.ones((len(c), 2))),
     dg.CallbackError, ["sel_callback", "expected an array of shape", "found shape"]),
    ("fit", "sel_callback returns NaN", lambda d: fit(model(), INSIDE, sel_callback=lambda c: np.full(len(c), np.nan)),
     dg.CallbackError, ["sel_callback", "probabilities in [0, 1]", "NaN values"]),
    ("fit", "sel_callback returns values > 1", lambda d: fit(model(), INSIDE, sel_callback=lambda c: np.full(len(c), 2.0)),
     dg.CallbackError, ["sel_callback", "probabilities in [0, 1]", "outside [0, 1]", "2.0"]),
    ("fit", "sel_callback returns None", lambda d: fit(model(), INSIDE, sel_callback=lambda c: None),
     dg.CallbackError, ["sel_callback", "expected an array", "NoneType"]),
    ("fit", "sel_callback is 0 at observed rows", lambda d: fit(model(), INSIDE, sel_callback=lambda c: np.zeros(len(c))),
     dg.CallbackError, ["sel_callback", "returned 0 for", "observed rows", "must have a selection "
                        "probability > 0", "Check the selection function"]),
    ("fit", "sel_callback is 0 wherever the model puts mass", lambda d: fit(model(), INSIDE, sel_callback=lambda c: np.isin(c[:, 0], INSIDE[:, 0]).astype(float)),
     dg.CallbackError, ["sel_callback", "rows drawn from the model has selection probability 0",
                        "raise oversampling"]),
    ("fit", "sel_callback of the wrong D", lambda d: fit(model(), INSIDE, sel_callback=Box([-1], [1])),
     dg.CallbackError, ["sel_callback", "raised InputError", "expected coords of shape (n, 1)"]),
    ("fit", "covar_callback raises", lambda d: fit(model(), INSIDE, sel_callback=Box([-1, -1], [1, 1]), covar_callback=lambda c: 1 / 0),
     dg.CallbackError, ["covar_callback", "raised ZeroDivisionError"]),
    ("fit", "covar_callback returns a wrong shape", lambda d: fit(model(), INSIDE, sel_callback=Box([-1, -1], [1, 1]), covar_callback=lambda c: np.ones(3)),
     dg.CallbackError, ["covar_callback", "expected noise covariances of shape", "found shape (3,)"]),
    ("fit", "covar_callback returns negative variances", lambda d: fit(model(), INSIDE, sel_callback=Box([-1, -1], [1, 1]), covar_callback=lambda c: -np.ones((len(c), 2))),
     dg.CallbackError, ["covar_callback output", "negative variance", "expected >= 0"]),
    ("fit", "covar_callback returns a non-PSD matrix", lambda d: fit(model(), INSIDE, sel_callback=Box([-1, -1], [1, 1]), covar_callback=lambda c: np.array(NOT_PD)),
     dg.CallbackError, ["covar_callback output (shared matrix)", "not positive semi-definite",
                        "smallest eigenvalue -1"]),
    ("fit", "covar_callback returns strings", lambda d: fit(model(), INSIDE, sel_callback=Box([-1, -1], [1, 1]), covar_callback=lambda c: "S"),
     dg.CallbackError, ["covar_callback", "numeric", "dtype <U1"]),

    # -- projections: X (200, 2) seen through R of a 3-D model
    ("fit", "projection of the wrong shape", lambda d: fit(model(D=3), X, projection=np.ones((3, 3)), init_method="none"),
     dg.InputError, ["projection", "expected one shared matrix of shape (2, 3)", "(200, 2, 3)",
                     "found shape (3, 3)"]),
    ("fit", "projection to more dimensions than the model's", lambda d: fit(model(D=1), X, projection=np.ones((2, 1)), init_method="none"),
     dg.InputError, ["projection", "d=2 columns", "only D=1", "d <= D"]),
    ("fit", "projection of strings", lambda d: fit(model(D=3), X, projection=np.full((2, 3), "a"), init_method="none"),
     dg.InputTypeError, ["projection", "expected a numeric array", "<U1"]),
    ("fit", "NaN in a per-row projection where the row is observed", lambda d: fit(model(D=3), X, projection=at(np.ones((200, 2, 3)), (7, 1, 0), np.nan), init_method="none"),
     dg.InputError, ["projection", "row 7, entry (1, 0) is nan", "observes y[1]",
                     "only the rows of R_i at NaN entries of y_i may be NaN"]),
    ("fit", "Inf in a shared projection", lambda d: fit(model(D=3), X, projection=at(np.ones((2, 3)), (0, 2), np.inf), init_method="none"),
     dg.InputError, ["projection", "entry (0, 2) of the shared matrix is inf", "finite"]),
    ("fit", "projection with a data-based initialization", lambda d: fit(model(D=3), X, projection=np.ones((2, 3))),
     dg.InputError, ["init_method", "not in the model's space", "init_method='none'"]),
    ("fit", "per-row projection with truncation and no projection_callback", lambda d: fit(model(D=3), INSIDE, projection=np.ones((len(INSIDE), 2, 3)), init_method="none", sel_callback=Box([-1, -1], [1, 1])),
     dg.InputError, ["projection_callback", "own projections", "how an unobserved row would have been projected"]),
    ("fit", "projection_callback without a projection", lambda d: fit(model(), INSIDE, sel_callback=Box([-1, -1], [1, 1]), projection_callback=lambda t: np.ones((2, 2))),
     dg.InputError, ["projection_callback", "pass projection="]),
    ("fit", "projection_callback without truncation", lambda d: fit(model(D=3), X, projection=np.ones((2, 3)), init_method="none", projection_callback=lambda t: np.ones((2, 3))),
     dg.InputError, ["projection_callback", "it needs sel_callback"]),
    ("fit", "projection_callback returning the wrong shape", lambda d: fit(model(D=3), INSIDE, projection=np.tile(np.eye(2, 3), (len(INSIDE), 1, 1)), init_method="none", sel_callback=Box([-1, -1], [1, 1]), projection_callback=lambda t: np.ones((len(t), 3, 3))),
     dg.CallbackError, ["projection_callback", "expected projection matrices of shape", ", 2, 3) or (2, 3)", "found shape"]),
    ("fit", "projection with neighborhoods", lambda d: fit(model(D=3), X, projection=np.ones((2, 3)), init_method="none", cutoff=4.0),
     dg.InputError, ["cutoff", "not supported together with a projection"]),
    ("fit", "projection beside a catalog's own", lambda d: fit(model(D=3), dg.write_catalog(d / "p.zarr", X, projection=np.ones((2, 3))), projection=np.ones((2, 3)), init_method="none"),
     dg.InputError, ["projection", "the catalog carries its own projection", "projection=None"]),
    ("score", "per-row projection of the wrong length", lambda d: dg.score(model(D=3), X, projection=np.ones((199, 2, 3))),
     dg.InputError, ["projection", "(200, 2, 3)", "found shape (199, 2, 3)"]),
    ("posterior", "projection with a background of the model's width, not the data's", lambda d: dg.posterior(scaled_amp(model(D=3), 0.9), X, projection=np.ones((2, 3)), background=dg.Background(([0, 0, 0], [1, 1, 1]), 0.1)),
     dg.InputError, ["background", "footprint has D=3", "the data has D=2"]),
    ("write_catalog", "projection of the wrong width", lambda d: dg.write_catalog(d / "p.zarr", X, projection=np.ones((3, 4))),
     dg.InputError, ["projection", "expected one shared matrix of shape (2, 4)", "found shape (3, 4)"]),
    ("GMM.draw", "per-row projection for another size", lambda d: model(D=3).draw(5, projection=np.ones((4, 2, 3))),
     dg.InputError, ["projection", "(5, 2, 3)", "found shape (4, 2, 3)"]),

    # -- dg.draw
    ("draw", "gmm is not a GMM", lambda d: dg.draw(None, 10),
     dg.InputTypeError, ["gmm", "expected a daskgmmis.GMM", "NoneType"]),
    ("draw", "both obs_size and orig_size", lambda d: dg.draw(model(), 10, orig_size=10),
     dg.InputError, ["obs_size, orig_size", "give exactly one", "obs_size=10, orig_size=10"]),
    ("draw", "negative obs_size", lambda d: dg.draw(model(), -3),
     dg.InputError, ["obs_size", "non-negative integer", "-3"]),
    ("draw", "fractional obs_size", lambda d: dg.draw(model(), 2.5),
     dg.InputTypeError, ["obs_size", "non-negative integer", "2.5"]),
    ("draw", "invert_sel without a selection", lambda d: dg.draw(model(), 5, invert_sel=True),
     dg.InputError, ["invert_sel=True needs a sel_callback"]),
    ("draw", "invert_sel as a string", lambda d: dg.draw(model(), 5, sel_callback=Box([0, 0], [1, 1]), invert_sel="yes"),
     dg.InputTypeError, ["invert_sel", "expected a bool", "'yes'"]),
    ("draw", "footprint D != model D", lambda d: dg.draw(model(), 5, background=dg.Background(([0], [1]), 0.5)),
     dg.InputError, ["background", "footprint has D=1", "gmm has D=2"]),
    ("draw", "rng of wrong type", lambda d: dg.draw(model(), 5, rng="x"),
     dg.InputTypeError, ["rng", "expected None, an int seed", "'x'"]),
    ("draw", "model covariance not PD", lambda d: dg.draw(with_params(covar=np.array([NOT_PD, np.eye(2)])), 5),
     dg.InputError, ["gmm.covar[0]", "positive-definite", "-1"]),
    ("draw", "selection keeps nothing", lambda d: dg.draw(model(), 3, sel_callback=lambda c: np.zeros(len(c)), max_draws=1000),
     dg.CallbackError, ["sel_callback", "only 0 of", "max_draws=1000", "Check the selection, or raise "
                        "max_draws"]),
    ("draw", "sel_callback raises", lambda d: dg.draw(model(), 3, sel_callback=lambda c: 1 / 0),
     dg.CallbackError, ["sel_callback", "raised ZeroDivisionError"]),
    ("draw", "covar_callback returns NaN", lambda d: dg.draw(model(), 3, covar_callback=lambda c: np.full((len(c), 2), np.nan)),
     dg.CallbackError, ["covar_callback output", "is nan", "expected a finite variance"]),
    ("draw", "covar_callback not symmetric", lambda d: dg.draw(model(), 3, covar_callback=lambda c: np.array(ASYM)),
     dg.CallbackError, ["covar_callback output (shared matrix)", "not symmetric"]),

    # -- GMM(...)
    ("GMM()", "K = 0", lambda d: dg.GMM(0, 2),
     dg.InputError, ["K", "expected an integer >= 1", "0"]),
    ("GMM()", "fractional K", lambda d: dg.GMM(1.5, 2),
     dg.InputTypeError, ["K", "expected a positive integer", "1.5"]),
    ("GMM()", "boolean D", lambda d: dg.GMM(2, True),
     dg.InputTypeError, ["D", "expected a positive integer", "True"]),
    # -- GMM.__call__ / logL
    ("GMM.__call__", "coords of wrong D", lambda d: model()(np.ones((3, 3))),
     dg.InputError, ["coords", "expected shape (n, D) with D=2", "(3, 3)"]),
    ("GMM.__call__", "coords of strings", lambda d: model()(np.array([["a", "b"]])),
     dg.InputTypeError, ["coords", "expected a numeric array", "<U1"]),
    ("GMM.__call__", "complex coords", lambda d: model()(np.ones((2, 2), complex)),
     dg.InputTypeError, ["coords", "numeric", "complex128"]),
    ("GMM.__call__", "Inf in coords", lambda d: model()(at(X, (2, 0), np.inf)),
     dg.InputError, ["coords", "row 2, column 0 is inf", "finite value or NaN"]),
    ("GMM.__call__", "negative variance", lambda d: model()(X, at(VAR, (8, 1), -1)),
     dg.InputError, ["covar", "row 8, column 1", "negative variance", "expected >= 0"]),
    ("GMM.__call__", "full noise not PSD", lambda d: model()(X, at(tiled(np.eye(2)), 3, NOT_PD)),
     dg.InputError, ["covar", "row 3 is not positive semi-definite", "smallest eigenvalue -1"]),
    ("GMM.__call__", "shared noise not symmetric", lambda d: model()(X, np.array(ASYM)),
     dg.InputError, ["covar", "shared (D, D) noise covariance is not symmetric"]),
    ("GMM.__call__", "noise of wrong shape", lambda d: model()(X, np.ones(3)),
     dg.InputError, ["covar", "expected None, a shared (D, D)", "found shape (3,)"]),
    ("GMM.__call__", "background not a Background", lambda d: model()(X, background=0.1),
     dg.InputTypeError, ["background", "expected a daskgmmis.Background", "float"]),
    ("GMM.__call__", "model amp NaN", lambda d: with_params(amp=np.array([np.nan, 1.0]))(X),
     dg.InputError, ["gmm.amp", "expected finite values", "NaN"]),
    ("GMM.__call__", "model mean of strings", lambda d: with_params(mean="abc")(X),
     dg.InputTypeError, ["gmm.mean", "expected a numeric array", "<U3"]),
    ("GMM.__call__", "model amp of wrong K", lambda d: with_params(amp=np.ones(3) / 3)(X),
     dg.InputError, ["gmm.mean", "expected shape (K, D) = (3, D)", "(2, 2)"]),
    ("GMM.logL", "dask coords with Inf", lambda d: model().logL(__import__("dask.array").array.from_array(at(X, (150, 1), np.inf), chunks=50)).compute(),
     dg.InputError, ["coords", "row 150, column 1 is inf"]),
    ("GMM.logL", "dask noise with a negative variance", lambda d: model().logL(__import__("dask.array").array.from_array(X, chunks=50), __import__("dask.array").array.from_array(at(VAR, (120, 0), -1), chunks=50)).compute(),
     dg.InputError, ["covar", "row 120, column 0", "negative variance"]),
    # -- GMM.draw
    ("GMM.draw", "negative size", lambda d: model().draw(-1),
     dg.InputError, ["size", "non-negative integer", "-1"]),
    ("GMM.draw", "fractional size", lambda d: model().draw(2.5),
     dg.InputTypeError, ["size", "non-negative integer", "2.5"]),
    ("GMM.draw", "rng of wrong type", lambda d: model().draw(3, rng="x"),
     dg.InputTypeError, ["rng", "expected None, an int seed", "'x'"]),
    ("GMM.draw", "every amplitude zero", lambda d: with_params(amp=np.zeros(2)).draw(3),
     dg.InputError, ["gmm.amp", "every amplitude is zero", "expected at least one positive"]),
    # -- GMM.condition
    ("GMM.condition", "fractional dims", lambda d: model().condition([1.0], [0.5]),
     dg.InputTypeError, ["dims", "expected integer dimension indices", "0.5"]),
    ("GMM.condition", "dims out of range", lambda d: model().condition([1.0], [2]),
     dg.InputError, ["dims", "expected indices in [0, 2)", "[2]"]),
    ("GMM.condition", "dims cover every dimension", lambda d: model().condition([1.0, 2.0], [0, 1]),
     dg.InputError, ["dims", "covers all D=2 dimensions", "use gmm(values)"]),
    ("GMM.condition", "values of wrong shape", lambda d: model().condition([1.0, 2.0], [0]),
     dg.InputError, ["values", "expected shape (1,)", "(2,)"]),
    ("GMM.condition", "NaN value", lambda d: model().condition([np.nan], [0]),
     dg.InputError, ["values", "expected finite numbers", "nan"]),
    ("GMM.condition", "values of strings", lambda d: model().condition(["a"], [0]),
     dg.InputTypeError, ["values", "expected a numeric array", "<U1"]),
    # -- GMM.save
    ("GMM.save", "existing file without overwrite", lambda d: (model().save(d / "m.npz"), model().save(d / "m.npz")),
     OutputExistsError, ["path", "m.npz exists", "pass overwrite=True"]),
    ("GMM.save", "missing directory", lambda d: model().save(d / "nope" / "m.npz"),
     OutputError, ["path", "directory", "nope does not exist", "create it first"]),
    ("GMM.save", "path of wrong type", lambda d: model().save(None),
     dg.InputTypeError, ["path", "expected a str or os.PathLike", "NoneType"]),
    ("GMM.save", "background not a Background", lambda d: model().save(d / "m.npz", background="bg"),
     dg.InputTypeError, ["background", "expected a daskgmmis.Background", "str"]),
    ("GMM.save", "background of wrong D", lambda d: model().save(d / "m.npz", background=dg.Background(([0], [1]))),
     dg.InputError, ["background", "footprint has D=1", "model has D=2"]),
    ("GMM.save", "invalid model", lambda d: with_params(covar=np.array([NOT_PD, np.eye(2)])).save(d / "m.npz"),
     dg.InputError, ["gmm.covar[0]", "positive-definite"]),

    # -- Background(...)
    ("Background()", "footprint not a pair", lambda d: dg.Background(3.0),
     dg.InputError, ["footprint", "expected a pair (lower, upper)", "3.0"]),
    ("Background()", "corners of different shapes", lambda d: dg.Background(([0, 0], [1])),
     dg.InputError, ["footprint", "must both have shape (D,)", "(2,) and (1,)"]),
    ("Background()", "empty footprint", lambda d: dg.Background(([], [])),
     dg.InputError, ["footprint", "D >= 1", "(0,)"]),
    ("Background()", "corners of strings", lambda d: dg.Background(("ab", "cd")),
     dg.InputTypeError, ["footprint", "lower corner must be numbers", "'ab'"]),
    ("Background()", "NaN corner", lambda d: dg.Background(([0, np.nan], [1, 1])),
     dg.InputError, ["footprint", "expected finite corners", "NaN"]),
    ("Background()", "upper below lower", lambda d: dg.Background(([0, 1], [1, 0])),
     dg.InputError, ["footprint", "expected upper > lower", "dimension 1 has lower=1.0, upper=0.0"]),
    ("Background()", "amp above 1", lambda d: dg.Background(([0], [1]), amp=1.5),
     dg.InputError, ["amp", "expected a value in [amp_min, amp_max]", "1.5"]),
    ("Background()", "amp as a string", lambda d: dg.Background(([0], [1]), amp="0.1"),
     dg.InputTypeError, ["amp", "expected a number in [0, 1]", "'0.1'"]),
    ("Background()", "amp_min above amp_max", lambda d: dg.Background(([0], [1]), 0.3, amp_min=0.5, amp_max=0.2),
     dg.InputError, ["amp_min, amp_max", "0 <= amp_min <= amp_max <= 1", "0.5, 0.2"]),
    ("Background()", "adjust_amp as a string", lambda d: dg.Background(([0], [1]), adjust_amp="no"),
     dg.InputTypeError, ["adjust_amp", "expected True or False", "'no'"]),

    # -- write_catalog / open_catalog
    ("write_catalog", "existing store without overwrite", lambda d: (dg.write_catalog(d / "c.zarr", X), dg.write_catalog(d / "c.zarr", X)),
     dg.StoreExistsError, ["path", "c.zarr exists", "pass overwrite=True"]),
    ("write_catalog", "1-D data", lambda d: dg.write_catalog(d / "c.zarr", X[:, 0]),
     dg.InputError, ["data", "expected 2-D", "(200,)"]),
    ("write_catalog", "data of strings", lambda d: dg.write_catalog(d / "c.zarr", X.astype(str)),
     dg.InputTypeError, ["data", "expected a numeric array", "<U"]),
    ("write_catalog", "covar rows != data rows", lambda d: dg.write_catalog(d / "c.zarr", X, VAR[:10]),
     dg.InputError, ["covar", "(200, 2) diagonal variances", "found shape (10, 2)"]),
    ("write_catalog", "shared covar", lambda d: dg.write_catalog(d / "c.zarr", X, np.eye(2)),
     dg.InputError, ["covar", "per-row noise", "pass a shared (D, D) matrix to fit()"]),
    ("write_catalog", "wrong number of column names", lambda d: dg.write_catalog(d / "c.zarr", X, columns=["a"]),
     dg.InputError, ["columns", "expected 2 names", "found 1"]),
    ("write_catalog", "unknown order", lambda d: dg.write_catalog(d / "c.zarr", X, order="random"),
     dg.InputError, ["order", "expected 'input' or 'spatial'", "'random'"]),
    ("write_catalog", "zero rows per chunk", lambda d: dg.write_catalog(d / "c.zarr", X, chunks=0),
     dg.InputError, ["chunks", "positive number of rows", "0"]),
    ("open_catalog", "missing path", lambda d: dg.open_catalog(d / "none.zarr"),
     dg.CatalogNotFoundError, ["catalog", "none.zarr does not exist", "expected a Zarr catalog"]),
    ("open_catalog", "a plain file", lambda d: (d.joinpath("f.zarr").write_text("x"), dg.open_catalog(d / "f.zarr")),
     dg.CatalogError, ["catalog", "f.zarr is a file", "expected a Zarr catalog directory"]),
    ("open_catalog", "a directory without zarr.json", lambda d: (d.joinpath("e.zarr").mkdir(), dg.open_catalog(d / "e.zarr")),
     dg.CatalogError, ["catalog", "e.zarr exists but is not a Zarr group", "no zarr.json"]),
]


def _store(d, covar=True):
    """A small catalog on disk, 4 chunks of 50 rows."""
    path = d / "cat.zarr"
    dg.write_catalog(path, X, VAR if covar else None, chunks=50)
    return path


def _edit_json(path, change):
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _corrupt(d, damage):
    path = _store(d)
    damage(path)
    return path


CORRUPT = [
    # (bad input, damage, entry point, exception, words)
    ("a data chunk file deleted", lambda p: os.remove(p / "data" / "c" / "1" / "0"),
     "open", dg.CatalogError, ["cat.zarr/data", "3 of its 4 chunks", "missing: data/c/1/0",
                               "Restore the store"]),
    ("a covar chunk file deleted", lambda p: os.remove(p / "covar" / "c" / "3" / "0"),
     "open", dg.CatalogError, ["cat.zarr/covar", "3 of its 4 chunks", "missing: covar/c/3/0"]),
    ("a data chunk file truncated", lambda p: _truncate(p / "data" / "c" / "2" / "0"),
     "fit", dg.CatalogError, ["reading", "cat.zarr/data", "rows 100..149", "corrupted or "
                              "truncated", "write it again"]),
    ("a covar chunk file overwritten with junk", lambda p: (p / "covar" / "c" / "0" / "0").write_bytes(b"junk" * 50),
     "posterior", dg.CatalogError, ["reading", "cat.zarr/covar", "rows 0..49", "corrupted"]),
    ("a data chunk file emptied", lambda p: (p / "data" / "c" / "3" / "0").write_bytes(b""),
     "bic", dg.CatalogError, ["reading", "cat.zarr/data", "rows 150..199"]),
    ("group zarr.json deleted", lambda p: os.remove(p / "zarr.json"),
     "open", dg.CatalogError, ["cat.zarr exists but is not a Zarr group"]),
    ("group zarr.json not JSON", lambda p: (p / "zarr.json").write_text("{not json"),
     "open", dg.CatalogError, ["cat.zarr is not a Zarr group", "JSONDecodeError"]),
    ("array zarr.json not JSON", lambda p: (p / "data" / "zarr.json").write_text("{not json"),
     "fit", dg.CatalogError, ["cat.zarr", "corrupted", "JSONDecodeError"]),
    ("array metadata names an unknown codec", lambda p: _edit_json(p / "data" / "zarr.json", lambda m: m.update(codecs=[{"name": "nonexistent"}])),
     "open", dg.CatalogError, ["cat.zarr", "nonexistent"]),
    ("another format version", lambda p: _edit_json(p / "zarr.json", lambda m: m["attributes"].update(daskgmmis_format_version=99)),
     "open", dg.CatalogError, ["cat.zarr", "format version 99", "reads version 1"]),
    ("not a daskgmmis catalog", lambda p: _edit_json(p / "zarr.json", lambda m: m["attributes"].pop("daskgmmis_format")),
     "open", dg.CatalogError, ["cat.zarr", "not a daskgmmis catalog", "daskgmmis_format"]),
    ("unknown covar_kind", lambda p: _edit_json(p / "zarr.json", lambda m: m["attributes"].update(covar_kind="weird")),
     "open", dg.CatalogError, ["cat.zarr", "covar_kind='weird'", "expected 'none', 'diag' or 'full'"]),
    ("columns not a list of names", lambda p: _edit_json(p / "zarr.json", lambda m: m["attributes"].update(columns="ab")),
     "open", dg.CatalogError, ["cat.zarr", "columns='ab'", "expected a list of 2 names"]),
    ("data array of integers", lambda p: _edit_json(p / "data" / "zarr.json", lambda m: m.update(data_type="int32")),
     "open", dg.CatalogError, ["cat.zarr/data", "dtype int32", "expected float32 or float64"]),
    ("data array deleted", lambda p: shutil.rmtree(p / "data"),
     "open", dg.CatalogError, ["cat.zarr", "has no 'data' array"]),
    ("covar array deleted", lambda p: shutil.rmtree(p / "covar"),
     "fit", dg.CatalogError, ["cat.zarr", "declares covar_kind='diag'", "no 'covar' array"]),
    ("data shape changed", lambda p: _edit_json(p / "data" / "zarr.json", lambda m: m.update(shape=[300, 2])),
     "open", dg.CatalogError, ["cat.zarr", "of its", "chunks"]),
    ("data shape claims 10**15 rows", lambda p: _edit_json(p / "data" / "zarr.json", lambda m: m.update(shape=[10**15, 2])),
     "fit", dg.CatalogError, ["cat.zarr/data", "4 of its 20000000000000 chunks", "rows 200..249", "claims more rows than were written"]),
    ("data shape claims 10**9 columns", lambda p: _edit_json(p / "data" / "zarr.json", lambda m: m.update(shape=[400, 10**9])),
     "open", dg.CatalogError, ["cat.zarr/data", "(400, 1000000000) in chunks of (50, 2)", "expected chunks along rows only"]),
    ("a chunk deleted from a store without completeness marks", lambda p: (_edit_json(p / "data" / "zarr.json", lambda m: m["attributes"].pop("complete_chunks")), os.remove(p / "data" / "c" / "2" / "0")),
     "open", dg.CatalogError, ["cat.zarr/data", "3 of its 4 chunks", "rows 100..149", "would read as the fill value (zeros)"]),
    ("covar_kind 'none' beside a covar array", lambda p: _edit_json(p / "zarr.json", lambda m: m["attributes"].update(covar_kind="none")),
     "open", dg.CatalogError, ["cat.zarr", "declares covar_kind='none' but has a 'covar' array", "drop the noise"]),
    ("format version true", lambda p: _edit_json(p / "zarr.json", lambda m: m["attributes"].update(daskgmmis_format_version=True)),
     "open", dg.CatalogError, ["cat.zarr", "format version True", "reads version 1"]),
    ("format version 1.0", lambda p: _edit_json(p / "zarr.json", lambda m: m["attributes"].update(daskgmmis_format_version=1.0)),
     "open", dg.CatalogError, ["cat.zarr", "format version 1.0", "reads version 1"]),
    ("covar array of float16", lambda p: _edit_json(p / "covar" / "zarr.json", lambda m: m.update(data_type="float16")),
     "open", dg.CatalogError, ["cat.zarr/covar", "dtype float16", "expected float32 or float64"]),
    ("row_index of the wrong length", lambda p: zarr.open_group(str(p), mode="a").create_array("row_index", data=np.arange(150), chunks=(50,)),
     "open", dg.CatalogError, ["cat.zarr/row_index", "shape (150,)", "expected (200,) integers"]),
]


def _run_on_catalog(entry, path):
    if entry == "open":
        return dg.open_catalog(path)
    if entry == "fit":
        return fit(model(), str(path))
    if entry == "posterior":
        return dg.posterior(model(), path).compute()
    if entry == "bic":
        return dg.bic(model(), path)
    raise AssertionError(entry)


def _model_file(d, rehash=False, **edit):
    """A saved model, rewritten with ``edit`` (arrays, or meta keys)."""
    path = d / "m.npz"
    g = model()
    g.amp = g.amp * 0.9                 # the background holds the rest
    g.save(path, background=dg.Background(([-9, -9], [9, 9]), 0.1))
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["meta"].tobytes())
    for key, value in edit.items():
        if key in ("amp", "mean", "covar", "evil"):
            arrays[key] = value
        else:
            meta[key] = value
    if rehash:      # a forger who recomputes the checksum
        meta["sha256"] = _content_hash(arrays["amp"], arrays["mean"], arrays["covar"],
                                       meta["background"])
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    return path


def _forged_member(path, member, shape):
    """Replace ``member`` of a model file by a .npy header claiming ``shape`` (and
    8 bytes of data): numpy would allocate the claimed array before reading."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                               "shape": shape})
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[f"{member}.npy"] = buf.getvalue() + b"\0" * 8
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


class Evil:
    """Unpickling this runs code (it would create the file ``PWNED``)."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


def _hostile(d, member):
    """A model file whose ``member`` array is a pickled object array."""
    path = _model_file(d)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([Evil()], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[f"{member}.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


MODEL_FILES = [
    # (bad input, make the file, exception, words)
    ("another format version", lambda d: _model_file(d, version=2),
     ["model format version 2", "reads version 1"]),
    ("another format", lambda d: _model_file(d, format="sklearn-pickle"),
     ["format tag is 'sklearn-pickle'", "expected 'daskgmmis-model'"]),
    ("a parameter edited", lambda d: _model_file(d, mean=np.ones((2, 2))),
     ["do not match the checksum", "modified after it was saved", "fit the model again"]),
    ("a covariance made non-PD", lambda d: _model_file(d, covar=np.array([NOT_PD, np.eye(2)])),
     ["corrupted model file", "covar[0]", "positive-definite"]),
    ("NaN amplitude", lambda d: _model_file(d, amp=np.array([np.nan, 0.5])),
     ["corrupted model file", "amp", "finite"]),
    ("amplitudes summing to 1e300 (checksum recomputed)", lambda d: _model_file(d, True, amp=np.array([1e300, 0.5])),
     ["corrupted model file", "amp", "sum to 1e+300", "background's to 0.1", "expected a total of 1"]),
    ("all-zero amplitudes (checksum recomputed)", lambda d: _model_file(d, True, amp=np.zeros(2)),
     ["corrupted model file", "amp", "sum to 0 and the background's to 0.1", "expected a total of 1"]),
    ("amplitudes and background not summing to 1 (checksum recomputed)", lambda d: _model_file(d, True, amp=np.array([0.5, 0.5])),
     ["corrupted model file", "sum to 1 and the background's to 0.1", "expected a total of 1"]),
    ("header K is true", lambda d: _model_file(d, K=True),
     ["header has K=True", "expected a positive integer"]),
    ("format version 1.0", lambda d: _model_file(d, version=1.0),
     ["model format version 1.0", "reads version 1"]),
    ("a member claims 5e8 values", lambda d: _forged_member(_model_file(d), "amp", (500_000_000,)),
     ["header says K=2", "amp has shape (500000000,)"]),
    ("float32 parameters", lambda d: _model_file(d, mean=model().mean.astype(np.float32)),
     ["array mean has dtype float32", "expected float64"]),
    ("integer amplitudes", lambda d: _model_file(d, amp=np.array([1, 0])),
     ["array amp has dtype int64", "expected float64"]),
    ("header K disagrees", lambda d: _model_file(d, K=3),
     ["header says K=3, D=2", "mean has shape (2, 2)"]),
    ("background record broken", lambda d: _model_file(d, background={"lower": [0, 0]}),
     ["invalid background record", "missing key 'upper'", "expected lower, upper, amp"]),
    ("background amp not a number", lambda d: _model_file(d, background={"lower": [0, 0], "upper": [1, 1], "amp": "x", "amp_min": 0, "amp_max": 1, "adjust_amp": True}),
     ["invalid background record", "amp", "'x'"]),
    ("an extra array", lambda d: _model_file(d, evil=np.ones(3)),
     ["expected arrays amp, mean, covar, meta", "'evil'", "not a daskgmmis model"]),
    ("truncated", lambda d: (lambda p: (_truncate(p), p)[1])(_model_file(d)),
     ["not a readable daskgmmis model file", "BadZipFile"]),
    ("empty", lambda d: (d.joinpath("m.npz").write_bytes(b""), d / "m.npz")[1],
     ["not a readable daskgmmis model file", "EOFError"]),
    ("a bare pickle", lambda d: (d.joinpath("m.npz").write_bytes(pickle.dumps(Evil())), d / "m.npz")[1],
     ["not a readable daskgmmis model file", "never does since unpickling can run code"]),
    ("hostile object array as a parameter", lambda d: _hostile(d, "covar"),
     ["not a readable daskgmmis model file", "unpickling can run code"]),
    ("hostile object array as the header", lambda d: _hostile(d, "meta"),
     ["not a readable daskgmmis model file", "unpickling can run code"]),
    ("a directory", lambda d: (d.joinpath("m.npz").mkdir(), d / "m.npz")[1],
     ["not a readable daskgmmis model file", "IsADirectoryError"]),
    ("missing", lambda d: d / "m.npz",
     ["model file", "m.npz does not exist"]),
]


def _check(info, exc, words):
    err = info.value
    assert type(err) is exc, f"{type(err).__name__} raised, {exc.__name__} documented"
    assert isinstance(err, dg.DaskGMMisError)
    message = str(err)
    missing = [w for w in words if w.lower() not in message.lower()]
    assert not missing, f"message {message!r} lacks {missing}"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("entry, bad, call, exc, words", CASES,
                         ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_bad_input(tmp_path, entry, bad, call, exc, words):
    with pytest.raises(exc) as info:
        call(tmp_path)
    _check(info, exc, words)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("bad, damage, entry, exc, words", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupted_catalog(tmp_path, bad, damage, entry, exc, words):
    path = _corrupt(tmp_path, damage)
    with pytest.raises(exc) as info:
        _run_on_catalog(entry, path)
    _check(info, exc, words)
    assert "cat.zarr" in str(info.value)     # the store is always named


def test_corrupted_catalog_errors_survive_a_distributed_client(cluster_client, tmp_path):
    """Reads run on workers: the CatalogError (not a codec error) reaches the caller."""
    path = _corrupt(tmp_path, lambda p: _truncate(p / "data" / "c" / "2" / "0"))
    with pytest.raises(dg.CatalogError, match="rows 100..149"):
        fit(model(), str(path), client=cluster_client)


@pytest.mark.parametrize("bad, make, words", MODEL_FILES, ids=[c[0] for c in MODEL_FILES])
def test_bad_model_file(tmp_path, monkeypatch, bad, make, words):
    monkeypatch.chdir(tmp_path)                  # where Evil would write PWNED
    path = make(tmp_path)
    with pytest.raises(dg.ModelFileError) as info:
        dg.GMM.load(path)
    _check(info, dg.ModelFileError, words + [str(path)])
    assert not os.path.exists("PWNED"), "a model file executed code"


def test_untampered_model_file_loads(tmp_path):
    """The checksum does not reject a file as saved (the edit above is what fails)."""
    path = _model_file(tmp_path)
    g = dg.GMM.load(path)
    np.testing.assert_array_equal(g.mean, model().mean)
    assert g.background.amp == 0.1


def test_model_without_checksum_still_loads(tmp_path):
    """Files written before the checksum existed (same version) stay readable."""
    path = tmp_path / "m.npz"
    model().save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["meta"].tobytes())
    del meta["sha256"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    np.testing.assert_array_equal(dg.GMM.load(path).mean, model().mean)


# seeds at which the importance weights' Monte-Carlo error alone left f > 0 before the
# count of observed candidates was checked (the fit then ran with N_orig ~ N / f, f ~ 1e-3)
@pytest.mark.parametrize("seed", [0, 9, 10, 14, 16])
def test_selection_zero_wherever_the_model_puts_mass_is_refused_for_every_seed(seed):
    only_the_rows = lambda c: np.isin(c[:, 0], INSIDE[:, 0]).astype(float)   # noqa: E731
    with pytest.raises(dg.CallbackError, match="rows drawn from the model has selection "
                                               "probability 0"):
        fit(model(), INSIDE, sel_callback=only_the_rows, rng=seed)


def test_every_error_is_also_a_builtin_error():
    """``except ValueError`` (TypeError, OSError...) keeps working for callers."""
    assert issubclass(dg.InputError, ValueError)
    assert issubclass(dg.InputTypeError, TypeError)
    assert issubclass(dg.CatalogError, ValueError)
    assert issubclass(dg.CatalogNotFoundError, FileNotFoundError)
    assert issubclass(dg.ModelFileError, ValueError)
    assert issubclass(dg.NumericalError, ArithmeticError)
    assert issubclass(dg.CallbackError, ValueError)
    assert issubclass(dg.CheckpointError, ValueError)
    assert issubclass(OutputExistsError, FileExistsError)
    assert issubclass(OutputError, OSError)
    for exc in (OutputError, OutputExistsError):
        assert issubclass(exc, dg.DaskGMMisError)


def test_matrix_covers_every_public_entry_point():
    """The table names each public entry point (the doc is generated from it)."""
    entries = {c[0] for c in CASES}
    assert {"fit", "draw", "GMM()", "GMM.__call__", "GMM.logL", "GMM.draw", "GMM.condition",
            "GMM.save", "Background()", "write_catalog", "open_catalog"} <= entries
    assert {c[2] for c in CORRUPT} == {"open", "fit", "posterior", "bic"}


SCIENCE = [
    # (bad input, arguments, exception, words) - for each of posterior, bic, aic, score
    ("gmm is not a GMM", lambda: ("gmm", X), dg.InputTypeError, ["gmm", "GMM", "str"]),
    ("data D != model D", lambda: (model(), np.ones((4, 3))), dg.InputError,
     ["data", "D=3", "D=2"]),
    ("Inf in data", lambda: (model(), at(X, (11, 0), np.inf)), dg.InputError,
     ["data", "row 11, column 0 is inf"]),
    ("negative variance", lambda: (model(), X, at(VAR, (12, 1), -2.0)), dg.InputError,
     ["covar", "row 12, column 1", "negative variance"]),
    ("full noise not PSD", lambda: (model(), X, at(tiled(np.eye(2)), 13, NOT_PD)),
     dg.InputError, ["covar", "row 13 is not positive semi-definite"]),
    ("covar of strings", lambda: (model(), X, "S"), dg.InputTypeError,
     ["covar", "expected a numeric array"]),
    ("missing catalog", lambda: (model(), "no-such-catalog.zarr"), dg.CatalogNotFoundError,
     ["no-such-catalog.zarr does not exist"]),
    ("footprint D != model D", lambda: (model(), X, None, dg.Background(([0], [1]), 0.1)),
     dg.InputError, ["background", "footprint has D=1", "D=2"]),
    ("model covariance not PD", lambda: (with_params(covar=np.array([NOT_PD, np.eye(2)])), X),
     dg.InputError, ["gmm.covar[0]", "positive-definite"]),
    ("amplitudes summing to 1e300", lambda: (with_params(amp=np.array([1e300, 0.5])), X),
     dg.InputError, ["gmm.amp", "sum to 1e+300", "expected a sum of 1", "amp / amp.sum()"]),
    ("all-zero amplitudes", lambda: (with_params(amp=np.zeros(2)), X),
     dg.InputError, ["gmm.amp", "every amplitude is zero"]),
    ("amplitudes + background share != 1", lambda: (model(), X, None, dg.Background(([-9, -9], [9, 9]), 0.1)),
     dg.InputError, ["gmm.amp", "sum to 1 and the background's to 0.1", "expected a total of 1"]),
]


@pytest.mark.parametrize("function", ["posterior", "bic", "aic", "score"])
@pytest.mark.parametrize("bad, args, exc, words", SCIENCE, ids=[c[0] for c in SCIENCE])
def test_science_outputs_refuse_bad_input(function, bad, args, exc, words):
    call = getattr(dg, function)
    with pytest.raises(exc) as info:
        out = call(*args())
        if function == "posterior":
            out.compute()
    _check(info, exc, words)


def test_score_of_rows_without_features():
    with pytest.raises(dg.InputError, match="no row has an observed feature"):
        dg.score(model(), np.full((3, 2), np.nan))


# -------------------------------------------------------------------- CLI

cli = pytest.importorskip("daskgmmis.cli", reason="the CLI module is not importable")


def _cli(*args):
    from click.testing import CliRunner

    return CliRunner().invoke(cli.main, [str(a) for a in args])


CLI_CASES = [
    # (bad input, args given the scratch dir, words of the one error line)
    ("fit: missing catalog", lambda d: ["fit", d / "none.zarr", "-K", "2", "--out", d / "m.npz",
                                        "--scheduler", "threads"],
     ["none.zarr does not exist"]),
    ("fit: truncated chunk", lambda d: ["fit", _corrupt(d, lambda p: _truncate(p / "data" / "c" / "2" / "0")),
                                        "-K", "2", "--out", d / "m.npz", "--scheduler", "threads"],
     ["cat.zarr/data", "rows 100..149", "corrupted"]),
    ("fit: deleted chunk", lambda d: ["fit", _corrupt(d, lambda p: os.remove(p / "data" / "c" / "0" / "0")),
                                      "-K", "2", "--out", d / "m.npz", "--scheduler", "threads"],
     ["cat.zarr/data", "3 of its 4 chunks"]),
    ("info: tampered model", lambda d: ["info", _model_file(d, mean=np.ones((2, 2)))],
     ["m.npz", "checksum"]),
    ("info: hostile model", lambda d: ["info", _hostile(d, "amp")],
     ["m.npz", "unpickling can run code"]),
    ("sample: model of another version", lambda d: ["sample", _model_file(d, version=7), "-n", "5",
                                                    "--out", d / "s.zarr"],
     ["model format version 7"]),
]


@pytest.mark.parametrize("bad, args, words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, bad, args, words):
    monkeypatch.chdir(tmp_path)
    result = _cli(*args(tmp_path))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("daskgmmis") and "error:" in lines[-1], result.stderr
    missing = [w for w in words if w not in lines[-1]]
    assert not missing, f"{lines[-1]!r} lacks {missing}"
    assert "Traceback" not in result.output
    assert not os.path.exists("PWNED")
    # a failed command leaves no output behind
    assert not glob.glob(str(tmp_path / "m.npz*")) or "fit" not in bad
    assert not glob.glob(str(tmp_path / "s.zarr*"))


def test_documented_matrix_matches_the_tests():
    """docs/bad-input.md lists every case of this module, with its exception."""
    doc_path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "bad-input.md")
    with open(doc_path) as f:
        doc = f.read()
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    rows = [f"| `{e}` | {esc(b)} | `{x.__name__}` |" for e, b, _, x, _ in CASES]
    rows += [f"| {esc(b)} | " for b, *_ in CORRUPT + MODEL_FILES + CLI_CASES]
    rows += [f"| {esc(b)} | `{x.__name__}` |" for b, _, x, _ in SCIENCE]
    missing = [r for r in rows if r not in doc]
    assert not missing, f"docs/bad-input.md lacks {missing[:5]}"


def markdown_tables() -> str:
    """The tables of docs/bad-input.md, from the case lists above."""
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    words = lambda ws: ", ".join(f"`{esc(w)}`" for w in ws)  # noqa: E731
    where = {"open": "`open_catalog` (and every function that opens a path)", "fit": "`fit`",
             "posterior": "`posterior(...).compute()`", "bic": "`bic` / `aic` / `score`"}
    parts = [
        ["| Entry point | Bad input | Exception | Message contains |", "|---|---|---|---|"]
        + [f"| `{e}` | {esc(b)} | `{x.__name__}` | {words(ws)} |" for e, b, _, x, ws in CASES],
        ["| Bad input | Exception | Message contains |", "|---|---|---|"]
        + [f"| {esc(b)} | `{x.__name__}` | {words(ws)} |" for b, _, x, ws in SCIENCE],
        ["| Damage to the store | Where it is caught | Exception | Message contains |",
         "|---|---|---|---|"]
        + [f"| {esc(b)} | {where[e]} | `{x.__name__}` | {words(ws)} |"
           for b, _, e, x, ws in CORRUPT],
        ["| File | Message contains (besides the path) |", "|---|---|"]
        + [f"| {esc(b)} | {words(ws)} |" for b, _, ws in MODEL_FILES],
        ["| Command | Error line contains |", "|---|---|"]
        + [f"| {esc(b)} | {words(ws)} |" for b, _, ws in CLI_CASES],
    ]
    return "\n\n".join("\n".join(p) for p in parts)


if __name__ == "__main__":      # python tests/test_bad_input.py: print the doc's tables
    print(markdown_tables())
