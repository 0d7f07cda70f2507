"""``daskgmmis ingest``: tables (CSV, Parquet, FITS, .npy; parts in parallel) into a Zarr
catalog."""

from __future__ import annotations

import time

import click

from ..ingest import ingest as run_ingest, table_parts
from ._common import (_CONTEXT, _check_cluster_options, _client, _cluster_options,
                      _global_options, log, main)


# -------------------------------------------------------------------- ingest


@main.command(context_settings=_CONTEXT)
@click.argument("source", type=click.Path())
@click.argument("catalog", type=click.Path())
@click.option("--columns", "-c", default=None, metavar="A,B,...",
              help="Value columns, in feature order (default: every column that is not an "
                   "error or correlation column; x0,x1,... for a plain .npy array).")
@click.option("--errors", "-e", default=None, metavar="A_ERR,B_ERR,...",
              help="One error column per value column: standard deviations (variances with "
                   "--variances).")
@click.option("--variances", is_flag=True, help="The --errors columns hold variances.")
@click.option("--corr", "correlations", multiple=True, metavar="A,B,RHO",
              help="Correlation column RHO between value columns A and B (repeatable); the "
                   "catalog then stores full covariances.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "fits", "npy"]),
              default=None, help="Input format (default: from the file suffix).")
@click.option("--hdu", default=None, help="FITS table HDU, index or name (default: the "
                                          "first table).")
@click.option("--batch-rows", type=click.IntRange(min=1), default=1 << 16, show_default=True,
              help="Rows read per batch (bounds memory).")
@click.option("--chunks", type=click.IntRange(min=1), default=None,
              help="Rows per catalog chunk (default: as write_catalog chooses).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float64"]), default="auto",
              show_default=True, help="Storage type of the values (auto: float32 when every "
                                      "value column is float32).")
@click.option("--id", "id_column", default=None, metavar="COLUMN",
              help="Identifier column (integers or strings) kept with its rows and written "
                   "first in every per-row output (score, posterior, predict), so results "
                   "join back to the source table; never taken as a feature.")
@click.option("--weight", "weight_column", default=None, metavar="COLUMN",
              help="Per-row weight column (finite, >= 0): a row of weight w counts as w "
                   "rows in every fit and score of the catalog; never taken as a feature.")
@click.option("--drop-empty", is_flag=True,
              help="Skip rows whose values are all missing (default: an error).")
@click.option("--dropped-out", type=click.Path(), default=None, metavar="FILE",
              help="With --drop-empty: list the skipped rows (source row, identifier) in "
                   "FILE (.csv, .parquet or .zarr).")
@click.option("--overwrite", is_flag=True, help="Replace an existing catalog.")
@_cluster_options
@_global_options
def ingest(source, catalog, columns, errors, variances, correlations, fmt, hdu, batch_rows,
           chunks, dtype, id_column, weight_column, drop_empty, dropped_out, overwrite,
           scheduler, scheduler_file, workers, memory_limit):
    """Convert a CSV, Parquet, FITS or .npy table into a Zarr catalog, streaming.

    The file is read in batches (never whole), validated as it goes (no Inf, no
    row without any value, valid errors), and written under a temporary name
    that becomes CATALOG only when complete. Missing values (empty fields, NaN,
    nulls) become NaN: missing features, marginalized by every fit.

    SOURCE may also be a directory or a quoted glob ('parts/*.parquet') of parts
    of one table: they are converted in parallel on the cluster's workers (one
    task per part) into one catalog, rows in part-name order.

    \b
    Examples:
      daskgmmis ingest gaia.csv gaia.zarr --columns bp_rp,g --errors bp_rp_err,g_err
      daskgmmis ingest t.parquet t.zarr -c x,y -e var_x,var_y --variances
      daskgmmis ingest t.fits t.zarr -c x,y -e sx,sy --corr x,y,rho_xy --hdu 1
      daskgmmis ingest points.npy points.zarr
      daskgmmis ingest gaia.parquet gaia.zarr -c bp_rp,g -e bp_rp_err,g_err --id source_id
      daskgmmis ingest 'gaia/part-*.parquet' gaia.zarr --id source_id --workers 8
    """
    import dask

    last = [time.monotonic()]
    n_read = [0]

    def progress(n):
        n_read[0] = n
        if time.monotonic() - last[0] > 2.0:
            last[0] = time.monotonic()
            log.info("  read %d rows", n)

    _check_cluster_options(scheduler, scheduler_file, workers, memory_limit)
    parts = table_parts(source)
    options = dict(correlations=list(correlations), fmt=fmt, hdu=hdu, batch_rows=batch_rows,
                   chunks=chunks, dtype=dtype, drop_empty=drop_empty, overwrite=overwrite,
                   progress=progress, id_column=id_column, weight_column=weight_column,
                   dropped_out=dropped_out, variances=variances)
    if parts is None:
        cat = run_ingest(source, catalog, columns, errors, **options)
    else:
        log.info("ingest: %d parts of %s", len(parts), source)
        with _client(scheduler, scheduler_file, workers, memory_limit) as client, \
                dask.config.set(scheduler=client if client is not None else "threads"):
            cat = run_ingest(parts, catalog, columns, errors, **options)
    N, D = cat.shape
    chosen = "" if columns else (" (every column not named by --errors, --corr, --id or "
                                 "--weight)")
    click.echo(f"wrote {catalog}: {N} rows, {D} features: {', '.join(cat.columns)}{chosen}; "
               f"{cat.data.dtype}, noise: {cat.covar_kind}, {cat.data.chunksize[0]} rows "
               f"per chunk" + (f"; identifiers: {cat.id_name}" if cat.ids is not None else "")
               + ("; per-row weights" if cat.weights is not None else ""))
    if n_read[0] > N:
        click.echo(f"skipped {n_read[0] - N} rows with every value missing"
                   + (f" (listed in {dropped_out})" if dropped_out else
                      " (list them with --dropped-out FILE)"))
