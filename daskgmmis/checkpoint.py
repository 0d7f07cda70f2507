"""Durable EM state: written atomically after every iteration, read to resume.

A checkpoint is one ``.npz`` file (read with ``allow_pickle=False``: loading never
executes code) holding the parameter sets the driver needs to continue exactly
where it stopped, plus a JSON header with the problem's *fingerprint*: data
shape and chunking, the first-pass data summary (exact sums, minima and maxima),
K, the noise kind, and every option that changes the EM map. A checkpoint whose
fingerprint differs from the current problem is refused, never silently reused.
Options that only decide when to stop (``tol``, ``maxiter``) are not part of it,
so a fit can be resumed with a larger ``maxiter``.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from .acceleration import OVERRELAX_START
from .errors import CheckpointError
from .files import write_bytes_atomic
from .model import Theta
from .stats import SuffStats
from .stepwise import RunningStats

__all__ = ["Theta", "EMState", "save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "daskgmmis-checkpoint"
CHECKPOINT_VERSION = 3   # 2: fixed-sample imputation (another EM map); 3: Anderson memory


@dataclass
class EMState:
    """Everything needed to continue a fit bit-identically.

    Attributes
    ----------
    theta : Theta
        The parameters to evaluate next.
    mix_next : bool
        The next plain EM step is replaced by the acceleration's mixed point
        (every other one is).
    fallback : Theta or None
        Plain-EM point to fall back to if the extrapolated ``theta`` is rejected.
    fallback_logL : float
        Likelihood the extrapolated point must reach to be accepted.
    f_obs : float
        Observed fraction that sizes the imputation (quantized, updated with
        hysteresis; see ``daskgmmis.em._sizing_fraction``).
    n_iter : int
        M-steps done.
    history, n_orig_history, seconds : list of float
        Per accepted E-step: mean logL, N_orig, wall time.
    seed : list
        Root seed of the fit's random streams: ``[str(entropy), *spawn_key]``.
    sw_steps : int
        Stepwise-EM groups done (:mod:`daskgmmis.stepwise`).
    sw_group : int
        Blocks per stepwise group (fixed at the first step, kept on resume).
    sw_running : RunningStats or None
        Running statistics of the stepwise phase.
    sw_restart : bool
        The next group's statistics replace the running ones (after a re-seed).
    sw_history : list of float
        Mean log-likelihood per row of every stepwise group.
    proposal : Theta or None
        Parameters the imputation's fixed sample was drawn at (None: not drawn yet).
    plain_from : Theta or None
        The evaluated point whose plain EM step gave ``theta`` (None when ``theta``
        is extrapolated or the imputation sample was just redrawn): the
        convergence test compares the two.
    fallback_from : Theta or None
        ``plain_from`` of ``fallback``.
    rates : list of float
        Recent contraction rates of plain EM steps (convergence test).
    stabilized : bool
        The pending ``theta`` is one EM step from the extrapolated point (the
        stabilization step), judged for the last time.
    memory_x, memory_g : list of ndarray, each (P,)
        The acceleration's pairs ``(x, M(x))`` of the EM map, packed
        (:func:`daskgmmis.acceleration.pack`), oldest first.
    memory_scale : ndarray, shape (D,), or None
        The packing's unit (None while the memory is empty).
    mixed_step : float
        Relative change of N_orig made by the last accepted mixed point (0 after a
        rejected or impossible one): the convergence test's lower bound of the
        change still to come.
    overrelax : float
        Length, in EM steps, of the next over-relaxed step (where EM leaves a
        saddle; :func:`daskgmmis.acceleration.overrelaxed`).
    overrelaxing : bool
        The pending mixed point is an over-relaxed step (its outcome sets
        ``overrelax``).
    newton_at : int
        Iteration of the last Newton point (where EM crawls along a ridge;
        ``daskgmmis.em``), -1 before the first: the next waits its turn.
    newton_probes : int
        E-steps spent probing EM's Jacobian for Newton points (counted in
        ``FitResult.passes``).
    """

    theta: Theta
    mix_next: bool = False
    fallback: Theta | None = None
    fallback_logL: float = -np.inf
    f_obs: float = 0.5
    n_iter: int = 0
    history: list = field(default_factory=list)
    n_orig_history: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    seed: list = field(default_factory=list)
    sw_steps: int = 0
    sw_group: int = 0
    sw_running: RunningStats | None = None
    sw_restart: bool = False
    sw_history: list = field(default_factory=list)
    proposal: Theta | None = None
    plain_from: Theta | None = None
    fallback_from: Theta | None = None
    rates: list = field(default_factory=list)
    stabilized: bool = False
    memory_x: list = field(default_factory=list)
    memory_g: list = field(default_factory=list)
    memory_scale: np.ndarray | None = None
    mixed_step: float = 0.0
    overrelax: float = OVERRELAX_START
    overrelaxing: bool = False
    newton_at: int = -1
    newton_probes: int = 0


def _theta_arrays(prefix: str, t: Theta) -> dict:
    out = {f"{prefix}.amp": t.amp, f"{prefix}.mean": t.mean, f"{prefix}.covar": t.covar}
    if t.bg_amp is not None:
        out[f"{prefix}.bg_amp"] = np.array([t.bg_amp])
    return out


def _theta_from(arrays: dict, prefix: str) -> Theta:
    bg = arrays.get(f"{prefix}.bg_amp")
    return Theta(arrays[f"{prefix}.amp"], arrays[f"{prefix}.mean"], arrays[f"{prefix}.covar"],
                 None if bg is None else float(bg[0]))


def save_checkpoint(path, state: EMState, fingerprint: dict) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    Parameters
    ----------
    path : str or os.PathLike
    state : EMState
    fingerprint : dict
        JSON-serializable description of the problem.
    """
    path = os.fspath(path)
    arrays = _theta_arrays("theta", state.theta)
    if state.fallback is not None:
        arrays.update(_theta_arrays("fallback", state.fallback))
    for name in ("proposal", "plain_from", "fallback_from"):
        if getattr(state, name) is not None:
            arrays.update(_theta_arrays(name, getattr(state, name)))
    arrays["history"] = np.asarray(state.history, dtype=np.float64)
    arrays["n_orig_history"] = np.asarray(state.n_orig_history, dtype=np.float64)
    arrays["seconds"] = np.asarray(state.seconds, dtype=np.float64)
    arrays["sw.history"] = np.asarray(state.sw_history, dtype=np.float64)
    arrays["rates"] = np.asarray(state.rates, dtype=np.float64)
    if state.memory_scale is not None:
        arrays.update({"memory.x": np.array(state.memory_x), "memory.g": np.array(state.memory_g),
                       "memory.scale": state.memory_scale})
    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
              "fingerprint": fingerprint, "mix_next": state.mix_next,
              "n_iter": state.n_iter, "f_obs": state.f_obs.hex(),
              "fallback_logL": float(state.fallback_logL).hex(), "seed": state.seed,
              "sw_steps": state.sw_steps, "sw_group": state.sw_group,
              "sw_restart": state.sw_restart, "stabilized": state.stabilized,
              "mixed_step": float(state.mixed_step).hex(),
              "overrelax": float(state.overrelax).hex(), "overrelaxing": state.overrelaxing,
              "newton_at": state.newton_at, "newton_probes": state.newton_probes}
    run = state.sw_running
    if run is not None:
        arrays.update({"sw.A": run.stats.A, "sw.M1": run.stats.M1, "sw.M2": run.stats.M2,
                       "sw.anchor": run.anchor})
        header.update({"sw_bg": float(run.stats.bg).hex(), "sw_n_orig": run.n_orig.hex()})
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path, fingerprint: dict) -> EMState | None:
    """Read a checkpoint of the same problem, or None if ``path`` does not exist.

    Raises
    ------
    CheckpointError
        The file is not a readable checkpoint, or belongs to another problem (the
        differing fingerprint entries are named).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
    except Exception as e:  # any parse failure of the bytes (zip, npy, JSON, EOF...)
        reason = str(e)
        if "pickle" in reason:
            # numpy suggests allow_pickle=True: wrong advice for a file that may be hostile
            reason = "not an .npz archive of plain arrays; daskgmmis never unpickles"
        raise CheckpointError(f"checkpoint: {path} is not a readable daskgmmis checkpoint "
                              f"({type(e).__name__}: {reason}); remove it or pass another "
                              f"path.") from None
    if header.get("format") != CHECKPOINT_FORMAT or header.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint: {path} has format {header.get('format')!r} version "
                              f"{header.get('version')!r}; expected {CHECKPOINT_FORMAT!r} "
                              f"version {CHECKPOINT_VERSION}.")
    stored = header.get("fingerprint", {})
    if stored != fingerprint:
        diff = sorted(k for k in set(stored) | set(fingerprint)
                      if stored.get(k) != fingerprint.get(k))
        raise CheckpointError(
            f"checkpoint: {path} belongs to another problem (differs in: {', '.join(diff)}); "
            f"it is never reused for a different fit. Remove it or pass another path.")
    try:
        return EMState(
            theta=_theta_from(arrays, "theta"),
            mix_next=bool(header["mix_next"]),
            fallback=_theta_from(arrays, "fallback") if "fallback.amp" in arrays else None,
            fallback_logL=float.fromhex(header["fallback_logL"]),
            f_obs=float.fromhex(header["f_obs"]), n_iter=int(header["n_iter"]),
            history=arrays["history"].tolist(),
            n_orig_history=arrays["n_orig_history"].tolist(),
            seconds=arrays["seconds"].tolist(), seed=list(header["seed"]),
            sw_steps=int(header["sw_steps"]), sw_group=int(header["sw_group"]),
            sw_restart=bool(header["sw_restart"]), sw_history=arrays["sw.history"].tolist(),
            sw_running=None if "sw.A" not in arrays else RunningStats(
                SuffStats(arrays["sw.A"], arrays["sw.M1"], arrays["sw.M2"],
                          float.fromhex(header["sw_bg"])),
                arrays["sw.anchor"], float.fromhex(header["sw_n_orig"])),
            rates=arrays["rates"].tolist(), stabilized=bool(header["stabilized"]),
            memory_x=list(arrays.get("memory.x", [])), memory_g=list(arrays.get("memory.g", [])),
            memory_scale=arrays.get("memory.scale"),
            mixed_step=float.fromhex(header.get("mixed_step", "0x0p+0")),
            overrelax=float.fromhex(header.get("overrelax", OVERRELAX_START.hex())),
            overrelaxing=bool(header.get("overrelaxing", False)),
            newton_at=int(header.get("newton_at", -1)),
            newton_probes=int(header.get("newton_probes", 0)),
            **{name: _theta_from(arrays, name) if f"{name}.amp" in arrays else None
               for name in ("proposal", "plain_from", "fallback_from")})
    except KeyError as e:
        raise CheckpointError(f"checkpoint: {path} is missing {e}; it is corrupted.") from None
