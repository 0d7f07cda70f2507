"""What ``FitResult.mc_error`` costs: its seconds against the fit's (``estimate_mc_error``).

Default fits (``rng`` 301) of the demo, cut2d and cut4d scenarios of
``truncation_accuracy.py`` (seed 1), and a fit from the truth of local_maxima.py's
catalog (200,248 rows, K=8, D=4: 121 packed parameters, so 121 Jacobian probes).
Printed per fit: iterations, the fit's seconds, the median iteration, and the seconds
of the Monte-Carlo error (from the ``daskgmmis`` logger) as median iterations and as a
share of the fit.

Run: python benchmarks/mc_error_cost.py
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings

import numpy as np

import daskgmmis as dg

sys.path.insert(0, os.path.dirname(__file__))
from local_maxima import noiseless_cut_catalog  # noqa: E402
from truncation_accuracy import scenario  # noqa: E402


class _McSeconds(logging.Handler):
    """Keeps the seconds of the last "Monte-Carlo error" record."""

    seconds = float("nan")

    def emit(self, record):
        m = re.search(r"Monte-Carlo error: .*\(([\d.]+) s\)", record.getMessage())
        if m:
            self.seconds = float(m.group(1))


def _timed(handler, label, fit):
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fit()
    total = time.perf_counter() - t
    med = float(np.median(res.seconds_per_iter))
    print(f"{label}: {res.n_iter} iterations, fit {total:.1f} s, median iteration "
          f"{med:.4f} s; mc_error {handler.seconds:.2f} s = {handler.seconds / med:.0f} "
          f"median iterations = {100 * handler.seconds / total:.0f} % of the fit", flush=True)


def main():
    logger = logging.getLogger("daskgmmis")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = _McSeconds()
    logger.addHandler(handler)
    for name in ("demo", "cut2d", "cut4d"):
        truth, X, covar, sel, cb, n = scenario(name, 1)
        _timed(handler, f"{name} (default fit)", lambda: dg.fit(
            dg.GMM(truth.K, truth.D), X, covar, sel_callback=sel, covar_callback=cb, rng=301))
    truth, sel, X, _ = noiseless_cut_catalog()
    _timed(handler, f"{len(X)} rows, K=8, D=4 (from the truth)", lambda: dg.fit(
        truth.copy(), X, sel_callback=sel, rng=3, init_method="none"))


if __name__ == "__main__":
    main()
