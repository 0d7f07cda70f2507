"""``daskgmmis plot``: corner, density and convergence figures."""

from __future__ import annotations

import json
import os

import click

from ..catalog import open_catalog
from ._common import (_CONTEXT, _check_output, _global_options, _ints, _load_model,
                      _selection_arg, main)


# ---------------------------------------------------------------------- plot


@main.command(context_settings=_CONTEXT)
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("catalog", type=click.Path(), required=False)
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Figure file: .png, .pdf or .svg.")
@click.option("--kind", type=click.Choice(["corner", "density", "convergence"]),
              default="corner", show_default=True,
              help="corner: ellipses over histograms for every feature pair; density: "
                   "contours of two features; convergence: the fit's history (--report).")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Fit report (daskgmmis fit --report) for --kind convergence.")
@click.option("--dims", default="0,1", show_default=True,
              help="The two features of --kind density.")
@click.option("--selection", default=None, metavar="SPEC",
              help="--kind density: draw this selection function's boundary.")
@click.option("--sample-size", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Catalog rows sampled to choose the axis ranges (histograms count "
                   "every row, on the workers).")
@click.option("--bins", type=click.IntRange(min=2), default=40, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the row sample.")
@click.option("--dpi", type=click.IntRange(min=10), default=120, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing figure.")
@_global_options
def plot(model, catalog, out, kind, report, dims, selection, sample_size, bins, seed, dpi,
         overwrite):
    """Draw a model (over a catalog): corner plot, density contours or convergence.

    \b
    Examples:
      daskgmmis plot model.npz stars.zarr --out corner.png
      daskgmmis plot model.npz stars.zarr --kind density --dims 0,2 --out dens.pdf
      daskgmmis plot model.npz --kind convergence --report fit.json --out conv.png
    """
    from .. import plots

    _check_output(out, overwrite, inputs=(model, catalog, report))
    if os.path.splitext(out)[1].lower().lstrip(".") not in plots.FIGURE_FORMATS:
        raise click.BadParameter(f"expected a file ending in .png, .pdf or .svg; found "
                                 f"{out}.", param_hint="--out")
    gmm = _load_model(model)
    cat = open_catalog(catalog) if catalog is not None else None
    if cat is not None and cat.shape[1] != gmm.D:
        raise click.BadParameter(f"{catalog} has D={cat.shape[1]}; the model has D={gmm.D}.",
                                 param_hint="CATALOG")
    if kind == "convergence":
        if report is None:
            raise click.UsageError("--kind convergence needs --report FIT.json (written by "
                                   "daskgmmis fit --report).")
        with open(report) as f:
            fig = plots.convergence(json.load(f), title=os.path.basename(model))
    elif kind == "density":
        pair = _ints(dims, "--dims")
        sel = _selection_arg(selection)
        ax = plots.density(gmm, dims=pair, data=cat, sel_callback=sel, bins=bins,
                           background=gmm.background, title=os.path.basename(model))
        fig = ax.figure
    else:
        fig = plots.corner(gmm, cat, sample_size=sample_size, bins=bins, rng=seed,
                           title=os.path.basename(model))
    plots.save_figure(fig, out, dpi=dpi, overwrite=overwrite)
    click.echo(f"wrote {out} ({len(fig.axes)} panels)")
