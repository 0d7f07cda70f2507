"""Cost of a truncated EM iteration against an untruncated one, measured in one run.

N = 2e5 observed rows, D = 4, K = 8, a hard half-space cut keeping about 70 % of the
population; shared, diagonal and full per-row noise. For each noise kind the same
observed catalog is fitted from the truth twice - with ``sel_callback`` (imputation)
and without - for a few plain EM iterations (``accelerate=False``, ``tol=0``), and
the median ``seconds_per_iter`` (first iteration, with numba warm-up, left out) is
reported for both. The time spent inside the user's ``sel_callback`` and
``covar_callback`` in those iterations is measured by wrapping them (their time in a
fit of one iteration, where the sample is drawn, taken out) and reported apart: the
"truncated - callbacks" column is the library's own cost. pyGMMis's time per
iteration on the same data is printed when it is importable.

Run: python benchmarks/bench_truncation.py [--rows N] [--iters I] [--oversampling O ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np

import daskgmmis as dg
from daskgmmis.selection import Box

D, K = 4, 8


def truth_model(seed=0):
    rng = np.random.default_rng(seed)
    g = dg.GMM(K, D)
    g.amp = rng.dirichlet(np.full(K, 5.0))
    g.mean = rng.uniform(-6, 6, size=(K, D))
    A = rng.normal(size=(K, D, D)) * 0.6
    g.covar = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(D)
    return g


class Timed:
    """A callback wrapper that adds the seconds spent inside it to ``self.seconds``."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, coords):
        t = time.perf_counter()
        try:
            return self.fn(coords)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1


class Noise:
    """covar_callback of one noise kind: shared (D, D), diagonal (n, D) or full (n, D, D)."""

    def __init__(self, kind):
        self.kind = kind
        self.S = np.diag([0.3, 0.2, 0.25, 0.35])

    def __call__(self, coords):
        n = len(coords)
        if self.kind == "shared":
            return self.S
        if self.kind == "diag":
            return np.broadcast_to(np.diag(self.S), (n, D)).copy()
        return np.broadcast_to(self.S, (n, D, D)).copy()


def catalog(n_rows, kind, threshold, seed=1):
    truth = truth_model()
    sel = Box(upper=[threshold, np.inf, np.inf, np.inf])
    X, covar, n_pop = dg.draw(truth, obs_size=n_rows, sel_callback=sel,
                              covar_callback=Noise(kind), rng=seed)
    return truth, sel, X, covar, n_pop


def median_iter(res, callbacks=(), first=0.0):
    """Median seconds of the iterations after the first, and the callbacks' seconds
    per such iteration: their total less ``first``, the seconds they took in a fit
    of one iteration (the sample's draw; the same calls, the fit being deterministic).
    """
    steps = res.seconds_per_iter[1:]
    later = sum(c.seconds for c in callbacks) - first
    return statistics.median(steps), max(later, 0.0) / max(len(steps), 1)


def run_kind(kind, n_rows, iters, oversamplings, threshold):
    truth, sel, X, covar, n_pop = catalog(n_rows, kind, threshold)
    f = len(X) / n_pop
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dg.fit(truth.copy(), X, covar, init_method="none", maxiter=iters, tol=0,
                     accelerate=False, rng=0)
        out["plain"] = median_iter(res)[0]
        for o in oversamplings:
            cbs = {}
            for n_iter in (1, iters):
                cbs[n_iter] = (Timed(sel), Timed(Noise(kind)))
                res = dg.fit(truth.copy(), X, covar, init_method="none", maxiter=n_iter,
                             tol=0, accelerate=False, rng=0, sel_callback=cbs[n_iter][0],
                             covar_callback=cbs[n_iter][1], oversampling=o)
            first = sum(c.seconds for c in cbs[1])
            t, cb = median_iter(res, cbs[iters], first)
            out[o] = (t, cb, res.N_orig / n_pop)
    return f, out


def time_pygmmis(X, covar, truth, sel, iters):
    try:
        import pygmmis
    except ImportError:
        return None
    gmm = pygmmis.GMM(K=K, D=D)
    gmm.amp, gmm.mean, gmm.covar = truth.amp.copy(), truth.mean.copy(), truth.covar.copy()
    t = time.perf_counter()
    # pyGMMis >= 1.2 refuses a noise covariance without a callback for its imputed
    # samples (the shared matrix here)
    pygmmis.fit(gmm, X, covar=covar, init_method="none", sel_callback=sel, maxiter=iters,
                tol=0, rng=np.random.RandomState(0), covar_callback=lambda coords: covar)
    return (time.perf_counter() - t) / iters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--oversampling", type=float, nargs="*", default=None,
                    help="values to time (default: the library's default only)")
    ap.add_argument("--kinds", nargs="*", default=["shared", "diag", "full"])
    args = ap.parse_args(argv)
    import inspect
    default_os = inspect.signature(dg.fit).parameters["oversampling"].default
    oversamplings = args.oversampling or [default_os]
    # threshold chosen so that about 70 % of the population is kept
    threshold = float(np.quantile(truth_model().draw(400_000, rng=5)[:, 0], 0.70))
    print(f"cores: {os.cpu_count()}, N={args.rows}, D={D}, K={K}, default oversampling "
          f"{default_os}")
    print(f"{'noise':7s} {'f':>5s} {'oversampling':>12s} {'untrunc s/it':>12s} "
          f"{'trunc s/it':>10s} {'callbacks':>9s} {'trunc-cb':>8s} {'ratio':>6s} "
          f"{'N_orig/true':>11s}")
    for kind in args.kinds:
        f, out = run_kind(kind, args.rows, args.iters, oversamplings, threshold)
        for o in oversamplings:
            t, cb, nrat = out[o]
            print(f"{kind:7s} {f:5.2f} {o:12g} {out['plain']:12.3f} {t:10.3f} {cb:9.3f} "
                  f"{t - cb:8.3f} {(t - cb) / out['plain']:6.2f} {nrat:11.4f}", flush=True)
    truth, sel, X, covar, _ = catalog(args.rows, "shared", threshold)
    tp = time_pygmmis(X, covar, truth, sel, 3)
    print("pyGMMis: not importable" if tp is None else f"pyGMMis shared noise: {tp:.3f} s/iter")


if __name__ == "__main__":
    main()
