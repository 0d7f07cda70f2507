"""``daskgmmis fit``: fit a mixture to a catalog; its fit options are generated from
:class:`daskgmmis.FitOptions`."""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from ..background import Background
from ..catalog import open_catalog
from ..em import fit_best
from ..options import SAME, FitOptions, Interval, OneOf, cli_help, option_fields
from ..model import GMM
from ._common import (_CONTEXT, _callable_arg, _check_cluster_options, _check_output, _client,
                      _cluster_options, _floats, _global_options, _json_arg, _load_model,
                      _noise_arg, _selection_arg, _show_progress, _write_json, log, main)


# ----------------------------------------------------------------------- fit


def _click_type(f):
    """The click type of a table option (ranges and choices from its constraint)."""
    cli = f.metadata["cli"]
    bounded = [c for c in f.metadata["constraints"] if isinstance(c, Interval)]
    if cli.value == "choice":
        return click.Choice([v for c in f.metadata["constraints"] if isinstance(c, OneOf)
                             for v in c.values])
    if cli.value in ("float", "int"):
        rng_type = click.FloatRange if cli.value == "float" else click.IntRange
        if not bounded:
            return float if cli.value == "float" else int
        c = bounded[0]
        kw = {"min_open": c.low_open} if cli.value == "float" else {}
        return rng_type(min=c.low, max=c.high, **kw)
    if cli.value == "path":
        return click.Path()
    return str


def _fit_options(f):
    """The fit options of the table (:class:`daskgmmis.FitOptions`) as click options.

    Spelling, type, range, default and help come from the table; an option
    without a command-line spelling is Python-only (the table says why).
    """
    for field in reversed(option_fields()):
        cli = field.metadata["cli"]
        if cli is None:
            continue
        default = field.default if cli.default == SAME else cli.default
        kwargs = dict(help=cli_help(field), default=default, metavar=cli.metavar,
                      show_default=default is not None and cli.value != "flag")
        if cli.value == "flag":
            kwargs["is_flag"] = True
        elif cli.value != "toggle":
            kwargs["type"] = _click_type(field)
        f = click.option(*cli.flags, cli.dest or field.name, **kwargs)(f)
    return f




@main.command(context_settings=_CONTEXT)
@click.argument("catalog", type=click.Path())
@click.option("-K", "--components", "K", type=click.IntRange(min=1), default=None,
              help="Number of components (required unless --init-model).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Model file to write (.npz).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--init-model", type=click.Path(dir_okay=False), default=None,
              help="Start from this saved model (implies --init-method none).")
@click.option("--bg-lower", default=None, metavar="X0,X1,...",
              help="Uniform background: lower corner of its footprint.")
@click.option("--bg-upper", default=None, metavar="X0,X1,...",
              help="Uniform background: upper corner of its footprint.")
@click.option("--bg-amp", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Starting background fraction.")
@click.option("--bg-amp-min", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--bg-amp-max", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@click.option("--bg-fixed", is_flag=True, help="Hold the background fraction at --bg-amp.")
@_fit_options
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Write the fit's result (history, N_orig, timings, options) as JSON.")
@_cluster_options
@_global_options
def fit(catalog, K, out, overwrite, init_model, bg_lower, bg_upper, bg_amp, bg_amp_min,
        bg_amp_max, bg_fixed, report, scheduler, scheduler_file, workers, memory_limit,
        init_method, seed, selection, frozen, covar_callback, projection_callback, progress,
        **options):
    """Fit a Gaussian mixture to a catalog (extreme deconvolution, missing features,
    truncation, background) and save the model.

    The catalog's noise covariances are deconvolved; NaN values are marginalized.
    With --selection the fit recovers the population before the selection, and
    reports its estimated size N_orig. Progress: a header and a one-line summary
    per start (--n-init), and on a terminal (or with --progress) the iterations.

    \b
    Examples:
      daskgmmis fit stars.zarr -K 5 --out model.npz
      daskgmmis fit stars.zarr -K 5 --out model.npz --init-method kmeans --restarts 4 \\
          --seed 1 --report fit.json --scheduler tcp://10.0.0.1:8786
      daskgmmis fit cut.zarr -K 3 --out model.npz --prefit \\
          --selection '{"type": "box", "lower": [0, null], "upper": [10, null]}'
      daskgmmis fit cut.zarr -K 3 --out model.npz --selection mysel.py:omega \\
          --covar-callback '[0.25, 0.25]'
      daskgmmis fit sky.zarr -K 4 --out model.npz --bg-lower 0,0 --bg-upper 10,10 \\
          --bg-amp 0.1
    """

    _check_cluster_options(scheduler, scheduler_file, workers, memory_limit)
    _check_output(out, overwrite, inputs=(catalog, init_model))
    if report is not None:
        _check_output(report, overwrite, "--report", inputs=(catalog, init_model))
    cat = open_catalog(catalog)
    N, d = cat.shape
    # the model's space: the data's, or the one a stored projection maps from
    D = d if cat.projection is None else int(cat.projection.shape[-1])
    if init_model is not None:
        gmm = _load_model(init_model)
        if K is not None and K != gmm.K:
            raise click.BadParameter(f"{init_model} has K={gmm.K} components; -K {K} "
                                     f"disagrees.", param_hint="-K")
        if gmm.D != D:
            raise click.BadParameter(f"{init_model} has D={gmm.D}; the catalog has D={D}.",
                                     param_hint="--init-model")
        if init_method not in (None, "none"):
            raise click.BadParameter("--init-model is the start; it excludes --init-method "
                                     f"{init_method}.", param_hint="--init-method")
        init_method = "none"
    else:
        if K is None:
            raise click.UsageError("give -K (number of components) or --init-model.")
        if init_method == "none":
            raise click.BadParameter("--init-method none starts from given parameters: "
                                     "pass them as --init-model MODEL.",
                                     param_hint="--init-method")
        init_method = init_method or "kmeans"
        gmm = GMM(K, D)
    background = None
    if bg_lower is not None or bg_upper is not None:
        if bg_lower is None or bg_upper is None:
            raise click.UsageError("a background needs both --bg-lower and --bg-upper.")
        # a background is uniform over a box of the data's space
        background = Background((_floats(bg_lower, "--bg-lower", d),
                                 _floats(bg_upper, "--bg-upper", d)), bg_amp,
                                amp_min=bg_amp_min, amp_max=bg_amp_max,
                                adjust_amp=not bg_fixed)
    elif init_model is not None and gmm.background is not None:
        background = gmm.background
    elif bg_amp or bg_fixed or bg_amp_min or bg_amp_max != 1.0:
        raise click.UsageError("--bg-amp/--bg-amp-min/--bg-amp-max/--bg-fixed need a "
                               "footprint (--bg-lower and --bg-upper).")
    frozen_value = _json_arg(frozen, "--frozen") if frozen is not None else None
    sel = _selection_arg(selection)
    noise_cb = _noise_arg(covar_callback, d)
    if noise_cb is not None and sel is None:
        raise click.UsageError("--covar-callback models the noise of unobserved rows; it "
                               "needs --selection.")
    projection_cb = _callable_arg(projection_callback, "--projection-callback")

    if options["prefit"] and sel is None:
        raise click.UsageError("--prefit applies to truncated fits; it needs --selection.")
    opts = FitOptions.create(init_method=init_method, rng=seed, sel_callback=sel,
                             covar_callback=noise_cb, projection_callback=projection_cb,
                             frozen=frozen_value,
                             background=background, **options)
    _show_progress(sys.stderr.isatty() if progress is None else progress, sel is not None)
    log.info("fitting %s (N=%d, D=%d, noise: %s) with K=%d%s", catalog, N, D, cat.covar_kind,
             gmm.K, ", truncated" if sel is not None else "")
    with _client(scheduler, scheduler_file, workers, memory_limit) as client:
        result = fit_best(gmm, cat, options=opts.replace(client=client))
    if report is not None:
        info = dataclasses.asdict(result)
        info.update(opts.report())
        # the command-line spellings of the options given as text
        info.update({"catalog": os.path.abspath(catalog), "model": os.path.abspath(out),
                     "K": gmm.K, "D": D, "seed": seed, "restarts": opts.n_init,
                     "selection": selection, "covar_callback": covar_callback,
                     "projection_callback": projection_callback,
                     "frozen": frozen_value})
        _write_json(report, info)
    try:
        gmm.save(out, background=background, overwrite=overwrite)
    except BaseException:
        if report is not None and os.path.exists(report):
            os.unlink(report)        # no report for a model that was not written
        raise
    status = "converged" if result.converged else "not converged"
    click.echo(f"{status} after {result.n_iter} iterations in {result.seconds:.1f} s: mean "
               f"logL {result.logL:.6f} per row, N={result.N}"
               + (f", N_orig={result.N_orig:.1f}" if sel is not None else "")
               + (f" +- {result.mc_error['N_orig']:.1f} (Monte Carlo)"
                  if sel is not None and result.mc_error is not None else "")
               + (f", background amp {background.amp:.4f}" if background is not None else ""))
    click.echo(f"wrote {out}" + (f" and {report}" if report else ""))
