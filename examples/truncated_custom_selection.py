"""A truncated catalog with a custom, smooth selection function.

The selection is a plain Python callable - not one of the built-ins - of the
kind a survey's completeness model gives: rows fainter than a limiting
"magnitude" (a linear combination of the features) are observed with a
probability that falls off smoothly, and a detector gap removes a band
entirely. ``daskgmmis.draw`` simulates the observed catalog; the fit is then
run ignoring the selection and with it (``sel_callback``): the truncation-aware
fit recovers the amplitudes, means and the population size ``N_orig`` of the
population before selection, where the naive one is biased.

The selection is a module-level class with plain attributes, so it pickles
(by value from ``__main__``) to the workers of a distributed cluster.

Run: python examples/truncated_custom_selection.py [--rows N] [--workers W]
"""

from __future__ import annotations

import argparse
import contextlib
import warnings

import numpy as np
from scipy.special import expit

import daskgmmis as dg
from daskgmmis.cluster import client_context
from daskgmmis.estimator import fit_best


class Completeness:
    """Ω(x) = logistic((m_lim - m(x)) / width) outside a gap, 0 inside it.

    ``m(x) = x @ weights`` plays the role of a magnitude; rows in the gap
    ``gap[0] < x[:, 1] < gap[1]`` are never observed. Vectorized; a missing
    coordinate counts as passing (the survey could not cut on it).
    """

    def __init__(self, weights, m_lim: float, width: float, gap=(2.5, 3.0)):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.m_lim, self.width, self.gap = float(m_lim), float(width), tuple(gap)

    def __call__(self, coords):
        x = np.asarray(coords, dtype=np.float64)
        m = np.nan_to_num(x) @ self.weights
        omega = expit((self.m_lim - m) / self.width)
        in_gap = (x[:, 1] > self.gap[0]) & (x[:, 1] < self.gap[1])
        return np.where(in_gap, 0.0, omega)


def truth_model() -> dg.GMM:
    g = dg.GMM(2, 2)
    g.amp = np.array([0.55, 0.45])
    g.mean = np.array([[0.0, 0.0], [3.0, 4.0]])
    g.covar = np.array([[[1.0, 0.3], [0.3, 0.8]], [[0.7, -0.2], [-0.2, 1.2]]])
    return g


def _match(g: dg.GMM, truth: dg.GMM) -> list:
    return [int(np.argmin(((g.mean - m) ** 2).sum(1))) for m in truth.mean]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000, help="population rows simulated")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--tol", type=float, default=1e-4, help="EM convergence threshold")
    ap.add_argument("--workers", type=int, default=2,
                    help="LocalCluster workers; 0 runs on dask's threaded scheduler")
    args = ap.parse_args(argv)

    truth = truth_model()
    sel = Completeness(weights=[0.5, 0.5], m_lim=2.5, width=0.4)
    noise = 0.1 * np.eye(2)
    x, covar, n_pop = dg.draw(truth, orig_size=args.rows, sel_callback=sel,
                              covar_callback=lambda v: noise, rng=args.seed)
    print(f"observed {len(x)} of {n_pop} rows ({len(x) / n_pop:.0%})")
    out = {"N": len(x), "N_pop": n_pop}
    ctx = contextlib.nullcontext(None) if args.workers <= 0 else \
        client_context(n_workers=args.workers)
    with ctx as client, warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.ConvergenceWarning)
        for name, kwargs in (("naive", {}),
                             ("truncated", {"sel_callback": sel, "prefit": True})):
            g = dg.GMM(2, 2)
            res = fit_best(g, x, covar, n_init=args.restarts, rng=args.seed, tol=args.tol,
                           client=client, **kwargs)
            k = _match(g, truth)
            amp = g.amp[k] / g.amp.sum()
            out[name] = {"amp": amp, "mean": g.mean[k], "N_orig": res.N_orig,
                         "mean_error": float(np.abs(g.mean[k] - truth.mean).max()),
                         "amp_error": float(np.abs(amp - truth.amp).max())}
            print(f"{name:9s}: amp {np.round(amp, 3)} (truth {truth.amp}), largest mean error "
                  f"{out[name]['mean_error']:.3f}, N_orig {res.N_orig:.0f} (truth {n_pop})")
    return out


if __name__ == "__main__":
    main()
