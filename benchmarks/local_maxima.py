"""How often does one start reach the best maximum with many overlapping components?

bench_truncation.py's population (K=8 correlated components in D=4, means uniform in
[-6, 6]^4) drawn without noise and cut at the 70 % quantile of its first feature (about
200,000 rows kept) - a catalog where components overlap. It is fitted *without* the
selection, so that scikit-learn's ``GaussianMixture`` fits the same likelihood: daskgmmis
with every option at its default (one start, ``rng`` 0-3), with ``n_init=4``, with
``split_n_merge=3``, and
scikit-learn with ``init_params`` "kmeans" and "k-means++" (``random_state`` 0-3, its
``n_init=1``). Printed: the final mean log-likelihood per row of each fit, and that of
EM from the truth (the best maximum found).

Run: python benchmarks/local_maxima.py [--seeds 4] [--no-sklearn]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

import daskgmmis as dg
from daskgmmis.selection import Box

sys.path.insert(0, os.path.dirname(__file__))
from bench_truncation import truth_model  # noqa: E402


def noiseless_cut_catalog():
    """``(truth, sel, X, n_pop)``: bench_truncation.py's population without noise, cut
    at the 70 % quantile of feature 0 (200,248 rows of a population of 285,714)."""
    truth = truth_model()
    cut = float(np.quantile(truth.draw(400_000, rng=1)[:, 0], 0.7))
    sel = Box(upper=[cut, np.inf, np.inf, np.inf])
    n_pop = int(2e5 / 0.7)
    X, _, _ = dg.draw(truth, orig_size=n_pop, sel_callback=sel, rng=2)
    return truth, sel, X, n_pop


def _fit(label, g, X, **kw):
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = dg.fit(g, X, estimate_mc_error=False, **kw)
    print(f"{label}: logL {res.logL:.6f}, {res.n_iter} iterations, converged "
          f"{res.converged} ({time.perf_counter() - t:.0f} s)", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--no-sklearn", action="store_true")
    args = ap.parse_args(argv)
    truth, _, X, _ = noiseless_cut_catalog()
    print(f"{len(X)} rows, K={truth.K}, D={truth.D}")
    _fit("EM from the truth", truth.copy(), X, init_method="none")
    for rs in range(args.seeds):
        _fit(f"daskgmmis default, rng {rs}", dg.GMM(truth.K, truth.D), X, rng=rs)
    for rs in range(args.seeds):
        _fit(f"daskgmmis n_init=4, rng {rs}", dg.GMM(truth.K, truth.D), X, rng=rs, n_init=4)
    for rs in range(args.seeds):
        _fit(f"daskgmmis split_n_merge=3, rng {rs}", dg.GMM(truth.K, truth.D), X, rng=rs,
             split_n_merge=3)
    if args.no_sklearn:
        return
    from sklearn.mixture import GaussianMixture
    for init in ("kmeans", "k-means++"):
        for rs in range(args.seeds):
            t = time.perf_counter()
            gm = GaussianMixture(truth.K, init_params=init, random_state=rs, max_iter=1000,
                                 tol=1e-6).fit(X)
            print(f"scikit-learn {init}, random_state {rs}: logL {gm.score(X):.6f}, "
                  f"{gm.n_iter_} iterations, converged {gm.converged_} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
