"""``daskgmmis predict``: missing values filled with their conditional means."""

from __future__ import annotations

import os

import click

from ..posterior import predict_missing
from ..tables import write_table
from ._common import (_CONTEXT, _check_cluster_options, _client, _cluster_options,
                      _global_options, _per_row_command, main)


# ------------------------------------------------------------------- predict


@main.command(context_settings=_CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("catalog", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(),
              help="Output: .zarr, .parquet or .csv: the row key (the catalog's --id "
                   "column, else row), then one column per feature.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@_cluster_options
@_global_options
def predict(model, catalog, out, overwrite, scheduler, scheduler_file, workers, memory_limit):
    """Fill the catalog's missing values with their conditional mean given the observed ones.

    Observed values are kept as they are; a missing value gets E[v_j | observed
    features] under the model (its noise-weighted posterior). The output has the
    catalog's features, named as in the catalog, after the row key that joins it
    back to the source table.

    \b
    Examples:
      daskgmmis predict model.npz stars.zarr --out filled.parquet
    """
    import dask

    _check_cluster_options(scheduler, scheduler_file, workers, memory_limit)
    gmm, cat, _ = _per_row_command(model, catalog, out, overwrite)
    with _client(scheduler, scheduler_file, workers, memory_limit) as client:
        filled = predict_missing(gmm, cat)
        arrays = {**cat.row_keys(), **{c: filled[:, j] for j, c in enumerate(cat.columns)}}
        with dask.config.set(scheduler=client if client is not None else "threads"):
            write_table(out, arrays, overwrite=overwrite,
                        attrs={"daskgmmis_format": "daskgmmis-predicted",
                               "model": os.path.abspath(model),
                               "catalog": os.path.abspath(catalog)})
    click.echo(f"wrote {out}: {cat.shape[0]} rows, missing values predicted")
