"""``daskgmmis sample``: draw rows from a model into a catalog or table."""

from __future__ import annotations

import click
import numpy as np

from ..errors import InputError
from ..em import child_seed
from ..catalog import default_row_chunk
from ..ingest import CatalogWriter
from ..noise import noise_class
from ..selection import evaluate_covar_callback
from ..simulate import draw
from ..tables import write_table
from ._common import (_CONTEXT, _check_output, _global_options, _load_model, _noise_arg,
                      _selection_arg, _table_arg, main)


# -------------------------------------------------------------------- sample


@main.command(context_settings=_CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-n", "--rows", "n", type=click.IntRange(min=1), required=True,
              help="Rows to write (observed rows, with --selection).")
@click.option("--out", "-o", required=True, type=click.Path(),
              help="Output: a .zarr catalog, or a .parquet / .csv table (columns named by "
                   "the features, plus <feature>_err standard deviations with diagonal "
                   "noise).")
@click.option("--seed", type=int, default=None, help="Random seed.")
@click.option("--noise", default=None, metavar="SPEC",
              help="Add Gaussian noise: JSON (D, D) matrix, JSON list of D variances, one "
                   "variance, or module:function returning covariances at the true "
                   "positions. The catalog stores it as per-row noise.")
@click.option("--selection", default=None, metavar="SPEC",
              help="Keep rows with probability Omega(noisy position): built-in JSON, "
                   "@file.json or module:function.")
@click.option("--columns", default=None, metavar="A,B,...",
              help="Feature names (default: the model's, saved by fit from its catalog).")
@click.option("--chunks", type=click.IntRange(min=1), default=None,
              help="Rows per catalog chunk (default: as write_catalog chooses).")
@click.option("--batch-rows", type=click.IntRange(min=1), default=1 << 18, show_default=True,
              help="Rows simulated per batch (bounds memory).")
@click.option("--no-background", is_flag=True,
              help="Ignore a background saved with the model.")
@click.option("--overwrite", is_flag=True, help="Replace an existing catalog.")
@_global_options
def sample(model, n, out, seed, noise, selection, columns, chunks, batch_rows, no_background,
           overwrite):
    """Draw rows from a model into a new catalog (optionally noisy and selected).

    Rows are simulated in batches with daskgmmis.draw - population (and the
    model's background), then noise, then selection - and streamed to the
    catalog, so N may exceed memory. The result is a catalog like any other:
    fit it, score it, plot it.

    \b
    Examples:
      daskgmmis sample model.npz -n 100000 --out sim.zarr --seed 1
      daskgmmis sample model.npz -n 5000 --out obs.zarr --noise '[0.25, 0.25]' \\
          --selection '{"type": "sphere", "center": [5, 5], "radius": 4}'
    """

    _check_output(out, overwrite, inputs=(model,))
    fmt = _table_arg(out)
    gmm = _load_model(model)
    D = gmm.D
    names = ([c.strip() for c in columns.split(",")] if columns else
             gmm.columns or [f"x{j}" for j in range(D)])
    if len(names) != D:
        raise click.BadParameter(f"expected {D} names; found {len(names)}.",
                                 param_hint="--columns")
    noise_cb = _noise_arg(noise, D, "--noise")
    sel = _selection_arg(selection)
    bg = None if no_background else gmm.background
    source_kind, store_kind = _noise_layout(noise_cb, gmm)
    batches = [min(batch_rows, n - start) for start in range(0, n, batch_rows)]
    # the package's one seed derivation (equal to SeedSequence(seed).spawn(n))
    root = np.random.SeedSequence(seed)
    seeds = [child_seed(root, i) for i in range(len(batches))]
    if fmt != "zarr":
        if store_kind == "full":
            raise click.BadParameter("correlated noise needs (N, D, D) covariances: write a "
                                     ".zarr catalog.", param_hint="--out")
        _sample_table(out, gmm, names, batches, seeds, sel, noise_cb, bg, source_kind,
                      store_kind, overwrite)
        click.echo(f"wrote {out}: {n} rows, {D} features ({', '.join(names)}), noise: "
                   f"{store_kind}")
        return
    with CatalogWriter(out, names, store_kind, overwrite=overwrite,
                       chunk_rows=chunks or default_row_chunk(n, D, store_kind)) as writer:
        for size, s in zip(batches, seeds):
            rows, cov, _ = draw(gmm, obs_size=size, sel_callback=sel, covar_callback=noise_cb,
                                background=bg, rng=s)
            writer.append(rows, _catalog_noise(cov, source_kind, store_kind, size, D))
    cat = writer.catalog
    click.echo(f"wrote {out}: {cat.shape[0]} rows, {D} features, noise: {cat.covar_kind}")


def _sample_batch(gmm, size, seed, sel, noise_cb, bg, source_kind, store_kind):
    """(size, D) rows, then (size, D) noise standard deviations for diagonal noise."""

    rows, cov, _ = draw(gmm, obs_size=size, sel_callback=sel, covar_callback=noise_cb,
                        background=bg, rng=seed)
    noise = _catalog_noise(cov, source_kind, store_kind, size, gmm.D)
    return rows if noise is None else np.hstack([rows, np.sqrt(noise)])


def _sample_table(out, gmm, names, batches, seeds, sel, noise_cb, bg, source_kind, store_kind,
                  overwrite) -> None:
    """Simulated rows to a Parquet or CSV table, one batch at a time."""
    import dask
    import dask.array as da

    width = gmm.D * (1 if store_kind == "none" else 2)
    parts = [da.from_delayed(dask.delayed(_sample_batch)(gmm, size, s, sel, noise_cb, bg,
                                                         source_kind, store_kind),
                             shape=(size, width), dtype=np.float64)
             for size, s in zip(batches, seeds)]
    table = da.concatenate(parts)
    columns = {c: table[:, j] for j, c in enumerate(names)}
    if store_kind != "none":
        columns.update({f"{c}_err": table[:, gmm.D + j] for j, c in enumerate(names)})
    with dask.config.set(scheduler="threads"):
        write_table(out, columns, overwrite=overwrite)


def _noise_layout(noise_cb, gmm) -> tuple[str, str]:
    """(kind the callback returns, kind the catalog stores) from one probe call.

    The catalog stores per-row noise: a shared matrix becomes per-row variances
    when it is diagonal, per-row matrices otherwise.
    """
    if noise_cb is None:
        return "none", "none"
    kind, value = evaluate_covar_callback(noise_cb, gmm.mean, where="--noise")
    return kind, noise_class(kind).from_array(value).stored_kind()


def _catalog_noise(cov, source_kind: str, store_kind: str, n: int, D: int):
    """draw()'s noise for n rows as the catalog stores it (None, (n, D) or (n, D, D))."""
    if store_kind == "none":
        return None
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim == 2 and source_kind == "shared":
        cov = np.broadcast_to(cov, (n, D, D))
    if store_kind == "diag":
        if cov.ndim == 2:
            return cov
        diag = np.einsum("nii->ni", cov)
        if np.any(cov - diag[:, :, None] * np.eye(D)):
            raise InputError("--noise: the callback returned correlated noise after "
                             "diagonal noise; expected one kind.")
        return np.ascontiguousarray(diag)
    if cov.ndim == 2:
        full = np.zeros((n, D, D))
        full[:, np.arange(D), np.arange(D)] = cov
        return full
    return np.ascontiguousarray(cov)
