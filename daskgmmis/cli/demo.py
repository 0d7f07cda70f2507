"""``daskgmmis demo``: the pyGMMis demo scenario."""

from __future__ import annotations

import sys

import click

from .. import demo as example
from ._common import (_CONTEXT, _client, _cluster_options, _global_options, _show_progress,
                      _write_json, main)


# ---------------------------------------------------------------------- demo


@main.command(context_settings=_CONTEXT)
@click.option("--out", "-o", default="demo-out", show_default=True, type=click.Path(),
              help="Directory of the figure demo.png.")
@click.option("--seed", type=int, default=None, help="Seed (default: pyGMMis's, 8365).")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run this many seeds (seed, seed+1, ...) and report the mean "
                   "log-likelihoods (the benchmark).")
@click.option("--restarts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random starts per fit; the highest likelihood is kept.")
@click.option("--samples", type=click.IntRange(min=10), default=400, show_default=True,
              help="Population rows simulated.")
@click.option("--maxiter", type=click.IntRange(min=1), default=None,
              help="EM iterations per start (default: the example's, 200).")
@click.option("--json", "as_json", type=click.Path(dir_okay=False), default=None,
              help="Also write the numbers as JSON.")
@_cluster_options
@_global_options
def demo(out, seed, seeds, restarts, samples, maxiter, as_json, scheduler, scheduler_file,
         workers, memory_limit):
    """The pyGMMis demo: a noisy, truncated 2-D catalog fitted four ways.

    A 3-component population, 400 rows, noise sd 0.5, observed only inside the
    box [0, 10]^2 and outside a circle of radius 2 at (6.5, 6), is fitted with
    plain EM, with deconvolution, with truncation, and with both. Prints the
    mean log-likelihood of the original (error-free, complete) rows under each
    fit next to the truth's and writes DIR/demo.png.

    \b
    Examples:
      daskgmmis demo
      daskgmmis demo --out /tmp/demo --restarts 3
      daskgmmis demo --seeds 10 --json bench.json      # the benchmark over 10 seeds
    """
    seed = example.DEFAULT_SEED if seed is None else seed
    _show_progress(sys.stderr.isatty(), True)        # two of the four fits are truncated
    if workers is None and scheduler is None and scheduler_file is None:
        workers = 2
    with _client(scheduler, scheduler_file, workers, memory_limit) as client:
        kwargs = dict(client=client if client is not None else "threads",
                      n_restarts=restarts, n_samples=samples,
                      maxiter=example.DEFAULT_MAXITER if maxiter is None else maxiter)
        if seeds > 1:
            result = example.run_benchmark(range(seed, seed + seeds), out, **kwargs)
        else:
            result = example.run_demo(out, seed=seed, **kwargs)
    if as_json:
        _write_json(as_json, result)
