"""Simulated observations: a model's population seen through noise and a selection.

:func:`draw` plays the observation process that a truncated fit inverts:
population rows from the mixture (and an optional uniform background), Gaussian
noise with covariance from ``covar_callback`` at the *true* positions, and the
selection ``Omega`` evaluated at the *noisy* positions, each row kept with
probability ``Omega``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .background import Background
from .errors import CallbackError, InputError, InputTypeError
from .model import GMM
from .noise import NoNoise, Noise, noise_class
from .selection import evaluate_covar_callback, evaluate_selection
from .validation import check_background

__all__ = ["draw"]

# Population rows simulated per batch: bounds the scratch memory (a full noise
# covariance per row) whatever the selected fraction.
_MAX_BATCH = 1 << 18


def _count(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name}: expected a non-negative integer or None; found "
                             f"{value!r}.")
    if value < 0:
        raise InputError(f"{name}: expected a non-negative integer; found {value}.")
    return int(value)


def draw(gmm: GMM, obs_size: int | None = None, sel_callback: Callable | None = None,
         invert_sel: bool = False, orig_size: int | None = None,
         covar_callback: Callable | None = None, background: Background | None = None,
         rng=None, *, max_draws: int | None = None
         ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Simulate an observed (noisy, selected) catalog from a model.

    Population rows are drawn from ``gmm`` and, with probability
    ``background.amp`` each, uniformly over the background's box. Each row gets
    Gaussian noise with covariance ``covar_callback(true positions)``; the
    selection ``sel_callback`` is evaluated at the noisy position and the row is
    kept (observed) with that probability.

    Parameters
    ----------
    gmm : GMM
        Model of the error-free population (amplitudes are normalized; use
        ``background`` for a background: ``gmm.background`` is not used implicitly).
    obs_size : int or None
        Number of rows to return. Population rows are drawn in batches until
        ``obs_size`` rows are kept (not kept with ``invert_sel``). Give exactly one
        of ``obs_size`` and ``orig_size``.
    sel_callback : callable, optional
        Selection ``Omega(coords (n, D)) -> (n,)`` in ``[0, 1]`` (booleans accepted),
        e.g. a :mod:`daskgmmis.selection` object. ``None``: every row is observed.
    invert_sel : bool
        Return the rows that were *not* observed (each rejected with probability
        ``1 - Omega``). Needs ``sel_callback``.
    orig_size : int or None
        Draw exactly this many population rows and return whichever are kept
        (their number is random). Requires ``obs_size=None``.
    covar_callback : callable, optional
        Noise covariance at the true positions, data units squared: returns
        ``(n, D, D)`` full, ``(n, D)`` diagonal variances or one shared ``(D, D)``
        matrix. ``None``: no noise.
    background : Background, optional
        Uniform background over ``(background.lower, background.upper)``;
        ``background.amp`` is the background fraction of the population.
    rng : None, int, Generator or SeedSequence
        Random source; a fixed seed reproduces the output exactly.
    max_draws : int, optional
        Cap on the population rows drawn when ``obs_size`` is given, default
        ``1000 * obs_size + 100_000``: a selection that keeps (rejects, inverted)
        almost nothing raises instead of running forever.

    Returns
    -------
    samples : ndarray, shape (n, D)
        Noisy positions of the returned rows, in random order; ``n = obs_size``
        when ``obs_size`` is given.
    covar_samples : ndarray or None
        Their noise as the callback gave it: ``(n, D, D)``, ``(n, D)`` or the
        ``(D, D)`` shared matrix (``(n, D, D)`` if a shared matrix differed between
        batches); ``None`` without ``covar_callback``.
    N_orig : int
        Population size behind the sample. With ``obs_size``: the position, in
        the stream of population rows, of the row that completed the sample (a
        negative-binomial draw with mean ``obs_size / f``, ``f`` the kept
        fraction), so rows drawn beyond it are not counted. With ``orig_size``:
        ``orig_size``.

    Raises
    ------
    InputTypeError, InputError
        Invalid arguments (type, sign, both or neither of the sizes, background
        dimension, ``invert_sel`` without a selection).
    CallbackError
        A callback raised or returned invalid values, the noise kind changed
        between batches, or ``max_draws`` population rows gave too few rows.
    """
    if not isinstance(gmm, GMM):
        raise InputTypeError(f"gmm: expected a daskgmmis.GMM; found {type(gmm).__name__}.")
    D = gmm.D
    check_background(background, D, "gmm")
    amp, _, _ = gmm._params(background)     # with the background's share: total 1
    obs_size, orig_size = _count(obs_size, "obs_size"), _count(orig_size, "orig_size")
    if (obs_size is None) == (orig_size is None):
        raise InputError("obs_size, orig_size: give exactly one: obs_size (rows to return) "
                         "or orig_size (population rows to draw, with obs_size=None); found "
                         f"obs_size={obs_size}, orig_size={orig_size}.")
    for name, cb in (("sel_callback", sel_callback), ("covar_callback", covar_callback)):
        if cb is not None and not callable(cb):
            raise InputTypeError(f"{name}: expected None or a callable f(coords); found {cb!r}.")
    if not isinstance(invert_sel, (bool, np.bool_)):
        raise InputTypeError(f"invert_sel: expected a bool; found {invert_sel!r}.")
    if invert_sel and sel_callback is None:
        raise InputError("invert_sel=True needs a sel_callback: without a selection every "
                         "row is observed and none is left to return.")
    bg_amp = 0.0 if background is None else background.amp
    if bg_amp < 1.0 and amp.sum() <= 0:
        raise InputError("gmm.amp: all amplitudes are zero; nothing to draw the "
                         "non-background population from.")
    if max_draws is None:
        max_draws = 1000 * (obs_size or 0) + 100_000
    elif _count(max_draws, "max_draws") == 0:
        raise InputError("max_draws: expected an integer >= 1.")
    try:
        rng = np.random.default_rng(rng)
    except (TypeError, ValueError) as e:
        raise InputTypeError(f"rng: expected None, an int seed, a numpy Generator or a "
                             f"SeedSequence; found {rng!r} ({e}).") from None

    def batch(size: int):
        """Simulate ``size`` population rows: (noisy rows, Noise, kept mask)."""
        v = np.empty((size, D))
        is_bg = rng.random(size) < bg_amp
        n_bg = int(is_bg.sum())
        if n_bg:
            v[is_bg] = rng.uniform(background.lower, background.upper, (n_bg, D))
        if n_bg < size:
            v[~is_bg] = gmm.draw(size - n_bg, rng=rng)
        noise = NoNoise()
        if covar_callback is not None:
            kind, arr = evaluate_covar_callback(covar_callback, v)
            noise = noise_class(kind).from_array(arr)
            v = v + noise.sample(rng.standard_normal(v.shape))
        if sel_callback is None:
            kept = np.ones(size, dtype=bool)
        else:
            kept = rng.random(size) < evaluate_selection(sel_callback, v)
            if invert_sel:
                kept = ~kept
        return v, noise, kept

    target = orig_size if obs_size is None else obs_size
    rows, noises, kinds = [], [], set()
    n_kept = n_drawn = 0
    N_orig = orig_size
    while True:
        if obs_size is None:
            size = min(orig_size - n_drawn, _MAX_BATCH)
        elif target == 0:
            size = 0
        else:
            # aim slightly past the expected need; the prior 0.5 keeps the fraction
            # estimate positive after an empty batch
            frac = 1.0 if n_drawn == 0 else (n_kept + 0.5) / n_drawn
            size = min(math.ceil(1.1 * (target - n_kept) / frac) + 16, _MAX_BATCH,
                       max_draws - n_drawn)
        if size <= 0 and (n_drawn > 0 or target > 0):
            break
        v, noise, kept = batch(max(size, 0))
        kinds.add(noise.kind)
        if len(kinds) > 1:
            raise CallbackError(f"covar_callback: returned noise of kinds {sorted(kinds)} in "
                                f"different calls; expected one kind (full, diag or shared).")
        idx = np.flatnonzero(kept)
        if obs_size is not None and n_kept + idx.size >= obs_size:
            idx = idx[:obs_size - n_kept]
            # rows after the one that completed the sample did not contribute
            N_orig = n_drawn + (int(idx[-1]) + 1 if idx.size else 0)
        rows.append(v[idx])
        noises.append(noise.rows(idx))
        n_kept += idx.size
        n_drawn += max(size, 0)
        if N_orig is not None and (obs_size is not None or n_drawn >= orig_size):
            break
    if N_orig is None:
        what = "unobserved" if invert_sel else "observed"
        raise CallbackError(
            f"sel_callback: only {n_kept} of {n_drawn} population rows were {what} "
            f"(fraction {n_kept / max(n_drawn, 1):.3g}); obs_size={obs_size} would need about "
            f"{obs_size * n_drawn / max(n_kept, 1):.3g} draws, beyond max_draws={max_draws}. "
            f"Check the selection, or raise max_draws.")
    samples = np.concatenate(rows)
    covar_samples = Noise.concatenate(noises, [len(r) for r in rows]).array
    return samples, covar_samples, int(N_orig)
