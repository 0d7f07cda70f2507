"""``daskgmmis score``: per-row log-likelihood of a catalog under a model."""

from __future__ import annotations

import os

import click
import numpy as np

from ..catalog import CATALOG_FORMAT_VERSION
from ..tables import read_column, write_table
from ._common import (_CONTEXT, _check_cluster_options, _client, _cluster_options,
                      _global_options, _per_row_command, main)


# --------------------------------------------------------------------- score


@main.command(context_settings=_CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("catalog", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(),
              help="Output: .zarr, .parquet or .csv (the suffix picks the format): the row "
                   "key (the catalog's --id column, else row) and logL.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--no-background", is_flag=True,
              help="Ignore a background saved with the model.")
@_cluster_options
@_global_options
def score(model, catalog, out, overwrite, no_background, scheduler, scheduler_file, workers,
          memory_limit):
    """Per-row log-likelihood of a catalog under a model: Zarr, Parquet or CSV.

    Each row's log p(x_i) is computed under the model convolved with the row's
    noise, missing features marginalized (NaN for a row with no value). The
    output starts with the row key that joins it back to the source table - the
    catalog's identifier column (ingest --id), else `row`, the row's position in
    the ingested table (whatever order the catalog stores its rows in) - and is
    computed lazily, block by block.

    \b
    Examples:
      daskgmmis score model.npz stars.zarr --out logl.parquet
      daskgmmis score model.npz holdout.zarr --out held.csv --scheduler threads
    """
    import dask


    _check_cluster_options(scheduler, scheduler_file, workers, memory_limit)
    gmm, cat, _ = _per_row_command(model, catalog, out, overwrite)
    bg = None if no_background else gmm.background
    with _client(scheduler, scheduler_file, workers, memory_limit) as client:
        logl = gmm.logL(cat.data, cat.covar, background=bg)
        arrays = {**cat.row_keys(), "logL": logl}
        attrs = {"daskgmmis_format": "daskgmmis-scores",
                 "daskgmmis_format_version": CATALOG_FORMAT_VERSION,
                 "model": os.path.abspath(model), "catalog": os.path.abspath(catalog),
                 "background": bg is not None}
        with dask.config.set(scheduler=client if client is not None else "threads"):
            write_table(out, arrays, attrs=attrs, overwrite=overwrite)
            written = read_column(out, "logL")
            total, n = dask.compute(np.nansum(written), np.isfinite(written).sum())
    mean = float(total) / max(int(n), 1)
    click.echo(f"wrote {out}: {cat.shape[0]} rows, mean logL {mean:.6f} over {int(n)} scored "
               f"rows")
