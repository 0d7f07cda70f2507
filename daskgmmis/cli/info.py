"""``daskgmmis info``: summarize a model file, a catalog or another daskgmmis store."""

from __future__ import annotations

import json
import os

import click
import numpy as np

from ..errors import CatalogError
from ..catalog import CATALOG_FORMAT, open_catalog
from ._common import (_CONTEXT, _global_options, _load_model, _one_line, main)


# ---------------------------------------------------------------------- info


@main.command(context_settings=_CONTEXT)
@click.argument("path", type=click.Path())
@click.option("--stats", is_flag=True,
              help="Catalog: per-column statistics (one pass over the data).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_global_options
def info(path, stats, as_json):
    """Summarize a model file, a catalog, or another daskgmmis Zarr output.

    \b
    Examples:
      daskgmmis info model.npz
      daskgmmis info stars.zarr --stats
      daskgmmis info stars.zarr --json
    """
    if not os.path.exists(path):
        raise click.BadParameter(f"{path} does not exist.", param_hint="PATH")
    if os.path.isdir(path):
        summary = _zarr_summary(path, stats)
    else:
        gmm = _load_model(path)
        summary = {"kind": "model", "path": path, "K": gmm.K, "D": gmm.D,
                   "columns": gmm.columns or [f"x{j}" for j in range(gmm.D)],
                   "named": gmm.columns is not None,
                   "amp": gmm.amp.tolist(), "mean": gmm.mean.tolist(),
                   "covar": gmm.covar.tolist(),
                   "background": None if gmm.background is None else gmm.background.to_dict()}
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    _print_summary(summary)


def _zarr_summary(path: str, stats: bool) -> dict:
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
    except Exception as e:   # zarr raises several types for non-Zarr content
        raise CatalogError(f"{path} is a directory but not a Zarr group ({_one_line(e)}).") \
            from None
    attrs = dict(group.attrs)
    if attrs.get("daskgmmis_format") != CATALOG_FORMAT:
        arrays = {k: {"shape": list(group[k].shape), "dtype": str(group[k].dtype),
                      "chunks": list(group[k].chunks)} for k in sorted(group.array_keys())}
        return {"kind": attrs.get("daskgmmis_format", "zarr group"), "path": path,
                "attributes": attrs, "arrays": arrays}
    cat = open_catalog(path)
    N, D = cat.shape
    out = {"kind": "catalog", "path": path, "N": N, "D": D, "columns": cat.columns,
           "id_name": cat.id_name if cat.ids is not None else None,
           "dtype": str(cat.data.dtype), "covar_kind": cat.covar_kind,
           "chunk_rows": int(cat.data.chunksize[0]), "n_chunks": int(cat.data.numblocks[0]),
           "order": attrs.get("order", "input")}
    if stats:
        import dask
        import dask.array as da

        x = cat.data.astype(np.float64)
        observed = (~da.isnan(x)).sum(axis=0)
        parts = dask.compute(observed, da.nanmean(x, axis=0), da.nanstd(x, axis=0),
                             da.nanmin(x, axis=0), da.nanmax(x, axis=0))
        out["stats"] = {c: {"observed": int(parts[0][j]), "mean": float(parts[1][j]),
                            "std": float(parts[2][j]), "min": float(parts[3][j]),
                            "max": float(parts[4][j])} for j, c in enumerate(cat.columns)}
    return out


def _print_summary(s: dict) -> None:
    echo = click.echo
    if s["kind"] == "model":
        echo(f"model {s['path']}: K={s['K']} components, D={s['D']} features "
             f"({', '.join(s['columns'])}{'' if s['named'] else ': unnamed'})")
        bg = s["background"]
        if bg is not None:
            echo(f"background: amp {bg['amp']:.4g} over [{bg['lower']}, {bg['upper']}]"
                 f"{'' if bg['adjust_amp'] else ' (fixed)'}")
        with np.printoptions(precision=4, suppress=True, linewidth=200):
            for k in range(s["K"]):
                sd = np.sqrt(np.diag(np.asarray(s["covar"][k])))
                echo(f"  {k:3d}  amp {s['amp'][k]:.4f}  mean {np.asarray(s['mean'][k])}  "
                     f"sd {sd}")
    elif s["kind"] == "catalog":
        echo(f"catalog {s['path']}: N={s['N']} rows, D={s['D']} features "
             f"({', '.join(s['columns'])}), {s['dtype']}")
        echo(f"noise: {s['covar_kind']}; {s['n_chunks']} chunks of {s['chunk_rows']} rows; "
             f"row order: {s['order']}; identifiers: {s.get('id_name') or 'none (row numbers)'}")
        for c, st in s.get("stats", {}).items():
            echo(f"  {c:>12s}  observed {st['observed']:10d}  mean {st['mean']:12.5g}  std "
                 f"{st['std']:12.5g}  min {st['min']:12.5g}  max {st['max']:12.5g}")
    else:
        echo(f"{s['kind']} {s['path']}")
        for k, v in s["attributes"].items():
            echo(f"  {k}: {v}")
        for k, a in s["arrays"].items():
            echo(f"  array {k}: shape {tuple(a['shape'])}, {a['dtype']}, chunks "
                 f"{tuple(a['chunks'])}")
