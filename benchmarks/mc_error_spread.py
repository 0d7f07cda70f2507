"""Is ``FitResult.mc_error["N_orig"]`` honest? The spread of N_orig over imputation seeds.

One catalog of a scenario of ``truncation_accuracy.py`` (seed 1) is fitted with every
option at its default, ``rng`` = 300, 301, ...; printed per fit: N_orig over the true
population size, iterations, ``converged`` and the reported standard error; at the end
the standard deviation of N_orig over the fits against the mean reported error (honest:
a ratio within a factor 2). The seeds change the start (k-means||) as well as the
imputation sample, as a user's reruns would.

Run: python benchmarks/mc_error_spread.py [--scenario cut2d] [--fits 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

import daskgmmis as dg

sys.path.insert(0, os.path.dirname(__file__))
from truncation_accuracy import scenario  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="cut2d")
    ap.add_argument("--fits", type=int, default=6)
    args = ap.parse_args(argv)
    truth, X, covar, sel, cb, n = scenario(args.scenario, 1)
    values, reported = [], []
    for i in range(args.fits):
        g = dg.GMM(truth.K, truth.D)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = dg.fit(g, X, covar, sel_callback=sel, covar_callback=cb, rng=300 + i)
        values.append(res.N_orig)
        reported.append(res.mc_error["N_orig"])
        print(f"rng {300 + i}: N_orig/true {res.N_orig / n:.4f}, {res.n_iter} iterations, "
              f"converged {res.converged}, mc_error/true {res.mc_error['N_orig'] / n:.4f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    spread = np.std(values, ddof=1)
    print(f"{args.scenario}: spread of N_orig / true {spread / n:.4f}, mean reported "
          f"{np.mean(reported) / n:.4f}, ratio {spread / np.mean(reported):.2f}")


if __name__ == "__main__":
    main()
