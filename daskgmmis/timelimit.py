"""A time limit for user callbacks (``sel_callback``, ``covar_callback``).

A callback that never returns would hang a fit forever, inside a block task
where nothing names it. :class:`TimeLimited` runs each call in its own daemon
thread and waits at most ``seconds``; past that it raises a
:class:`~daskgmmis.errors.CallbackError` that names the callback, the limit and
the coordinates' shape. Python cannot stop a running thread: the abandoned call
keeps its thread until it returns, but the fit ends with the error.
"""

from __future__ import annotations

import math
import threading

from .errors import CallbackError, InputError

__all__ = ["TimeLimited", "time_limited", "check_timeout"]


def check_timeout(seconds, name: str = "callback_timeout") -> None:
    """``seconds`` is None or a finite number > 0."""
    if seconds is None:
        return
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"{name}: expected None or a finite number of seconds > 0; found "
                         f"{seconds!r}.")


class TimeLimited:
    """``func`` with each call limited to ``seconds`` (picklable when ``func`` is).

    Parameters
    ----------
    func : callable
        ``func(coords (n, D)) -> array``.
    seconds : float
        Time limit of one call.
    name : str
        The callback's argument name, for the message.
    """

    def __init__(self, func, seconds: float, name: str):
        self.func, self.seconds, self.name = func, float(seconds), name

    def __call__(self, coords):
        out = {}

        def run():
            try:
                out["value"] = self.func(coords)
            except BaseException as e:      # re-raised in the caller's thread
                out["error"] = e

        t = threading.Thread(target=run, daemon=True, name=f"daskgmmis-{self.name}")
        t.start()
        t.join(self.seconds)
        if t.is_alive():
            raise CallbackError(
                f"{self.name}: did not return within callback_timeout={self.seconds:g} s when "
                f"called on coords of shape {getattr(coords, 'shape', '?')}; the call was "
                f"abandoned. Fix the callback (does it wait on something, or loop?) or "
                f"raise callback_timeout.")
        if "error" in out:
            raise out["error"]
        return out["value"]

    def to_dict(self):
        """As the wrapped callback's (checkpoint fingerprints ignore the limit)."""
        return self.func.to_dict() if hasattr(self.func, "to_dict") else None


def time_limited(func, seconds: float | None, name: str):
    """``func`` limited to ``seconds`` per call; unchanged when either is None."""
    if func is None or seconds is None:
        return func
    return TimeLimited(func, seconds, name)
