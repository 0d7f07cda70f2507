"""``daskgmmis posterior``: per-row posteriors of the error-free values."""

from __future__ import annotations

import click

from ..posterior import posterior as compute_posterior, write_posterior
from ._common import (_CONTEXT, _check_cluster_options, _client, _cluster_options,
                      _global_options, _per_row_command, main)


# ----------------------------------------------------------------- posterior


@main.command(context_settings=_CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("catalog", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(),
              help="Output: .zarr (every array), .parquet or .csv (row key, posterior means "
                   "and standard deviations per feature, responsibilities, logL).")
@click.option("--components", is_flag=True,
              help="Also store every component's posterior means and covariances (K times "
                   "larger; .zarr only).")
@click.option("--no-background", is_flag=True,
              help="Ignore a background saved with the model.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@_cluster_options
@_global_options
def posterior(model, catalog, out, components, no_background, overwrite, scheduler,
              scheduler_file, workers, memory_limit):
    """Per-row posterior of the error-free values (denoised, missing values predicted).

    Zarr: arrays mean (N, D), covar (N, D, D), resp (N, K), logL (N,) - and
    resp_bg with a background - in the catalog's row order, in one pass. Parquet
    and CSV: columns mean_<feature>, sd_<feature>, resp_<k>, logL (, resp_bg).
    Every output starts with the row key (the catalog's --id column, else row).

    \b
    Examples:
      daskgmmis posterior model.npz stars.zarr --out post.parquet
      daskgmmis posterior model.npz stars.zarr --out post.zarr --components
    """
    import dask

    _check_cluster_options(scheduler, scheduler_file, workers, memory_limit)
    gmm, cat, fmt = _per_row_command(model, catalog, out, overwrite)
    if fmt != "zarr" and components:
        raise click.BadParameter("--components writes (N, K, D, D) arrays: use a .zarr "
                                 "output.", param_hint="--components")
    with _client(scheduler, scheduler_file, workers, memory_limit) as client:
        post = compute_posterior(gmm, cat, background=None if no_background else gmm.background)
        with dask.config.set(scheduler=client if client is not None else "threads"):
            write_posterior(post, out, overwrite=overwrite, components=components)
    click.echo(f"wrote {out}: posterior of {post.N} rows, K={post.K}, D={post.D}")
