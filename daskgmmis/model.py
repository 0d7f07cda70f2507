"""The Gaussian mixture model: parameters, density, sampling and safe persistence."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass

import numpy as np

from . import kernels
from .noise import NoNoise, Noise, noise_block
from .background import Background
from .background import log_background as _log_background
from .errors import InputError, InputTypeError, ModelFileError
from .files import check_new_output, write_bytes_atomic
from .validation import is_dask as _is_dask
from .validation import (check_background, check_data_block, check_model_params,
                         check_numeric, check_projection_block, check_projection_shape)
from .memory import machine_memory_limit

__all__ = ["GMM", "MODEL_FORMAT", "MODEL_FORMAT_VERSION"]

MODEL_FORMAT = "daskgmmis-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class Theta:
    """One parameter set of the EM iteration.

    Attributes
    ----------
    amp : ndarray, shape (K,)
    mean : ndarray, shape (K, D)
    covar : ndarray, shape (K, D, D)
    bg_amp : float or None
        Background amplitude (None without a background).
    """

    amp: np.ndarray
    mean: np.ndarray
    covar: np.ndarray
    bg_amp: float | None = None


class GMM:
    """Gaussian mixture ``p(v) = sum_k amp_k N(v | mean_k, covar_k)``.

    Parameters
    ----------
    K : int
        Number of components, ``K >= 1``.
    D : int
        Number of dimensions, ``D >= 1``.

    Attributes
    ----------
    amp : ndarray, shape (K,)
        Component amplitudes (sum to 1, or to ``1 - background.amp``).
    mean : ndarray, shape (K, D)
        Component means, data units.
    covar : ndarray, shape (K, D, D)
        Component covariances, data units squared.
    background : Background or None
        Background saved with (and loaded from) a model file, if any.
    columns : list of str or None
        Feature names, D of them: set by :func:`daskgmmis.fit` from a catalog's
        column names, saved with the model and used to label its outputs
        (``sample``, ``posterior``, figures). None: unnamed (``x0 ..``).
    """

    def __init__(self, K: int = 1, D: int = 1):
        for name, v in (("K", K), ("D", D)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise InputTypeError(f"{name}: expected a positive integer; found {v!r}.")
            if v < 1:
                raise InputError(f"{name}: expected an integer >= 1; found {v}.")
        self.amp = np.full(K, 1.0 / K)
        self.mean = np.zeros((K, D))
        self.covar = np.broadcast_to(np.eye(D), (K, D, D)).copy()
        self.background: Background | None = None
        self.columns: list | None = None

    @property
    def K(self) -> int:
        return int(np.shape(self.amp)[0])

    @property
    def D(self) -> int:
        return int(np.shape(self.mean)[1])

    def __repr__(self) -> str:
        return f"GMM(K={self.K}, D={self.D})"

    def copy(self) -> "GMM":
        """A deep copy (parameters and background)."""
        g = GMM(self.K, self.D)
        g.amp, g.mean, g.covar = (np.array(a, dtype=np.float64) for a in
                                  (self.amp, self.mean, self.covar))
        if self.background is not None:
            g.background = Background.from_dict(self.background.to_dict())
        g.columns = None if self.columns is None else list(self.columns)
        return g

    def _params(self, background: Background | None = None):
        """(amp, mean, covar) as float64, checked (shapes, values, amplitudes summing to
        1 with ``background``'s share when one is given)."""
        out = []
        for name in ("amp", "mean", "covar"):
            value = getattr(self, name)
            a = check_numeric(value, f"gmm.{name}")
            out.append(np.asarray(a, dtype=np.float64))
        amp, mean, covar = out
        bg_amp = background.amp if isinstance(background, Background) else None
        check_model_params(amp, mean, covar, bg_amp=bg_amp)
        return amp, mean, covar

    # ------------------------------------------------------------------ density

    def __call__(self, coords, covar=None, as_log: bool = False, background=None, *,
                 projection=None):
        """Density (or log-density) of the mixture, convolved with noise.

        Parameters
        ----------
        coords : array_like or dask array, shape (n, D)
            NaN marks a missing feature, marginalized exactly.
        covar : None or array, optional
            Noise: shared ``(D, D)``, diagonal variances ``(n, D)`` or full
            ``(n, D, D)``; data units squared.
        as_log : bool
            Return ``log p`` instead of ``p``.
        background : Background, optional
            Add ``amp_bg * U(x)`` (noise-convolved) to the density.
        projection : None, ndarray or dask array, shape (d, D) or (n, d, D)
            The rows are ``y_i = R_i v_i + e_i`` (d columns, noise d x d): the density
            of ``y_i`` (docs/design.md §1.1). Not combined with ``background``.

        Returns
        -------
        ndarray or dask array, shape (n,)
            Lazy (dask) when ``coords`` is a dask array.
        """
        return self._density(coords, covar, as_log, background, projection=projection)

    def _density(self, coords, covar, as_log, background, name="coords", projection=None):
        """:meth:`__call__`, with ``name`` the caller's argument name for messages."""
        amp, mean, cov = self._params(background)
        D = mean.shape[1]
        if projection is None:
            check_background(background, D, "the model")
        # under a projection a background is uniform over a box of the data's space:
        # log_background checks it against the rows' width where they are read
        if _is_dask(coords):
            return self._dask_density(coords, covar, as_log, background, amp, mean, cov, name,
                                      projection)
        x = np.asarray(check_numeric(coords, name))
        if x.ndim == 1 and D == 1:
            x = x[:, None]
        d = D
        if projection is not None:
            if _is_dask(projection):
                projection = projection.compute()
            projection = np.asarray(check_numeric(projection, "projection"))
            if x.ndim == 2:
                d = x.shape[1]
                check_projection_shape(projection.shape, x.shape[0], d, D)
        if x.ndim != 2 or x.shape[1] != d:
            raise InputError(f"{name}: expected shape (n, D) with D={D}; found {x.shape}.")
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float64)
        check_data_block(x, 0, name, allow_empty=True)
        noise = None
        if covar is not None:
            noise = np.asarray(check_numeric(covar, "covar"), dtype=np.float64)
        nz = Noise.of(noise, x.shape[0], d, warn_ambiguous=True)
        nz.validate(x, 0)
        if projection is not None:
            projection = check_projection_block(projection, x, 0)
        log_bg = _log_background(background, x, nz)
        out = kernels.log_density_block(x, nz, None, amp, mean, cov, log_bg=log_bg,
                                        projection=projection)
        return out if as_log else np.exp(out)

    def _dask_density(self, coords, covar, as_log, background, amp, mean, cov, name,
                      projection=None):
        import dask.array as da

        D = mean.shape[1]
        d = D
        shared_R = None
        if projection is not None and coords.ndim == 2:
            d = coords.shape[1]
            if not check_projection_shape(projection.shape, coords.shape[0], d, D):
                shared_R = check_projection_block(
                    np.asarray(projection.compute() if _is_dask(projection) else projection),
                    None, 0)
                projection = None
            else:
                projection = da.asarray(projection).rechunk((coords.chunks[0], (d,), (D,)))
        if coords.ndim != 2 or coords.shape[1] != d:
            raise InputError(f"{name}: expected shape (n, D) with D={D}; found {coords.shape}.")
        check_numeric(coords, name)
        x = coords.rechunk({1: -1})
        if covar is not None and not _is_dask(covar):
            covar = np.asarray(check_numeric(covar, "covar"), dtype=np.float64)
        elif covar is not None:
            check_numeric(covar, "covar")
        noise = Noise.of(covar, x.shape[0], d)
        if not noise.per_row:
            noise.validate()
        kind, shared = noise.kind, noise.shared_matrix    # what crosses into the tasks
        # global index of each row, so that the checks in the block tasks name rows
        idx = da.arange(x.shape[0], chunks=(x.chunks[0],))

        def block(xb, ib, nb=None, pb=None):
            offset = int(ib[0]) if len(ib) else 0
            check_data_block(xb, offset, name, allow_empty=True)
            nz = noise_block(kind, nb, shared)
            if nz.per_row:
                nz.validate(xb, offset)
            R = shared_R if pb is None else check_projection_block(pb, xb, offset)
            log_bg = _log_background(background, xb, nz)
            out = kernels.log_density_block(xb, nz, None, amp, mean, cov, log_bg=log_bg,
                                            row_offset=offset, projection=R)
            return out if as_log else np.exp(out)

        args = [x, "ij", idx, "i"]
        if noise.per_row:
            rows = da.asarray(noise.row_array)
            rows = rows.rechunk((x.chunks[0],) + tuple((s,) for s in rows.shape[1:]))
            args += [rows, "ijk"[:rows.ndim]]
        else:
            args += [None, None]
        if projection is not None:
            args += [projection, "imn"]
        return da.blockwise(block, "i", *args, dtype=np.float64, concatenate=True)

    def logL(self, coords, covar=None, background=None, *, projection=None):
        """Log-density of each row: ``self(coords, covar, as_log=True)``."""
        return self(coords, covar, as_log=True, background=background, projection=projection)

    def condition(self, values, dims, *, background: Background | None = None) -> "GMM":
        """Conditional mixture over the other dimensions, given values of ``dims``.

        For ``a`` the remaining dimensions and ``b = dims``, ``p(v_a | v_b = values)``
        is a mixture with amplitudes ``amp_k N(values | mean_k[b], covar_k[b,b])``
        (renormalized in log space), means
        ``mean_k[a] + covar_k[a,b] covar_k[b,b]^-1 (values - mean_k[b])`` and
        covariances ``covar_k[a,a] - covar_k[a,b] covar_k[b,b]^-1 covar_k[b,a]``
        (Cholesky solves). This is the noise-free posterior of a row whose ``a``
        features are missing, and is computed by the same code
        (:func:`daskgmmis.kernels.posterior_block`).

        Parameters
        ----------
        values : array_like, shape (len(dims),)
            Fixed values of the conditioning dimensions, data units.
        dims : int or sequence of int
            Conditioning dimensions: unique, in ``[0, D)``, not all of them.
        background : Background, optional
            Background of the joint model (as in :meth:`__call__`; not taken from
            ``self.background`` implicitly). The result then carries the
            conditional background - uniform over the remaining dimensions of the
            footprint, amplitude ``P(background | values)`` - as ``.background``,
            and its Gaussian amplitudes sum to the rest.

        Returns
        -------
        GMM
            ``K`` components in ``D - len(dims)`` dimensions, in the order of the
            remaining dimensions.

        Raises
        ------
        InputTypeError
            ``dims`` are not integers.
        InputError
            ``dims`` repeated, out of range, empty or covering every dimension;
            ``values`` of the wrong shape or not finite.
        """

        amp, mean, cov = self._params(background)
        D = self.D
        d = np.atleast_1d(np.asarray(dims))
        if d.dtype == bool or (d.size and not np.issubdtype(d.dtype, np.integer)):
            raise InputTypeError(f"dims: expected integer dimension indices; found {dims!r}.")
        if d.ndim != 1:
            raise InputError(f"dims: expected an int or a 1-D sequence of ints; found "
                             f"shape {d.shape}.")
        if d.size == 0:
            raise InputError("dims: expected at least one conditioning dimension; found none.")
        if d.min() < 0 or d.max() >= D:
            raise InputError(f"dims: expected indices in [0, {D}); found {d.tolist()}.")
        if np.unique(d).size != d.size:
            raise InputError(f"dims: expected unique indices; found {d.tolist()}.")
        if d.size == D:
            raise InputError(f"dims: {d.tolist()} covers all D={D} dimensions; nothing is "
                             f"left to condition (use gmm(values) for the density).")
        v = np.atleast_1d(np.asarray(check_numeric(values, "values"), dtype=np.float64))
        if v.shape != (d.size,):
            raise InputError(f"values: expected shape ({d.size},) to match dims "
                             f"{d.tolist()}; found {np.shape(values)}.")
        if not np.all(np.isfinite(v)):
            raise InputError(f"values: expected finite numbers; found {v.tolist()}.")
        if background is not None and not isinstance(background, Background):
            raise InputTypeError(f"background: expected a daskgmmis.Background; found "
                                 f"{type(background).__name__}.")
        x = np.full((1, D), np.nan)
        x[0, d] = v
        log_bg = _log_background(background, x, NoNoise())
        post = kernels.posterior_block(x, NoNoise(), None, amp, mean, cov, log_bg)
        a = np.setdiff1d(np.arange(D), d)
        g = GMM(self.K, a.size)
        p_bg = 0.0 if post.resp_bg is None else float(post.resp_bg[0])
        g.amp = post.resp[0] * (1.0 - p_bg)
        g.mean = post.means[0][:, a]
        g.covar = post.covars[0][np.ix_(np.arange(self.K), a, a)]
        if log_bg is not None:
            g.background = Background((background.lower[a], background.upper[a]), p_bg,
                                      adjust_amp=background.adjust_amp)
        return g

    # ---------------------------------------------------------------- sampling

    def draw(self, size: int = 1, rng=None, *, projection=None, covar=None) -> np.ndarray:
        """Draw samples from the mixture (no selection), optionally projected and noisy.

        Parameters
        ----------
        size : int
            Number of samples.
        rng : None, int, Generator or SeedSequence
            Random source.
        projection : ndarray, shape (d, D) or (size, d, D), optional
            Return ``y_i = R_i v_i`` (+ noise) of the drawn ``v_i`` (docs/design.md
            §1.1): what a catalog fitted with ``projection`` holds.
        covar : ndarray, optional
            Noise added to the (projected) samples: shared ``(d, d)``, diagonal
            variances ``(size, d)`` or full ``(size, d, d)``; ``d = D`` without a
            projection. The mixture draws come first from ``rng``: the same seed
            gives the same ``v`` with and without projection or noise.

        Returns
        -------
        ndarray, shape (size, D), or (size, d) with a projection
            Samples in random order.
        """
        amp, mean, cov = self._params()
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise InputTypeError(f"size: expected a non-negative integer; found {size!r}.")
        size = int(size)
        if size < 0:
            raise InputError(f"size: expected a non-negative integer; found {size}.")
        try:
            rng = np.random.default_rng(rng)
        except (TypeError, ValueError) as e:
            raise InputTypeError(f"rng: expected None, an int seed, a numpy Generator or a "
                                 f"SeedSequence; found {rng!r} ({e}).") from None
        p = amp / amp.sum()
        counts = rng.multinomial(size, p)
        L = np.linalg.cholesky(cov)
        out = np.empty((size, self.D))
        start = 0
        for k, c in enumerate(counts):
            z = rng.standard_normal((c, self.D))
            out[start:start + c] = mean[k] + z @ L[k].T
            start += c
        rng.shuffle(out, axis=0)
        if projection is not None:
            R = np.asarray(check_numeric(projection, "projection"), dtype=np.float64)
            d = R.shape[-2] if R.ndim in (2, 3) else 0
            per_row = check_projection_shape(R.shape, size, d, self.D)
            R = check_projection_block(R, np.zeros((size, d)) if per_row else None, 0)
            out = out @ R.T if not per_row else np.einsum("nij,nj->ni", R, out)
        if covar is not None:
            nz = Noise.of(np.asarray(check_numeric(covar, "covar"), dtype=np.float64),
                          size, out.shape[1])
            nz.validate(out, 0)
            out = out + nz.sample(rng.standard_normal(out.shape))
        return out

    # ---------------------------------------------------------------- persistence

    def save(self, path, *, background: Background | None = None,
             overwrite: bool = False) -> None:
        """Write the model to a safe, versioned, exact file (``.npz``, no pickle).

        Parameters
        ----------
        path : str or os.PathLike
            Destination file. Written atomically (temporary file, then rename).
        background : Background, optional
            Saved with the model (defaults to ``self.background``).
        overwrite : bool
            Replace an existing file; otherwise an existing file is an error.
        """
        bg = background if background is not None else self.background
        check_background(bg, self.D, "the model")
        amp, mean, cov = self._params(bg)
        path = check_new_output(_as_path(path), overwrite)
        bg_dict = None if bg is None else bg.to_dict()
        columns = check_columns(self.columns, self.D, "gmm.columns")
        meta = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION,
                "K": self.K, "D": self.D, "background": bg_dict,
                "sha256": _content_hash(amp, mean, cov, bg_dict)}
        if columns is not None:
            meta["columns"] = columns
        buf = io.BytesIO()
        np.savez(buf, amp=amp, mean=mean, covar=cov,
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        write_bytes_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path) -> "GMM":
        """Read a model written by :meth:`save`.

        Never unpickles: a crafted file cannot execute code. Every field is
        checked (format, version, shapes, finite values, positive-definite
        covariances); a model saved with a background gets it as ``.background``.

        Raises
        ------
        ModelFileError
            The file is missing, not a model file, of another version, or corrupted.
        """
        path = _as_path(path)
        if not os.path.exists(path):
            raise ModelFileError(f"path: model file {path} does not exist.")
        try:
            arrays, meta = _read_model_file(path)
        except ModelFileError:
            raise
        except Exception as e:  # any parse failure of untrusted bytes (zip, npy, JSON...)
            raise ModelFileError(f"{path}: not a readable daskgmmis model file "
                                 f"({type(e).__name__}: {e}).") from None
        for k, a in arrays.items():
            if a.dtype != np.float64:
                raise ModelFileError(f"{path}: array {k} has dtype {a.dtype}; expected float64.")
        g = cls(*arrays["mean"].shape)
        g.amp, g.mean, g.covar = arrays["amp"], arrays["mean"], arrays["covar"]
        try:
            g.columns = check_columns(meta.get("columns"), g.D, "columns")
        except (InputError, InputTypeError) as e:
            raise ModelFileError(f"{path}: invalid feature names in the header ({e}).") from None
        if meta.get("background") is not None:
            try:
                g.background = Background.from_dict(meta["background"])
            except KeyError as e:
                raise ModelFileError(f"{path}: invalid background record (missing key {e}); "
                                     f"expected lower, upper, amp, amp_min, amp_max and "
                                     f"adjust_amp.") from None
            except (TypeError, ValueError, AttributeError) as e:
                raise ModelFileError(f"{path}: invalid background record ({e}).") from None
            if g.background.D != g.D:
                raise ModelFileError(f"{path}: background has D={g.background.D}, model D={g.D}.")
        try:
            check_model_params(g.amp, g.mean, g.covar, where=path,
                               bg_amp=None if g.background is None else g.background.amp)
        except InputError as e:
            raise ModelFileError(f"corrupted model file: {e}") from None
        if "sha256" in meta and meta["sha256"] != _content_hash(
                g.amp, g.mean, g.covar, meta.get("background")):
            raise ModelFileError(f"{path}: the parameters do not match the checksum written "
                                 f"with them (sha256); the file was modified after it was "
                                 f"saved. Use the original file or fit the model again.")
        return g


def check_columns(columns, D: int, what: str = "columns") -> list | None:
    """Feature names: None, or D distinct non-empty strings.

    Returns
    -------
    list of str or None
    """
    if columns is None:
        return None
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise InputTypeError(f"{what}: expected a list of {D} feature names (str); found "
                             f"{columns!r}.")
    columns = list(columns)
    if len(columns) != D or any(not c for c in columns) or len(set(columns)) != D:
        raise InputError(f"{what}: expected {D} distinct, non-empty feature names; found "
                         f"{columns!r}.")
    return columns


# The header (meta) of a model file is a short JSON record.
_MAX_META_BYTES = 1 << 20
_ZIP_MAGIC = b"PK\x03\x04"


def _read_model_file(path: str):
    """The arrays and the header of a model file, reading sizes before contents.

    Nothing is allocated from what the file claims until it is checked: the
    header's K and D are positive integers; each member's ``.npy`` header names
    float64 and the shape (K,), (K, D) or (K, D, D); the member holds exactly
    that many bytes; and the parameters fit in what the file holds (a stored
    member) or in half this machine's memory (a compressed one). Arrays are
    then read from the member bytes, never unpickled.

    Returns
    -------
    arrays : dict of ndarray
        ``amp`` (K,), ``mean`` (K, D), ``covar`` (K, D, D).
    meta : dict
    """
    import zipfile

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        if not head:
            why = "EOFError: the file is empty"
        elif head.startswith(b"\x93NUM"):
            why = "a bare .npy array, not an .npz archive"
        elif head[:1] == b"\x80":
            why = ("a pickle, not an .npz archive of plain arrays: numpy would unpickle it, "
                   "which daskgmmis never does since unpickling can run code")
        else:
            why = "not a zip (.npz) archive"
        raise ModelFileError(f"{path}: not a readable daskgmmis model file ({why}).")
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
        names = {n[:-4] if n.endswith(".npy") else n for n in infos}
        if names != {"amp", "mean", "covar", "meta"} or len(infos) != 4:
            raise ModelFileError(f"{path}: expected arrays amp, mean, covar, meta; found "
                                 f"{sorted(names)}: not a daskgmmis model.")
        meta_bytes = _read_member(z, infos["meta.npy"], path, "meta", np.dtype(np.uint8),
                                  None, _MAX_META_BYTES)
        meta = json.loads(meta_bytes.tobytes().decode())
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{path}: format tag is {meta.get('format') if isinstance(meta, dict) else meta!r}; "
                                 f"expected {MODEL_FORMAT!r}.")
        # JSON true and 1.0 compare equal to 1 in Python; a version is an integer
        if type(meta.get("version")) is not int or meta["version"] != MODEL_FORMAT_VERSION:
            raise ModelFileError(f"{path}: model format version {meta.get('version')!r}; this "
                                 f"daskgmmis reads version {MODEL_FORMAT_VERSION}.")
        K, D = meta.get("K"), meta.get("D")
        for name, v in (("K", K), ("D", D)):
            if type(v) is not int or v < 1:
                raise ModelFileError(f"{path}: header has {name}={v!r}; expected a positive "
                                     f"integer.")
        need = 8 * K * (1 + D + D * D)
        stored = all(infos[f"{n}.npy"].compress_type == zipfile.ZIP_STORED
                     for n in ("amp", "mean", "covar"))
        limit = size if stored else machine_memory_limit()[0] // 2
        if need > limit:
            raise ModelFileError(f"{path}: header says K={K}, D={D}, {need / 2**20:.3g} MiB "
                                 f"of parameters, more than the file can hold "
                                 f"({'its size' if stored else 'half of the memory'}: "
                                 f"{limit / 2**20:.3g} MiB); the header is corrupted.")
        shapes = {"mean": (K, D), "amp": (K,), "covar": (K, D, D)}
        arrays = {n: _read_member(z, infos[f"{n}.npy"], path, n, np.dtype("<f8"), shp, need)
                  for n, shp in shapes.items()}
    return arrays, meta


def _read_member(z, info, path: str, name: str, dtype, shape, max_bytes: int) -> np.ndarray:
    """One ``.npy`` member of a zip, header first: refused unless its dtype is
    ``dtype``, its shape ``shape`` (any 1-D shape when None) and its size, as
    the header and the zip directory both say, at most ``max_bytes``."""
    fmt = np.lib.format
    with z.open(info) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shp, fortran, dt = fmt.read_array_header_1_0(f, max_header_size=10_000)
        elif version in ((2, 0), (3, 0)):
            shp, fortran, dt = fmt.read_array_header_2_0(f, max_header_size=10_000)
        else:
            raise ModelFileError(f"{path}: array {name} has .npy version {version}; expected "
                                 f"1.0 or 2.0.")
        if dt.hasobject:
            raise ModelFileError(f"{path}: not a readable daskgmmis model file (array {name} "
                                 f"holds Python objects: numpy would unpickle it, which "
                                 f"daskgmmis never does since unpickling can run code).")
        if dt.kind != dtype.kind or dt.itemsize != dtype.itemsize:
            raise ModelFileError(f"{path}: array {name} has dtype {dt}; expected {dtype}.")
        if shape is not None and tuple(shp) != shape:
            raise ModelFileError(f"{path}: header says K={shape[0]}"
                                 + (f", D={shape[1]}" if len(shape) > 1 else "")
                                 + f" but {name} has shape {tuple(shp)}.")
        if shape is None and len(shp) != 1:
            raise ModelFileError(f"{path}: array {name} has shape {tuple(shp)}; expected 1-D.")
        nbytes = int(np.prod(shp, dtype=np.float64)) * dt.itemsize
        body = info.file_size - f.tell()
        if nbytes > max_bytes or body != nbytes:
            raise ModelFileError(f"{path}: array {name} claims shape {tuple(shp)} "
                                 f"({nbytes} bytes) but its member holds {body} bytes "
                                 f"(limit {max_bytes}); the file is corrupted.")
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ModelFileError(f"{path}: array {name} is truncated.")
        f.read()        # to the end: zipfile checks the member's CRC there
    a = np.frombuffer(raw, dtype=dt)
    a = a.reshape(shp, order="F" if fortran else "C")
    return np.array(a, dtype=dtype.newbyteorder("=") if dtype.kind == "f" else dtype)


def _as_path(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"path: expected a str or os.PathLike file name; found "
                             f"{type(path).__name__}.")
    return os.fspath(path)


def _content_hash(amp, mean, covar, background) -> str:
    """SHA-256 of the parameters (exact bytes) and the background record."""
    h = hashlib.sha256()
    for a in (amp, mean, covar):
        a = np.ascontiguousarray(a, dtype="<f8")
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    h.update(json.dumps(background, sort_keys=True).encode())
    return h.hexdigest()
