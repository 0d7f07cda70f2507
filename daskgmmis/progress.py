"""Progress a person can see: the fit's log records as lines on stderr.

The EM driver logs on the ``daskgmmis`` logger: per start a ``restart_start``
event ("restart k/n"), one record per iteration (``"iteration %d: mean logL
..."`` with the iteration, mean log-likelihood per row, its change, N_orig and
seconds), a ``restart_end`` summary and a ``fit_end`` summary (events carry
their values in the record's ``daskgmmis_event`` and named attributes).
:class:`ProgressHandler` lays these out as aligned columns; on a terminal the
iteration line is rewritten in place (``\\r``) and the summaries stay, else
every ``interval``-th iteration gets its own line. The command line installs
it for every command; :func:`progress_display` installs it for one fit
(``fit(..., progress=True)``, the estimator's ``verbose``).
"""

from __future__ import annotations

import contextlib
import logging
import sys

__all__ = ["ProgressHandler", "progress_display", "iteration_values"]

log = logging.getLogger("daskgmmis")


def iteration_values(record: logging.LogRecord):
    """(iteration, mean logL, change, N_orig, seconds) of an EM iteration record, or None."""
    args = record.args
    if (isinstance(record.msg, str) and record.msg.startswith("iteration ")
            and isinstance(args, tuple) and len(args) == 5):
        return args
    return None


class ProgressHandler(logging.Handler):
    """Writes the library's log records to a stream (default: the current stderr).

    Parameters
    ----------
    stream : file-like, optional
        Where to write; default ``sys.stderr`` at the time of each record (so
        that redirections made after construction are followed).
    show_iterations : bool
        Show the per-iteration lines (the restart headers and summaries are
        always shown).
    show_n_orig : bool
        Show N_orig in the iteration lines (truncated fits).
    interval : int
        Show every ``interval``-th iteration (and the last of each start).
    warning_prefix : str
        Put before warning messages.
    """

    def __init__(self, stream=None, *, show_iterations: bool = True,
                 show_n_orig: bool = True, interval: int = 1, warning_prefix: str = ""):
        super().__init__()
        self._stream = stream
        self.show_iterations = show_iterations
        self.show_n_orig = show_n_orig
        self.interval = max(int(interval), 1)
        self.warning_prefix = warning_prefix
        self._pending = False       # an in-place (\r) iteration line is on screen

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stderr

    def _tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty and isatty())
        except ValueError:           # closed stream
            return False

    def format_iteration(self, values) -> str:
        it, logl, change, n_orig, secs = values
        line = f"  iter {it:5d}  mean logL {logl:12.6f}  change "
        line += "         -" if change != change else f"{change:+10.3e}"
        if self.show_n_orig:
            line += f"  N_orig {n_orig:12.1f}"
        return line + f"  {secs:7.3f} s/iter"

    def _write(self, text: str, in_place: bool = False) -> None:
        stream = self.stream
        if in_place:
            stream.write("\r\x1b[2K" + text)
        else:
            stream.write(("\n" if self._pending else "") + text + "\n")
        self._pending = in_place
        stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            values = iteration_values(record)
            event = getattr(record, "daskgmmis_event", None)
            if values is not None:
                if self.show_iterations and (values[0] % self.interval == 0):
                    self._write(self.format_iteration(values), in_place=self._tty())
                return
            line = record.getMessage()
            if event == "restart_start":
                line = f"restart {record.restart}/{record.n_init}"
            elif event in ("restart_end", "fit_end"):
                line = "  " + line if event == "restart_end" else line
            if record.levelno >= logging.WARNING:
                line = f"{self.warning_prefix}{line}"
            self._write(line)
        except Exception:   # a progress line must never break a fit
            self.handleError(record)

    def close(self) -> None:
        if self._pending:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (ValueError, OSError):
                pass
            self._pending = False
        super().close()


@contextlib.contextmanager
def progress_display(stream=None, *, interval: int = 1, show_n_orig: bool = True):
    """Show the fit's progress on ``stream`` (default stderr) inside the block.

    Attaches a :class:`ProgressHandler` to the ``daskgmmis`` logger and lowers
    its level to INFO for the block, not propagating these INFO records to the
    root logger's handlers then (all restored after). Does nothing when a
    :class:`ProgressHandler` is attached already (the command line's), so no
    line is shown twice.
    """
    if any(isinstance(h, ProgressHandler) for h in log.handlers):
        yield
        return
    handler = ProgressHandler(stream, interval=interval, show_n_orig=show_n_orig)
    handler.setLevel(logging.INFO)
    previous, propagate = log.level, log.propagate
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
        # the INFO records were not asked for by the user's logging set-up: do not
        # pass them on to its handlers (they would show every line twice)
        log.propagate = False
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
        log.propagate = propagate
        handler.close()
