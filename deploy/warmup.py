"""Compile daskgmmis's numba kernels into NUMBA_CACHE_DIR (run at image build time).

Runs one tiny fit per kind of noise (none, shared, diagonal, full) with missing values,
which reaches every E-step kernel, then checks that the cache was written.
"""

import os
import warnings

import numpy as np

import daskgmmis as dg


def main() -> None:
    rng = np.random.default_rng(0)
    n, D = 4000, 3
    x = rng.normal(size=(n, D))
    x[rng.random(x.shape) < 0.1] = np.nan
    x[np.isnan(x).all(axis=1), 0] = 0.0
    noises = [None, 0.1 * np.eye(D), np.full((n, D), 0.1), np.tile(0.1 * np.eye(D), (n, 1, 1))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for noise in noises:
            dg.fit(dg.GMM(2, D), x, noise, init_method="minmax", maxiter=2, tol=0, rng=0)
    cache = os.environ.get("NUMBA_CACHE_DIR", "")
    files = [f for _, _, fs in os.walk(cache) for f in fs] if cache else []
    if not files:
        raise SystemExit(f"warmup: no numba cache files written under {cache!r}")
    print(f"warmup: {len(files)} numba cache files in {cache}")


if __name__ == "__main__":
    main()
