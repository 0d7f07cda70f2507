"""The pyGMMis demo scenario (Melchior & Goulding 2016), end to end on a LocalCluster.

A 2-D, 3-component population (pyGMMis's README truth) is observed with Gaussian
noise of standard deviation 0.5 through a selection that keeps only rows inside
the 10 x 10 box [0, 10]^2 and outside a circle of radius 2 centred at (6.5, 6).
400 population rows are simulated with :func:`daskgmmis.draw`; the observed ones
are fitted four ways, each from several random starts keeping the highest
likelihood:

1. plain EM (``fit``);
2. EM with deconvolution of the noise (``covar``);
3. EM with truncation: the selection function (``sel_callback``), imputing the
   unobserved population;
4. with both.

Each fit is judged by the mean log-likelihood of the 400 *original* (error-free,
pre-selection) rows, printed next to the truth's; a PNG shows the four fits'
density contours, the observed and original rows and the selection boundary.

Run: python examples/demo.py [--out DIR] [--seed S] [--seeds N] [--restarts R]
     (or: daskgmmis demo ...)
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from collections.abc import Sequence

import numpy as np

import daskgmmis as dg
from daskgmmis.cluster import dashboard_link, get_client
from daskgmmis.em import fit_best
from daskgmmis.selection import And, Box, Complement, Sphere

log = logging.getLogger("daskgmmis")

NOISE_SD = 0.5
N_SAMPLES = 400
DEFAULT_SEED = 8365          # pyGMMis's demo seed
# Starts of a truncated fit that run away (components spreading into the unobserved
# volume, N_orig growing) converge slowly and lose the likelihood contest anyway:
# capping their iterations bounds the demo's run time without changing the winner.
DEFAULT_MAXITER = 200

# (key, panel title, uses the noise covariance, uses the selection function)
VARIANTS = (
    ("plain", "EM", False, False),
    ("deconvolution", "EM + deconvolution", True, False),
    ("truncation", "EM + truncation", False, True),
    ("both", "EM + truncation + deconvolution", True, True),
)


def truth_model() -> dg.GMM:
    """The 3-component truth of pyGMMis's README demo, inside the 10 x 10 box."""
    g = dg.GMM(3, 2)
    amp = np.array([0.36060026, 0.27986906, 0.206774])
    g.amp = amp / amp.sum()
    g.mean = np.array([[0.08016886, 0.21300697],
                       [0.70306351, 0.6709532],
                       [0.01087670, 0.852077]]) * 10
    g.covar = np.array([[[0.08530014, -0.00314178], [-0.00314178, 0.00541106]],
                        [[0.03053402, 0.0125736], [0.0125736, 0.01075791]],
                        [[0.00258605, 0.00409287], [0.00409287, 0.01065186]]]) * 100
    return g


def selection() -> dg.selection.Selection:
    """Inside the box [0, 10]^2 and outside the circle of radius 2 at (6.5, 6)."""
    return And(Box([0.0, 0.0], [10.0, 10.0]), Complement(Sphere([6.5, 6.0], 2.0)))


class RecordingNoise:
    """Shared noise covariance that also keeps the error-free rows it is asked about.

    :func:`daskgmmis.draw` calls ``covar_callback`` with the true positions of
    *every* population row before adding noise and selecting, so the calls hold
    the original, noise-free sample - the rows the fits are judged on.
    """

    def __init__(self, matrix):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        self.calls: list = []

    def __call__(self, coords):
        self.calls.append(np.array(coords, dtype=np.float64))
        return self.matrix

    @property
    def rows(self) -> np.ndarray:
        return np.concatenate(self.calls)


def simulate(seed: int, n_samples: int = N_SAMPLES):
    """Observed rows, their shared noise covariance and the original rows.

    Returns
    -------
    observed : ndarray (n_obs, 2)
    noise : ndarray (2, 2)
    orig : ndarray (n_samples, 2)
    """
    noise = RecordingNoise(NOISE_SD**2 * np.eye(2))
    observed, covar, n_pop = dg.draw(truth_model(), orig_size=n_samples,
                                     sel_callback=selection(), covar_callback=noise,
                                     rng=np.random.SeedSequence([seed, 0]))
    assert n_pop == n_samples and noise.rows.shape == (n_samples, 2)
    return observed, covar, noise.rows


def _start_client(client, n_workers: int, verbose: bool):
    """(client or None, whether this call started it) from run_demo's ``client``."""
    if client == "threads":
        return None, False
    if client is not None:
        return client, False
    # a free port for the dashboard: a second demo (or a notebook's cluster) may hold 8787
    client = get_client(n_workers=n_workers, threads_per_worker=1, dashboard=":0")
    if verbose:
        print(f"LocalCluster with {n_workers} workers; dashboard: "
              f"{dashboard_link(client) or 'none (pip install daskgmmis[dashboard])'}")
    return client, True


def fit_variants(observed, noise, *, seed: int, n_restarts: int = 5, w: float = 0.1,
                 cutoff: float | None = 5.0, tol: float = 1e-4,
                 maxiter: int = DEFAULT_MAXITER,
                 oversampling: float = 8.0, client=None, K: int = 3) -> dict:
    """Fit the observed rows the four ways; {key: (GMM, FitResult, seconds)}."""
    sel = selection()
    out = {}
    for i, (key, title, deconvolve, truncate) in enumerate(VARIANTS):
        gmm = dg.GMM(K, 2)
        # a label above each fit's progress lines (the command shows the log)
        log.info("fit %d/%d: %s (%d starts)", i + 1, len(VARIANTS), title, n_restarts)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # a start that stops at maxiter is still a candidate: the best is kept
            warnings.simplefilter("ignore", dg.ConvergenceWarning)
            result = fit_best(
                gmm, observed, noise if deconvolve else None, n_init=n_restarts,
                rng=np.random.SeedSequence([seed, 1, i]), w=w, cutoff=cutoff, tol=tol,
                maxiter=maxiter, client=client,
                # pyGMMis's recipe: a truncated fit starts from the plain fit
                prefit=truncate, sel_callback=sel if truncate else None,
                oversampling=oversampling)
        out[key] = (gmm, result, time.perf_counter() - t0)
    return out


def plot_demo(path, fits: dict, observed, orig, truth_logl: float):
    """Four panels: each fit's density, the observed and original rows, the boundary.

    Returns the matplotlib Figure (also written to ``path``).
    """
    from daskgmmis import plots

    fig = plots.figure(figsize=(10, 10.4), layout="constrained")
    extent = (-5.0, 15.0, -5.0, 15.0)
    for p, (key, title, _, _) in enumerate(VARIANTS):
        gmm, result, _ = fits[key]
        ax = fig.add_subplot(2, 2, p + 1)
        # one legend (first panel) names the rows, the model and the selection boundary
        plots.density(gmm, ax=ax, extent=extent, data=observed, orig=orig,
                      sel_callback=selection(), columns=["x", "y"], legend=p == 0,
                      title=f"{title}\nlogL(original) = {gmm.logL(orig).mean():.3f}")
    fig.suptitle(f"pyGMMis demo scenario: {len(observed)} of {len(orig)} rows observed "
                 f"(noise sd {NOISE_SD}); truth logL(original) = {truth_logl:.3f}")
    plots.save_figure(fig, path)
    return fig


def run_demo(out_dir="demo-out", *, seed: int = DEFAULT_SEED, n_restarts: int = 5,
             n_samples: int = N_SAMPLES, client=None, n_workers: int = 2,
             figure: bool = True, verbose: bool = True, **fit_options) -> dict:
    """Run the scenario for one seed; return the numbers (and write the figure).

    Parameters
    ----------
    out_dir : str or os.PathLike
        Directory of the figure ``demo.png`` (created if needed).
    seed : int
        Seed of the simulation and of the fits.
    n_restarts : int
        Random starts per fit; the highest likelihood is kept.
    n_samples : int
        Population rows simulated (400 in the paper).
    client : distributed.Client, "threads", or None
        None starts a LocalCluster of ``n_workers`` worker processes (closed at the
        end); "threads" uses dask's threaded scheduler without a cluster.
    n_workers : int
        Workers of the LocalCluster.
    figure : bool
        Write ``demo.png``.
    verbose : bool
        Print the table.
    **fit_options
        Passed to :func:`fit_variants` (``w``, ``cutoff``, ``tol``, ``maxiter``,
        ``oversampling``).

    Returns
    -------
    dict
        ``seed``, ``n_samples``, ``n_observed``, ``truth`` (mean logL of the
        original rows under the truth), ``fits`` ({key: {"logL_orig", "logL",
        "n_iter", "converged", "N_orig", "seconds"}}), ``figure`` (path or None),
        ``dashboard`` (link or None).
    """
    observed, noise, orig = simulate(seed, n_samples)
    truth_logl = float(truth_model().logL(orig).mean())
    client, owned = _start_client(client, n_workers, verbose)
    dashboard = dashboard_link(client) if owned else None
    try:
        fits = fit_variants(observed, noise, seed=seed, n_restarts=n_restarts,
                            client=client, **fit_options)
    finally:
        if owned:
            client.close()
    out = {"seed": seed, "n_samples": n_samples, "n_observed": int(len(observed)),
           "truth": truth_logl, "fits": {}, "figure": None, "dashboard": dashboard}
    for key, (gmm, result, seconds) in fits.items():
        out["fits"][key] = {"logL_orig": float(gmm.logL(orig).mean()),
                            "logL": float(result.logL), "n_iter": int(result.n_iter),
                            "converged": bool(result.converged),
                            "N_orig": float(result.N_orig), "seconds": float(seconds)}
    if figure:
        os.makedirs(out_dir, exist_ok=True)
        out["figure"] = os.path.join(os.fspath(out_dir), "demo.png")
        plot_demo(out["figure"], fits, observed, orig, truth_logl)
    if verbose:
        print_table(out)
    return out


def print_table(out: dict) -> None:
    """The per-fit numbers of one run of :func:`run_demo`."""
    print(f"seed {out['seed']}: {out['n_observed']} of {out['n_samples']} rows observed")
    print(f"{'fit':34s} {'logL(original)':>14s} {'N_orig':>8s} {'iter':>5s} {'seconds':>8s}")
    print(f"{'truth':34s} {out['truth']:14.4f} {out['n_samples']:8d}")
    for key, title, _, _ in VARIANTS:
        f = out["fits"][key]
        print(f"{title:34s} {f['logL_orig']:14.4f} {f['N_orig']:8.1f} {f['n_iter']:5d} "
              f"{f['seconds']:8.1f}")
    if out.get("figure"):
        print(f"figure: {out['figure']}")


def run_benchmark(seeds: Sequence[int], out_dir="demo-out", *, client=None,
                  n_workers: int = 2, verbose: bool = True, **kwargs) -> dict:
    """The scenario over several seeds: mean and spread of logL(original) per fit.

    One cluster serves every seed; the figure is written for the first seed.

    Returns
    -------
    dict
        ``seeds``, ``runs`` (the :func:`run_demo` dicts), ``mean`` and ``std``
        ({"truth": ..., key: ...}) of the mean log-likelihood of the original rows.
    """
    seeds = list(seeds)
    client, owned = _start_client(client, n_workers, verbose)
    try:
        runs = [run_demo(out_dir, seed=s, client=client or "threads", figure=(i == 0),
                         verbose=verbose, **kwargs) for i, s in enumerate(seeds)]
    finally:
        if owned:
            client.close()
    table = {"truth": [r["truth"] for r in runs]}
    for key, *_ in VARIANTS:
        table[key] = [r["fits"][key]["logL_orig"] for r in runs]
    out = {"seeds": seeds, "runs": runs,
           "mean": {k: float(np.mean(v)) for k, v in table.items()},
           "std": {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
                   for k, v in table.items()}}
    if verbose:
        print(f"\nmean log-likelihood of the original rows over {len(seeds)} seeds "
              f"({seeds[0]}..{seeds[-1]}):")
        print(f"{'truth':34s} {out['mean']['truth']:9.4f} +- {out['std']['truth']:.4f}")
        for key, title, _, _ in VARIANTS:
            print(f"{title:34s} {out['mean'][key]:9.4f} +- {out['std'][key]:.4f}")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo-out", help="directory of demo.png")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--seeds", type=int, default=1,
                    help="average over this many seeds (seed, seed+1, ...)")
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--samples", type=int, default=N_SAMPLES)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", action="store_true",
                    help="dask's threaded scheduler instead of a LocalCluster")
    args = ap.parse_args(argv)
    client = "threads" if args.threads else None
    if args.seeds > 1:
        return run_benchmark(range(args.seed, args.seed + args.seeds), args.out,
                             client=client, n_workers=args.workers,
                             n_restarts=args.restarts, n_samples=args.samples)
    return run_demo(args.out, seed=args.seed, n_restarts=args.restarts,
                    n_samples=args.samples, client=client, n_workers=args.workers)


if __name__ == "__main__":
    main()
