"""Shared by every ``daskgmmis`` command: the command group, one-line errors and
logging per call, the cluster and global options, argument parsers and output checks."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import sys
import uuid
import warnings

import click
import numpy as np

from .. import __version__
from ..errors import DaskGMMisError, InputError
from ..files import write_atomic
from ..catalog import check_not_input, open_catalog
from ..cluster import client_context
from ..progress import ProgressHandler
from ..model import GMM
from ..selection import selection_from_dict
from ..tables import table_format, TABLE_FORMATS


log = logging.getLogger("daskgmmis")

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ------------------------------------------------------------------- runtime


def _show_progress(iterations: bool, n_orig: bool) -> None:
    """Show the iteration lines (``--progress``), with N_orig (truncated fits)."""
    for h in log.handlers:
        if isinstance(h, ProgressHandler):
            h.show_iterations, h.show_n_orig = iterations, n_orig


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
        # iteration lines by default on a terminal only (fit --progress/--no-progress);
        # restart headers and summaries always
        handler = ProgressHandler(show_iterations=sys.stderr.isatty(), show_n_orig=False,
                                  warning_prefix="daskgmmis: warning: ")
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
    return _callable_arg(spec, what)


def _callable_arg(spec: str | None, what: str):
    """A user callable named module:function or file.py:function (None stays None)."""
    if spec is None:
        return None
    obj = _load_object(spec.strip(), what)
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
    return _callable_arg(spec, what)


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
