"""The one way the package writes a file: atomically, with the umask's permissions.

Model files, checkpoints, run reports and figures are written to a fresh
temporary name in the target's directory, flushed to disk, and renamed over the
target: a reader sees the old file or the new one, never half of one, and an
interrupted write leaves the old file untouched. The temporary file is created
with ``open`` (mode ``0o666`` less the umask), so every output has the
permissions the user's umask gives, as any other program's output would.

Stores (Zarr directories) have their own writer, :func:`daskgmmis.catalog.new_store`.
"""

from __future__ import annotations

import os
import uuid

from .errors import OutputError, OutputExistsError

__all__ = ["check_new_output", "write_atomic", "write_bytes_atomic"]


def check_new_output(path, overwrite: bool, *, hint: str = "overwrite=True",
                     exists_error: type = OutputExistsError) -> str:
    """Refuse an existing output unless ``overwrite``; the directory must exist.

    Parameters
    ----------
    path : str or os.PathLike
        Local path of a file or store to be written.
    overwrite : bool
    hint : str
        How the caller allows overwriting, for the message (``"--overwrite"`` in
        the CLI).
    exists_error : type
        :class:`OutputExistsError` or a subclass (stores raise
        :class:`~daskgmmis.errors.StoreExistsError`).

    Returns
    -------
    str
        ``path`` as a string.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputError
        The parent directory does not exist.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise exists_error(f"path: {path} exists; pass {hint} to replace it.")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError(f"path: directory {directory} does not exist; create it first "
                          f"or write elsewhere.")
    return path


def write_atomic(path, write, *, suffix: str = "") -> None:
    """Write a file through ``write(tmp_path)``, then rename it over ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Target file; its directory must exist.
    write : callable
        ``write(tmp_path)`` creates the file at ``tmp_path`` (e.g.
        ``fig.savefig``); it must not exist before.
    suffix : str
        Ending of the temporary name (some writers infer the format from it).

    Raises
    ------
    OutputError
        The file cannot be written (permissions, full disk...); the previous file,
        if any, is unchanged.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    # hidden, unique, and recognizable as temporary (".tmp", before a format suffix)
    tmp = os.path.join(directory,
                       f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        write(tmp)
        # the data on disk before the name: a crash cannot leave an empty file
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise OutputError(f"path: cannot write {path} ({type(e).__name__}: {e}); the "
                          f"previous file, if any, is unchanged.") from e
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    """:func:`write_atomic` of a bytes payload."""
    def write(tmp):
        with open(tmp, "xb") as f:
            f.write(data)

    write_atomic(path, write)


def _remove(tmp: str) -> None:
    if os.path.exists(tmp):
        os.unlink(tmp)
