"""The ``daskgmmis`` command: ingest, fit, score, sample, inspect and plot catalogs.

Every subcommand documents itself (``daskgmmis COMMAND --help``). Errors are one
line on stderr with a non-zero exit status (1 for a failure, 2 for bad usage);
``--debug`` shows the traceback instead. Outputs are written under a temporary
name and moved into place only when complete, so a failed command leaves no
partial file behind, and an existing output is never replaced without
``--overwrite``.

Progress goes to stderr through the ``daskgmmis`` logger (one line per EM
iteration: iteration, mean log-likelihood per row, its change, N_orig when
truncating, seconds); ``-q`` silences it, ``-v`` adds debug messages. Commands
that run on a cluster (``fit``, ``score``, ``posterior``, ``demo``) connect to
``--scheduler ADDRESS`` or ``--scheduler-file FILE``, else start a LocalCluster
(``--scheduler threads`` runs in-process on dask's threaded scheduler), and print
the dashboard link when there is one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import json
import logging
import os
import sys
import time
import uuid
import warnings

import click
import numpy as np

from . import __version__
from .errors import CatalogError, DaskGMMisError, InputError
from .files import write_atomic
from .background import Background
from .catalog import (CATALOG_FORMAT, CATALOG_FORMAT_VERSION, check_not_input,
                      default_row_chunk, open_catalog)
from .cluster import client_context
from .em import fit_best
from .ingest import CatalogWriter, ingest as run_ingest, table_parts
from .model import GMM
from .noise import noise_class
from .posterior import posterior as compute_posterior, predict_missing, write_posterior
from .selection import evaluate_covar_callback, selection_from_dict
from .simulate import draw
from . import demo as example
from .tables import read_column, table_format, TABLE_FORMATS, write_table

log = logging.getLogger("daskgmmis")

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ------------------------------------------------------------------- runtime


class _ProgressHandler(logging.Handler):
    """Writes the library's log records to stderr, one line each.

    EM iteration records (``"iteration %d: mean logL ..."`` with five arguments)
    are laid out as aligned columns; N_orig is shown only for truncated fits.
    """

    def __init__(self):
        super().__init__()
        self.show_n_orig = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            args = record.args
            if (isinstance(record.msg, str) and record.msg.startswith("iteration ")
                    and isinstance(args, tuple) and len(args) == 5):
                it, logl, change, n_orig, secs = args
                line = f"  iter {it:5d}  mean logL {logl:12.6f}  change "
                line += "         -" if change != change else f"{change:+10.3e}"
                if self.show_n_orig:
                    line += f"  N_orig {n_orig:12.1f}"
                line += f"  {secs:7.3f} s"
            else:
                line = record.getMessage()
                if record.levelno >= logging.WARNING:
                    line = f"daskgmmis: warning: {line}"
            click.echo(line, err=True)
        except Exception:   # a log line must never break the command
            self.handleError(record)


def _show_n_orig(flag: bool) -> None:
    """Show N_orig in the iteration lines (truncated fits)."""
    for h in log.handlers:
        if isinstance(h, _ProgressHandler):
            h.show_n_orig = flag


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"daskgmmis: warning: {_one_line(message)}", err=True)


def _command_name(args) -> str:
    for a in args:
        if a in main.commands:
            return a
    return ""


class _Group(click.Group):
    """The command group, with one-line errors and the logging set up per call."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args or os.environ.get("DASKGMMIS_DEBUG") == "1"
        verbosity = sum(a.count("v") for a in args
                        if a.startswith("-") and not a.startswith("--") and set(a[1:]) <= {"v"})
        verbosity += args.count("--verbose")
        quiet = "-q" in args or "--quiet" in args
        handler = _ProgressHandler()
        previous_level, previous_propagate = log.level, log.propagate
        log.addHandler(handler)
        log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbosity else logging.INFO)
        log.propagate = False          # no duplicate lines through the root logger
        cmd = _command_name(args)
        where = f"daskgmmis {cmd}".strip()
        code = 0
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _show_warning
                warnings.simplefilter("default")
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", category=FutureWarning)
                result = super().main(args, prog_name or "daskgmmis", complete_var,
                                      standalone_mode=False, **extra)
                code = result if isinstance(result, int) else 0
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.UsageError as e:
            if debug:
                raise
            hint = f" (see '{where} --help')"
            click.echo(f"{where}: error: {_one_line(e.format_message())}{hint}", err=True)
            code = 2
        except (click.Abort, KeyboardInterrupt):
            click.echo(f"{where}: interrupted", err=True)
            code = 130
        except click.ClickException as e:
            if debug:
                raise
            click.echo(f"{where}: error: {_one_line(e.format_message())}", err=True)
            code = e.exit_code
        except Exception as e:
            if debug:
                raise
            msg = _one_line(str(e)) or type(e).__name__
            if isinstance(e, (FileNotFoundError, FileExistsError)) and e.filename \
                    and str(e.filename) not in msg:
                msg = f"{msg}: {e.filename}"
            if not isinstance(e, (DaskGMMisError, OSError, ValueError, TypeError,
                                  ArithmeticError, ImportError, NotImplementedError)):
                # not an error we anticipated: say what it is and where to look
                msg = f"{type(e).__name__}: {msg} (run with --debug for the traceback)"
            click.echo(f"{where}: error: {msg}", err=True)
            code = 1
        finally:
            log.removeHandler(handler)
            log.setLevel(previous_level)
            log.propagate = previous_propagate
        if standalone_mode:
            sys.exit(code)
        return code


def _global_options(f):
    """--debug, -v and -q, accepted on the group and on every subcommand.

    They are read in :meth:`_Group.main` before parsing (logging and error
    display must be set up before anything runs); here they are only declared.
    """
    f = click.option("-q", "--quiet", is_flag=True, expose_value=False,
                     help="Only warnings and errors on stderr.")(f)
    f = click.option("-v", "--verbose", count=True, expose_value=False,
                     help="More messages (debug level).")(f)
    f = click.option("--debug", is_flag=True, expose_value=False,
                     help="Show tracebacks instead of one-line errors.")(f)
    return f


def _cluster_options(f):
    """Options choosing where the computation runs."""
    f = click.option("--memory-limit", default=None, metavar="BYTES",
                     help="Memory limit per LocalCluster worker, e.g. 4GiB.")(f)
    f = click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Workers of the LocalCluster (default: one per core).")(f)
    f = click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
                     help="Scheduler file of a running cluster (dask-scheduler "
                          "--scheduler-file, dask-mpi, dask-jobqueue).")(f)
    f = click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Address of a running scheduler (tcp://host:8786), or 'threads' "
                          "to run in this process on dask's threaded scheduler. Default: "
                          "a new LocalCluster.")(f)
    return f


def _check_cluster_options(scheduler, scheduler_file, workers, memory_limit) -> None:
    """Reject contradictory cluster options (before any work starts)."""
    if scheduler == "threads":
        if scheduler_file or workers or memory_limit:
            raise click.UsageError("--scheduler threads runs in-process; --scheduler-file, "
                                   "--workers and --memory-limit do not apply.")
        return
    if scheduler and scheduler_file:
        raise click.UsageError("give --scheduler or --scheduler-file, not both.")
    if (scheduler or scheduler_file) and (workers or memory_limit):
        raise click.UsageError("--workers and --memory-limit size a new LocalCluster; they "
                               "do not apply with --scheduler/--scheduler-file.")


@contextlib.contextmanager
def _client(scheduler, scheduler_file, workers, memory_limit):
    """The distributed client to run on (None: in-process threads); closed if ours.

    Resolution (address, scheduler file, ``DASK_SCHEDULER_ADDRESS``, else a new
    LocalCluster) and the dashboard link are :func:`daskgmmis.cluster.get_client`'s.
    """
    _check_cluster_options(scheduler, scheduler_file, workers, memory_limit)
    if scheduler == "threads":
        yield None
        return

    with client_context(scheduler, scheduler_file, n_workers=workers,
                        memory_limit=memory_limit) as client:
        yield client


# ---------------------------------------------------------------- arguments


def _json_arg(text: str, what: str):
    """JSON from an option value, or from a file with ``@path``."""
    if text.startswith("@"):
        with open(text[1:]) as f:
            text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON ({e.msg} at character {e.pos}).",
                                 param_hint=what) from None


def _load_object(spec: str, what: str):
    """``module:name`` or ``path/to/file.py:name`` -> the object.

    User modules (not installed packages) are registered with cloudpickle to be
    pickled by value, so distributed workers need not be able to import them.
    """
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise click.BadParameter(f"expected JSON, @file.json, module:function or "
                                 f"file.py:function; found {spec!r}.", param_hint=what)
    if mod_name.endswith(".py") or os.sep in mod_name:
        path = os.path.abspath(mod_name)
        if not os.path.isfile(path):
            raise click.BadParameter(f"no file {mod_name}.", param_hint=what)
        name = f"daskgmmis_user_{uuid.uuid5(uuid.NAMESPACE_URL, path).hex[:12]}"
        spec_ = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[name] = module
        spec_.loader.exec_module(module)
    else:
        # as `python -m` does: modules in the working directory are importable
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise click.BadParameter(f"cannot import {mod_name!r} ({e}).",
                                     param_hint=what) from None
    try:
        obj = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise click.BadParameter(f"{mod_name!r} has no attribute {attr!r}.",
                                 param_hint=what) from None
    location = os.path.abspath(getattr(module, "__file__", "") or "")
    installed = any(location.startswith(os.path.abspath(p) + os.sep)
                    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    if not installed and not module.__name__.startswith("daskgmmis"):
        import cloudpickle
        cloudpickle.register_pickle_by_value(module)
    return obj


def _constant_noise(matrix, coords):
    """covar_callback returning one shared matrix (picklable through functools.partial)."""
    return matrix


def _selection_arg(spec: str | None, what: str = "--selection"):
    """A selection function from JSON (built-ins), @file.json, or module:function."""
    if spec is None:
        return None

    spec = spec.strip()
    if spec.startswith(("{", "@")):
        return selection_from_dict(_json_arg(spec, what))
    obj = _load_object(spec, what)
    if not callable(obj):
        raise click.BadParameter(f"{spec!r} is not callable.", param_hint=what)
    return obj


def _noise_arg(spec: str | None, D: int | None, what: str = "--covar-callback"):
    """A covar_callback: JSON (D, D) matrix or (D,) variances (constant), or module:function."""
    if spec is None:
        return None
    spec = spec.strip()
    if spec.startswith(("[", "@")) or _is_number(spec):
        value = _json_arg(spec, what)
        m = np.asarray(value, dtype=np.float64)
        if m.ndim == 0:
            m = np.full(D or 1, float(m))
        if m.ndim == 1:
            m = np.diag(m)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or (D is not None and m.shape[0] != D):
            raise click.BadParameter(f"expected a ({D}, {D}) matrix, {D} variances or one "
                                     f"variance; found shape {np.shape(value)}.",
                                     param_hint=what)
        return functools.partial(_constant_noise, m)
    obj = _load_object(spec, what)
    if not callable(obj):
        raise click.BadParameter(f"{spec!r} is not callable.", param_hint=what)
    return obj


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _floats(text: str | None, what: str, D: int | None = None):
    if text is None:
        return None
    try:
        values = np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers; found {text!r}.",
                                 param_hint=what) from None
    if D is not None and values.size != D:
        raise click.BadParameter(f"expected {D} numbers (one per feature); found "
                                 f"{values.size}.", param_hint=what)
    return values


def _ints(text: str | None, what: str):
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers; found {text!r}.",
                                 param_hint=what) from None


def _check_output(path: str, overwrite: bool, what: str = "--out", inputs=()) -> str:
    """Refuse an output that is (inside) one of the command's ``inputs`` (even with
    --overwrite), an existing output (without --overwrite) or a missing directory,
    early."""

    path = os.fspath(path)
    check_not_input(path, inputs, what)
    if os.path.exists(path) and not overwrite:
        raise click.BadParameter(f"{path} exists; pass --overwrite to replace it.",
                                 param_hint=what)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise click.BadParameter(f"directory {parent} does not exist.", param_hint=what)
    return path


def _write_json(path: str, obj) -> None:
    """JSON file written atomically."""
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return repr(o)

    def write(tmp):
        with open(tmp, "x") as f:
            json.dump(obj, f, indent=1, default=default, allow_nan=True)

    write_atomic(path, write)


def _load_model(path):
    return GMM.load(path)


def _model_and_catalog(model: str, catalog: str):
    """(GMM, Catalog) of a per-row command, refusing a catalog of another dimension."""

    gmm = _load_model(model)
    cat = open_catalog(catalog)
    if cat.shape[1] != gmm.D:
        raise click.BadParameter(f"{catalog} has D={cat.shape[1]}; the model has D={gmm.D}.",
                                 param_hint="CATALOG")
    return gmm, cat


def _per_row_command(model: str, catalog: str, out: str, overwrite: bool):
    """(GMM, Catalog, output format) of score / posterior / predict: the output is
    new (or --overwrite), not an input, and has a known suffix."""
    _check_output(out, overwrite, inputs=(model, catalog))
    fmt = _table_arg(out)
    return (*_model_and_catalog(model, catalog), fmt)


def _table_arg(out: str) -> str:
    """The format of a per-row output from its suffix, as a usage error if unknown."""

    try:
        return table_format(out)
    except InputError:
        raise click.BadParameter(f"{out}: expected a path ending in one of "
                                 f"{', '.join(sorted(TABLE_FORMATS))}; the suffix picks "
                                 f"the format.", param_hint="--out") from None


# --------------------------------------------------------------------- group


@click.group(cls=_Group, context_settings=_CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="daskgmmis")
@_global_options
def main():
    """Gaussian mixtures for large, noisy, incomplete and truncated catalogs, on Dask.

    \b
    A typical session:
      daskgmmis ingest stars.parquet stars.zarr --columns g,r,i --errors g_err,r_err,i_err \
          --id source_id
      daskgmmis fit stars.zarr -K 8 --out model.npz --report fit.json
      daskgmmis info model.npz
      daskgmmis score model.npz stars.zarr --out logl.parquet
      daskgmmis posterior model.npz stars.zarr --out post.parquet   # join on source_id
      daskgmmis plot model.npz stars.zarr --out corner.png
      daskgmmis demo --out demo-out

    Global options (--debug, -v, -q) are accepted before or after the command.
    """


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
           scheduler,
           scheduler_file, workers, memory_limit):
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
                   progress=progress, id_column=id_column, dropped_out=dropped_out,
                   variances=variances, weight_column=weight_column)
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


# ----------------------------------------------------------------------- fit


@main.command(context_settings=_CONTEXT)
@click.argument("catalog", type=click.Path())
@click.option("-K", "--components", "K", type=click.IntRange(min=1), default=None,
              help="Number of components (required unless --init-model).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Model file to write (.npz).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--init-method", type=click.Choice(["random", "minmax", "kmeans", "none"]),
              default=None,
              help="Initialization [default: kmeans, k-means|| on the data; with "
                   "--init-model: that model].")
@click.option("--init-model", type=click.Path(dir_okay=False), default=None,
              help="Start from this saved model (implies --init-method none).")
@click.option("-w", "--w", "w", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Covariance regularization in data units (w^2 floor on variances).")
@click.option("--cutoff", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Neighborhood size in 1-D sigmas (default: every row sees every "
                   "component).")
@click.option("--tol", type=click.FloatRange(min=0), default=1e-3, show_default=True,
              help="Stop when the mean log-likelihood per row changes by less.")
@click.option("--maxiter", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Maximum EM iterations.")
@click.option("--seed", type=int, default=None, help="Random seed (initialization, "
                                                     "imputation, restarts).")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fit from this many random starts; keep the highest likelihood.")
@click.option("--frozen", default=None, metavar="JSON",
              help='Components held fixed: \'{"amp": [0], "mean": [0, 2], "covar": []}\' '
                   "or '[0, 2]' (all three); needs a start (--init-model).")
@click.option("--selection", default=None, metavar="SPEC",
              help="Selection function (truncated fit): built-in JSON such as "
                   '\'{"type": "box", "lower": [0, 0], "upper": [10, 10]}\', @file.json, or '
                   "module:function / file.py:function for your own Omega(coords).")
@click.option("--covar-callback", default=None, metavar="SPEC",
              help="Noise of unobserved rows: JSON (D, D) matrix, JSON list of D variances, "
                   "or module:function / file.py:function.")
@click.option("--oversampling", type=click.FloatRange(min=0, min_open=True), default=4.0,
              show_default=True, help="Monte-Carlo precision of the imputation.")
@click.option("--prefit", is_flag=True,
              help="With --selection: start each truncated fit from a fit without it.")
@click.option("--bg-lower", default=None, metavar="X0,X1,...",
              help="Uniform background: lower corner of its footprint.")
@click.option("--bg-upper", default=None, metavar="X0,X1,...",
              help="Uniform background: upper corner of its footprint.")
@click.option("--bg-amp", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Starting background fraction.")
@click.option("--bg-amp-min", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--bg-amp-max", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@click.option("--bg-fixed", is_flag=True, help="Hold the background fraction at --bg-amp.")
@click.option("--accelerate/--no-accelerate", default=True, show_default=True,
              help="SQUAREM extrapolation of EM steps (--no-accelerate: textbook EM).")
@click.option("--split-n-merge", type=click.IntRange(min=0), default=0, show_default=True,
              help="Split-and-merge attempts (when the library provides them).")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="EM state file, written every iteration; a rerun resumes from it.")
@click.option("--persist/--no-persist", default=None,
              help="Keep the catalog in cluster memory (default: when it fits).")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Write the fit's result (history, N_orig, timings, options) as JSON.")
@_cluster_options
@_global_options
def fit(catalog, K, out, overwrite, init_method, init_model, w, cutoff, tol, maxiter, seed,
        restarts, frozen, selection, covar_callback, oversampling, prefit, bg_lower, bg_upper,
        bg_amp, bg_amp_min, bg_amp_max, bg_fixed, accelerate, split_n_merge, checkpoint,
        persist, report, scheduler, scheduler_file, workers, memory_limit):
    """Fit a Gaussian mixture to a catalog (extreme deconvolution, missing features,
    truncation, background) and save the model.

    The catalog's noise covariances are deconvolved; NaN values are marginalized.
    With --selection the fit recovers the population before the selection, and
    reports its estimated size N_orig. One line per iteration shows progress.

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
    N, D = cat.shape
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
        background = Background((_floats(bg_lower, "--bg-lower", D),
                                 _floats(bg_upper, "--bg-upper", D)), bg_amp,
                                amp_min=bg_amp_min, amp_max=bg_amp_max,
                                adjust_amp=not bg_fixed)
    elif init_model is not None and gmm.background is not None:
        background = gmm.background
    elif bg_amp or bg_fixed or bg_amp_min or bg_amp_max != 1.0:
        raise click.UsageError("--bg-amp/--bg-amp-min/--bg-amp-max/--bg-fixed need a "
                               "footprint (--bg-lower and --bg-upper).")
    frozen_value = _json_arg(frozen, "--frozen") if frozen is not None else None
    sel = _selection_arg(selection)
    noise_cb = _noise_arg(covar_callback, D)
    if noise_cb is not None and sel is None:
        raise click.UsageError("--covar-callback models the noise of unobserved rows; it "
                               "needs --selection.")
    if prefit and sel is None:
        raise click.UsageError("--prefit applies to truncated fits; it needs --selection.")

    _show_n_orig(sel is not None)
    log.info("fitting %s (N=%d, D=%d, noise: %s) with K=%d%s", catalog, N, D, cat.covar_kind,
             gmm.K, ", truncated" if sel is not None else "")
    with _client(scheduler, scheduler_file, workers, memory_limit) as client:
        result = fit_best(
            gmm, cat, n_init=restarts, rng=seed, background=background, prefit=prefit,
            init_method=init_method, w=w, cutoff=cutoff, sel_callback=sel,
            covar_callback=noise_cb, tol=tol, maxiter=maxiter, frozen=frozen_value,
            client=client, checkpoint=checkpoint, oversampling=oversampling,
            persist=persist, accelerate=accelerate, split_n_merge=split_n_merge)
    if report is not None:
        info = dataclasses.asdict(result)
        info.update({"catalog": os.path.abspath(catalog), "model": os.path.abspath(out),
                     "K": gmm.K, "D": D, "tol": tol, "maxiter": maxiter, "w": w,
                     "cutoff": cutoff, "seed": seed, "restarts": restarts,
                     "init_method": init_method, "selection": selection,
                     "covar_callback": covar_callback, "oversampling": oversampling,
                     "accelerate": accelerate, "split_n_merge": split_n_merge,
                     "background": None if background is None else background.to_dict()})
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
               + (f", background amp {background.amp:.4f}" if background is not None else ""))
    click.echo(f"wrote {out}" + (f" and {report}" if report else ""))


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
    seeds = np.random.SeedSequence(seed).spawn(len(batches))
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
    from . import plots

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
    _show_n_orig(True)        # two of the four fits are truncated
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


if __name__ == "__main__":   # python -m daskgmmis.cli
    main()
