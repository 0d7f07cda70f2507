"""Truncated fits with every option at its default against a maximum-likelihood reference.

For each scenario and seed a catalog is simulated; the *reference* is a long run
started at the truth (``init_method="none"``, ``oversampling=32``, ``tol=1e-8``)
and the *default* fit passes only data, noise, ``sel_callback``,
``covar_callback`` and ``rng``. Printed per seed: N_orig of both over the true
population size, KL(truth || fit) of both (Monte Carlo, 40,000 draws), the
default fit's iterations and ``converged``, and - where the library reports one -
its Monte-Carlo standard error of N_orig. For the hard half-space cuts (``cut2d``,
``cut4d``, and ``full``, where the cut acts on the noisy values) the exact
maximum-likelihood answer is computed as well, without any imputation
(``tests/reference.py``: the observed fraction is closed-form, or a 1-D integral
with noise); for ``demo`` likewise, with f by quadrature over the box
(``selection_mle``), and the
default fit's exact truncated log-likelihood is compared with its maximum: the
gap in nats of total log-likelihood, where 0.5 is one standard error along the
worst-determined direction.

Scenarios:

* ``demo``: pyGMMis's demo geometry (box with a circular hole, noise sd 0.5) at
  4,000 population rows;
* ``cut2d``: 3 components in 2-D, hard half-space cut removing ~40 %, 20,000 rows;
* ``cut4d``: 3 components in 4-D, the same kind of cut, 20,000 rows;
* ``soft``: the 2-D population behind a logistic (soft) cut;
* ``full``: ``cut2d`` with per-row full noise covariances.

Run: python benchmarks/truncation_accuracy.py [--scenario S ...] [--seeds 1 2 ...]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import os
import sys

import daskgmmis as dg
from daskgmmis import demo
from daskgmmis.selection import Box, Sigmoid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from reference import (halfspace_loglike, halfspace_mle, selection_grid,  # noqa: E402
                       selection_loglike, selection_mle)


class SharedNoise:
    def __init__(self, S):
        self.S = np.asarray(S, float)

    def __call__(self, coords):
        return self.S


class FullNoise:
    """Per-row full noise whose size grows with the distance from the origin."""

    def __init__(self, D):
        self.D = D

    def __call__(self, coords):
        s = 0.1 + 0.02 * np.abs(coords[:, :1])
        base = np.eye(self.D) + 0.3 * (np.ones((self.D, self.D)) - np.eye(self.D))
        return s[:, :, None] * base[None]

    @staticmethod
    def first_variance(x0):
        """The noise variance of the first feature at true values ``x0`` (n,)."""
        return 0.1 + 0.02 * np.abs(x0)


def three(D):
    g = dg.GMM(3, D)
    g.amp = np.array([0.3, 0.45, 0.25])
    m = np.zeros((3, D))
    m[0, :2], m[1, :2], m[2, :2] = [-3.0, 0.0], [0.5, 2.0], [2.0, -2.0]
    g.mean = m
    A = np.random.default_rng(11).normal(size=(3, D, D)) * 0.4
    g.covar = A @ A.transpose(0, 2, 1) + 0.6 * np.eye(D)
    return g


def cut_threshold(truth, frac_removed=0.4):
    x = truth.draw(400_000, rng=99)[:, 0]
    return float(np.quantile(x, 1 - frac_removed))


def scenario(name, seed):
    """(truth, X, covar, sel, covar_callback, true population size)."""
    if name == "demo":
        truth, sel = demo.truth_model(), demo.selection()
        cb = SharedNoise(demo.NOISE_SD**2 * np.eye(2))
        X, covar, n = dg.draw(truth, orig_size=4000, sel_callback=sel, covar_callback=cb,
                              rng=seed)
        return truth, X, covar, sel, cb, n
    D = 4 if name == "cut4d" else 2
    truth = three(D)
    t = cut_threshold(truth)
    upper = [t] + [np.inf] * (D - 1)
    sel = (Sigmoid(0, threshold=t, width=0.5, direction=-1) if name == "soft"
           else Box(upper=upper))
    cb = FullNoise(D) if name == "full" else None
    X, covar, n = dg.draw(truth, orig_size=20_000, sel_callback=sel, covar_callback=cb,
                          rng=seed)
    return truth, X, covar, sel, cb, n


def kl(truth, fit, n=40_000, seed=0):
    s = truth.draw(n, rng=seed)
    return float(np.mean(truth(s, as_log=True) - fit(s, as_log=True)))


def run(name, seed, ref_maxiter):
    truth, X, covar, sel, cb, n = scenario(name, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = truth.copy()
        t = time.perf_counter()
        rr = dg.fit(ref, X, covar, sel_callback=sel, covar_callback=cb, init_method="none",
                    oversampling=32, tol=1e-8, maxiter=ref_maxiter, rng=1000 + seed)
        t_ref = time.perf_counter() - t
        g = dg.GMM(truth.K, truth.D)
        t = time.perf_counter()
        rd = dg.fit(g, X, covar, sel_callback=sel, covar_callback=cb, rng=seed)
        t_def = time.perf_counter() - t
    mc = getattr(rd, "mc_error", None)
    mc_n = None if not mc else mc.get("N_orig")
    print(f"{name:6s} seed {seed}: N={len(X)} true N_orig={n}  ref N_orig/n={rr.N_orig / n:.4f} "
          f"KL={kl(truth, ref):.4f} it={rr.n_iter} conv={rr.converged} ({t_ref:.0f}s) | "
          f"default N_orig/ref={rd.N_orig / rr.N_orig:.4f} KL={kl(truth, g):.4f} "
          f"it={rd.n_iter} conv={rd.converged} ({t_def:.1f}s)"
          + ("" if mc_n is None else f" mc_error(N_orig)/N_orig={mc_n / rd.N_orig:.4f}"),
          flush=True)
    if name == "demo":
        # shared noise and a selection inside a 10 x 10 box: f by quadrature
        grid, omega_area = selection_grid(sel, [0.0, 0.0], [10.0, 10.0])
        exact, n_exact = selection_mle(X, cb.S, grid, omega_area, [truth, g, ref])
        top = selection_loglike(exact, X, cb.S, grid, omega_area)
        print(f"       exact ML: N_orig/n={n_exact / n:.4f} KL={kl(truth, exact):.4f} | "
              f"default N_orig/exact={rd.N_orig / n_exact:.4f}, logL gap "
              f"{top - selection_loglike(g, X, cb.S, grid, omega_area):.4f} nats | reference "
              f"N_orig/exact={rr.N_orig / n_exact:.4f}, gap "
              f"{top - selection_loglike(ref, X, cb.S, grid, omega_area):.4f} nats", flush=True)
    if name in ("cut2d", "cut4d", "full"):
        upper = float(sel.upper[0])
        # with per-row noise the cut acts on the noisy values: the rows' covariances
        # and the noise of the first feature at a true value enter the exact likelihood
        noisy = (covar, FullNoise.first_variance) if name == "full" else (None, None)
        exact, n_exact = halfspace_mle(X, 0, upper, [truth, g, ref], *noisy)
        top = halfspace_loglike(exact, X, 0, upper, *noisy)
        print(f"       exact ML: N_orig/n={n_exact / n:.4f} KL={kl(truth, exact):.4f} | "
              f"default N_orig/exact={rd.N_orig / n_exact:.4f}, logL gap "
              f"{top - halfspace_loglike(g, X, 0, upper, *noisy):.4f} nats | reference "
              f"N_orig/exact={rr.N_orig / n_exact:.4f}, gap "
              f"{top - halfspace_loglike(ref, X, 0, upper, *noisy):.4f} nats", flush=True)
    return rr, rd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", nargs="*", default=["demo", "cut2d"])
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--ref-maxiter", type=int, default=3000)
    args = ap.parse_args(argv)
    for name in args.scenario:
        for seed in args.seeds:
            run(name, seed, args.ref_maxiter)


if __name__ == "__main__":
    main()
