"""Per-row posteriors of the error-free values, and missing-feature prediction.

For a row ``x_i = v_i + noise_i`` (``noise_i ~ N(0, S_i)``, NaN = missing feature)
and the model ``p(v) = sum_k alpha_k N(v | mu_k, V_k)``, the posterior of the
error-free vector ``v_i`` (all D dimensions, observed or not) is again a mixture
of K Gaussians (docs/design.md §1.1), with ``o`` the observed dimensions of the row:

* ``T_ik = V_k[o,o] + S_i[o,o]``, Cholesky factor ``L_ik``;
* weight ``q_ik`` proportional to ``alpha_k N(x_i[o] | mu_k[o], T_ik)``;
* mean ``b_ik = mu_k + V_k[:,o] T_ik^-1 (x_i[o] - mu_k[o])``;
* covariance ``B_ik = V_k - V_k[:,o] T_ik^-1 V_k[o,:]``.

With ``G = L^-1 V_k[o,:]`` and ``z = L^-1 (x_o - mu_k[o])`` these are
``b = mu + G^T z`` and ``B = V - G^T G``: one batched Cholesky and two forward
substitutions, no inverse and no back substitution.

Missing features are marginalized exactly (only observed dimensions enter ``T``),
so the posterior mean of a missing dimension is its conditional expectation given
the observed ones: :func:`predict_missing`. A row with no observed feature gets the
prior (the model itself) as its posterior.

Background
----------
A uniform background (:class:`~daskgmmis.Background`) is a population with no
Gaussian structure. With one, :attr:`Posterior.resp_bg` is the probability that the
row belongs to the background, and every other field describes the posterior
*given that the row belongs to the Gaussian population*: ``resp`` is renormalized
over the K components (each row sums to 1) and ``mean``/``covar`` are that
mixture's moments. The joint responsibility of component k is
``resp[:, k] * (1 - resp_bg)``. (The posterior of a background row is the noise
likelihood truncated to the footprint - a different family, left out on purpose.)

Laziness
--------
Dask input (arrays, catalogs) gives lazy dask fields. One task per row block
computes every field of the block at once (:func:`posterior_block`); each field
is a cheap ``getattr`` on that task's result. Fields computed together -
``Posterior.compute()``, ``dask.compute(post.mean, post.covar)`` or
:func:`write_posterior` - share the block tasks; fields computed one at a time
recompute them. Rows are re-blocked so that one block's output stays below a
fixed byte budget (the per-component ``covars`` grow as K D^2 per row). Checks of
the data (no Inf) and of per-row noise (finite, symmetric positive semi-definite
where observed) run inside the same block tasks: no extra read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from .kernels import PosteriorBlock, posterior_block
from .noise import noise_block
from .background import Background, log_background
from .errors import InputError, InputTypeError
from .model import GMM
from .tables import table_format, write_table
from .validation import check_background, check_projection_block
from .validation import is_dask as _is_dask
from .catalog import (dask_input, as_dask_projection, Catalog, check_not_input, complete_array,
                      default_row_chunk, new_store, open_catalog, stores_read_by)

if TYPE_CHECKING:  # dask is imported lazily: the block math must not need it
    import dask.array as da

__all__ = ["Posterior", "PosteriorBlock", "posterior", "posterior_block", "predict_missing",
           "write_posterior", "POSTERIOR_FORMAT", "POSTERIOR_FORMAT_VERSION"]

POSTERIOR_FORMAT = "daskgmmis-posterior"
POSTERIOR_FORMAT_VERSION = 1


# Output bytes of one block task; the (n, K, D, D) component covariances dominate.
_BLOCK_OUTPUT_BYTES = 64 * 2**20


# ----------------------------------------------------------------------- block math


# ------------------------------------------------------------------ input handling


@dataclass
class _Params:
    """Model and noise description shared by every block task."""

    amp: np.ndarray
    mean: np.ndarray
    covar: np.ndarray
    kind: str
    shared: np.ndarray | None
    background: Background | None
    projection: np.ndarray | None = None     # a shared (d, D) projection


def _check_values_block(x: np.ndarray, row_offset: int) -> None:
    inf = np.isinf(x)
    if inf.any():
        i, j = np.argwhere(inf)[0]
        raise InputError(f"data: row {row_offset + int(i)}, column {int(j)} is {x[i, j]}; "
                         f"expected a finite value or NaN (missing).")


def _block_task(x, idx, noise, params: _Params, covariances: bool, proj=None) -> PosteriorBlock:
    """One row block: validation fused with the posterior (a single read of the data).

    ``proj``: the block of per-row projections (n, d, D), or None (then the shared one
    of ``params``, if any).
    """
    x = np.asarray(x)
    offset = int(idx[0]) if len(idx) else 0
    _check_values_block(x, offset)
    noise = noise_block(params.kind, noise, params.shared)
    noise.validate(x, offset)
    proj = params.projection if proj is None else check_projection_block(proj, x, offset)
    log_bg = log_background(params.background, x, noise)
    return posterior_block(x, noise, None, params.amp, params.mean, params.covar,
                           log_bg, covariances=covariances, row_offset=offset,
                           projection=proj)


def _resolve(gmm, data, covar, background, projection=None):
    """Validate arguments; return (params, x, noise, per-row projection or None, is_lazy,
    catalog or None)."""
    if not isinstance(gmm, GMM):
        raise InputTypeError(f"gmm: expected a daskgmmis.GMM; found {type(gmm).__name__}.")
    if projection is None:
        check_background(background, gmm.D, "gmm")
    amp, mean, cov = gmm._params(background)     # summing to 1 with the background
    if not amp.sum() > 0:
        raise InputError("gmm.amp: every amplitude is zero; the Gaussian population is "
                         "empty and has no posterior.")
    lazy = _is_dask(data) or isinstance(data, (Catalog, str, os.PathLike))
    if isinstance(data, (str, os.PathLike)):
        data = open_catalog(data)
    cat = data if isinstance(data, Catalog) else None
    x, noise = dask_input(data, covar)
    proj = as_dask_projection(data, projection, x, gmm.D)
    if proj is None and x.shape[1] != gmm.D:
        raise InputError(f"data: has D={x.shape[1]} features but gmm has D={gmm.D}.")
    if proj is not None:
        # a background is uniform over a box of the data's space (d features)
        check_background(background, int(x.shape[1]), "the data")
    shared = proj if proj is not None and proj.ndim == 2 else None
    params = _Params(amp, mean, cov, noise.kind, noise.shared_matrix, background, shared)
    return params, x, noise.row_array, (None if shared is not None else proj), lazy, cat


def _reblock(x, noise, K: int, D: int, proj=None):
    """Row blocks whose posterior output (K components in D dims) stays below the byte
    budget; the per-row noise and projection follow the rows' chunks."""
    import dask.array as da

    per_row = 8 * (2 * K + K * D + K * D * D + 2 * D + D * D + 2)
    rows = max(1, _BLOCK_OUTPUT_BYTES // per_row)
    if max(x.chunks[0], default=0) > rows:
        x = x.rechunk({0: rows})
    if noise is not None:
        noise = noise.rechunk({0: x.chunks[0]})
    if proj is not None:
        proj = proj.rechunk({0: x.chunks[0]})
    idx = da.arange(x.shape[0], chunks=(x.chunks[0],))
    return x, noise, idx, proj


def _block_graph(params: _Params, x, noise, idx, covariances: bool, proj=None):
    """Object-valued dask array: one PosteriorBlock per row block."""
    import dask.array as da
    from dask.base import tokenize

    args = [x, "ij", idx, "i"]
    if noise is None:
        args += [None, None]
    else:
        args += [noise, "ik" if noise.ndim == 2 else "ikl"]
    bg = params.background
    # explicit name: the token must follow the background's *current* amplitude
    # (fits update it in place), which hashing the object would not guarantee
    name = "posterior-block-" + tokenize(
        x, noise, idx, params.amp, params.mean, params.covar, params.kind, params.shared,
        None if bg is None else bg.to_dict(), covariances, params.projection, proj)
    args += [params, None, covariances, None]
    if proj is not None:
        args += [proj, "imn"]
    return da.blockwise(_block_task, "i", *args,
                        name=name, dtype=object, meta=np.empty((0,), dtype=object),
                        concatenate=True)


def _get_field(block: PosteriorBlock, name: str):
    return getattr(block, name)


# --------------------------------------------------------------------- public API


@dataclass
class Posterior:
    """Per-row posterior of the error-free values (see the module docstring).

    Every array field is numpy for numpy input and lazy dask (row-chunked) for
    dask arrays and catalogs. ``N`` rows, ``K`` components, ``D`` features.

    Attributes
    ----------
    mean : array, shape (N, D)
        Posterior mean of the error-free vector; for a missing feature, its
        conditional expectation given the observed ones.
    covar : array, shape (N, D, D)
        Posterior covariance, ``sum_k resp (B + b b^T) - mean mean^T``.
    resp : array, shape (N, K)
        Component weights of the posterior mixture (rows sum to 1), conditional
        on the row belonging to the Gaussian population.
    means : array, shape (N, K, D)
        Component posterior means ``b_ik``.
    covars : array, shape (N, K, D, D)
        Component posterior covariances ``B_ik``.
    logL : array, shape (N,)
        Per-row log-likelihood under the noise-convolved model (+ background);
        NaN for rows with no observed feature.
    resp_bg : array, shape (N,), or None
        Probability that the row belongs to the background (None without one,
        or when its amplitude is 0).
    row_index : array, shape (N,), or None
        Original row index of a catalog stored in spatial order, else None.
    ids : array, shape (N,), or None
        The catalog's row identifiers, when it carries them.
    id_name : str or None
        Name of the identifier column.
    columns : list of str or None
        Feature names (the catalog's, else the model's), for table outputs.
    """

    mean: np.ndarray | da.Array
    covar: np.ndarray | da.Array
    resp: np.ndarray | da.Array
    means: np.ndarray | da.Array
    covars: np.ndarray | da.Array
    logL: np.ndarray | da.Array
    resp_bg: np.ndarray | da.Array | None = None
    row_index: np.ndarray | da.Array | None = None
    ids: np.ndarray | da.Array | None = None
    id_name: str | None = None
    columns: list | None = None

    @property
    def N(self) -> int:
        return int(self.mean.shape[0])

    @property
    def K(self) -> int:
        return int(self.resp.shape[1])

    @property
    def D(self) -> int:
        return int(self.mean.shape[1])

    @property
    def lazy(self) -> bool:
        """Whether the fields are dask arrays."""
        return _is_dask(self.mean)

    def __repr__(self) -> str:
        kind = "dask" if self.lazy else "numpy"
        return (f"Posterior(N={self.N}, K={self.K}, D={self.D}, {kind}, "
                f"background={self.resp_bg is not None})")

    def compute(self) -> "Posterior":
        """All fields as numpy, computed in one pass (block tasks shared).

        Returns
        -------
        Posterior
            ``self`` when already numpy.
        """
        if not self.lazy:
            return self
        import dask

        names = [f.name for f in fields(self) if getattr(self, f.name) is not None
                 and f.name not in _METADATA]
        values = dask.compute(*(getattr(self, name) for name in names))
        return Posterior(**dict(zip(names, values)),
                         **{name: getattr(self, name) for name in _METADATA})

    def row_keys(self) -> dict:
        """``{id_name: ids}``, else ``{"row": position in the input}`` (as
        :meth:`daskgmmis.Catalog.row_keys`): the column a table output joins on."""
        if self.ids is not None:
            return {self.id_name or "id": self.ids}
        if self.row_index is not None:
            return {"row": self.row_index}
        if self.lazy:
            import dask.array as da
            return {"row": da.arange(self.N, chunks=self.mean.chunks[0], dtype=np.int64)}
        return {"row": np.arange(self.N, dtype=np.int64)}


# fields of a Posterior that describe it rather than hold per-row values
_METADATA = ("id_name", "columns")


def posterior(gmm: GMM, data, covar=None, background: Background | None = None, *,
              projection=None) -> Posterior:
    """Posterior of each row's error-free values given the model and its noise.

    Parameters
    ----------
    gmm : GMM
        The (fitted) model of the error-free population.
    data : array_like (N, D), dask array, Catalog, or catalog path/URL
        Observed rows; NaN marks a missing feature (marginalized exactly: only
        observed dimensions constrain the posterior).
    covar : None, (D, D), (N, D) or (N, D, D)
        Noise covariances: none, shared, diagonal variances or full; data units
        squared. Taken from the catalog when ``data`` is one.
    background : Background, optional
        Uniform background of the model (as passed to :func:`daskgmmis.fit`).
        Not taken from ``gmm.background`` implicitly, as in :meth:`GMM.logL`.
    projection : None, (d, D) or (N, d, D)
        Projection matrices (as for :func:`daskgmmis.fit`): the rows are
        ``y_i = R_i v_i + e_i`` with d columns; the posterior is that of the
        D-dimensional ``v_i``. Taken from the catalog when it carries one.

    Returns
    -------
    Posterior
        numpy fields for numpy input; lazy dask fields (row-chunked) otherwise.
        Compute several fields with :meth:`Posterior.compute` or one
        ``dask.compute`` call so that the block tasks are shared.

    Raises
    ------
    InputError
        Shape mismatches, infinite values, invalid noise covariances.
    NumericalError
        A component covariance plus a row's noise is not positive definite.
    """
    params, x, noise, proj, lazy, cat = _resolve(gmm, data, covar, background, projection)
    K, D = params.mean.shape
    x, noise, idx, proj = _reblock(x, noise, K, D, proj)
    blocks = _block_graph(params, x, noise, idx, True, proj)
    rows = x.chunks[0]
    trailing = {"mean": (D,), "covar": (D, D), "resp": (K,), "means": (K, D),
                "covars": (K, D, D), "logL": (), "resp_bg": ()}
    if background is None or background.amp <= 0:
        del trailing["resp_bg"]      # an empty background has no responsibility
    out = {}
    for name, tail in trailing.items():
        out[name] = blocks.map_blocks(
            _get_field, name, dtype=np.float64, chunks=(rows,) + tuple((s,) for s in tail),
            new_axis=list(range(1, 1 + len(tail))) or None,
            meta=np.empty((0,) * (1 + len(tail))), token=f"posterior-{name}")
    post = Posterior(**out, row_index=None if cat is None else cat.row_index,
                     ids=None if cat is None else cat.ids,
                     id_name=None if cat is None else cat.id_name,
                     # the catalog's columns name y's entries, not v's, under a projection
                     columns=(list(cat.columns) if cat is not None and proj is None
                              and params.projection is None else gmm.columns))
    return post if lazy else post.compute()


def predict_missing(gmm: GMM, data, covar=None):
    """Fill missing features with their conditional mean given the observed ones.

    Observed entries are kept as they are (not denoised); a missing entry gets
    ``E[v_j | x_o]``, the missing dimensions of :attr:`Posterior.mean`, computed
    without the posterior covariances.

    Parameters
    ----------
    gmm : GMM
    data : array_like (N, D), dask array, Catalog, or catalog path/URL
        NaN marks a missing feature.
    covar : None, (D, D), (N, D) or (N, D, D)
        Noise of the observed features (it weighs how much they constrain the
        missing ones).

    Notes
    -----
    The prediction is the Gaussian population's conditional mean; a background
    would only scale every component's weight alike (see the module docstring),
    so it takes none.

    Returns
    -------
    ndarray or dask array, shape (N, D), float64
        numpy for numpy input, lazy dask otherwise.
    """
    params, x, noise, proj, lazy, _ = _resolve(gmm, data, covar, None)
    if proj is not None or params.projection is not None:
        raise InputError("data: the catalog carries a projection: its rows are not in the "
                         "model's space, so there are no missing features of theirs to fill; "
                         "use posterior() for the posterior of the true values.")
    x, noise, idx, _ = _reblock(x, noise, *params.mean.shape)
    blocks = _block_graph(params, x, noise, idx, False)
    import dask.array as da

    cond_mean = blocks.map_blocks(
        _get_field, "mean", dtype=np.float64, chunks=x.chunks, new_axis=[1],
        meta=np.empty((0, 0)), token="posterior-predict")
    filled = da.where(da.isnan(x), cond_mean, x.astype(np.float64))
    return filled if lazy else filled.compute()


def posterior_table(post: Posterior) -> tuple[dict, dict]:
    """The per-row columns of a posterior as a flat table, row key first.

    Returns
    -------
    arrays : dict
        The row key (:meth:`Posterior.row_keys`), ``mean`` (N, D), ``sd`` (N, D)
        (posterior standard deviations, the square roots of the diagonal of
        ``covar``), ``resp`` (N, K), ``logL`` (N,) and ``resp_bg`` (N,) with a
        background.
    names : dict
        Sub-column names: the feature names for ``mean`` and ``sd``, ``0 .. K-1``
        for ``resp``.
    """
    import dask.array as da

    xp = da if post.lazy else np
    arrays = {**post.row_keys(), "mean": post.mean,
              "sd": xp.sqrt(xp.diagonal(post.covar, axis1=1, axis2=2)),
              "resp": post.resp, "logL": post.logL}
    if post.resp_bg is not None:
        arrays["resp_bg"] = post.resp_bg
    columns = post.columns or [f"x{j}" for j in range(post.D)]
    return arrays, {"mean": columns, "sd": columns}


def write_posterior(post: Posterior, path, overwrite: bool = False, *,
                    components: bool = False) -> None:
    """Store a posterior as a Zarr v3 group, a Parquet file or a CSV file, in one pass.

    The suffix of ``path`` picks the format (``.zarr``, ``.parquet``, ``.csv``).
    Every format starts with the row key that joins the rows back to the user's
    table: the catalog's identifier column under its own name (``ingest --id``,
    ``write_catalog(ids=...)``), else ``row``, the row's position in the input.

    Zarr layout: that key, arrays ``mean`` (N, D), ``covar`` (N, D, D), ``resp``
    (N, K), ``logL`` (N,), ``resp_bg`` (N,) with a background, ``row_index`` (N,)
    for a catalog in spatial order, and with ``components=True`` also ``means``
    (N, K, D) and ``covars`` (N, K, D, D); float64, chunked along rows only, in
    the row order of the input. Group attributes: ``daskgmmis_format``
    (``"daskgmmis-posterior"``), ``daskgmmis_format_version``, ``K``, ``D``,
    ``columns``.

    Parquet and CSV: the key, ``mean_{feature}``, ``sd_{feature}`` (posterior
    standard deviations), ``resp_{k}``, ``logL``, ``resp_bg`` (see
    :func:`posterior_table`); the full covariances need Zarr.

    Parameters
    ----------
    post : Posterior
        From :func:`posterior` (numpy or lazy).
    path : str or os.PathLike
        Local path (written to a temporary name, then renamed); a Zarr store may
        also be an fsspec URL.
    overwrite : bool
        Replace an existing store; otherwise an existing path is an error.
    components : bool
        Also store the per-component ``means`` and ``covars`` (K times larger;
        Zarr only).

    Raises
    ------
    StoreExistsError
        ``path`` exists and ``overwrite`` is False (an :class:`OutputExistsError`).
    InputError
        An unknown suffix, or ``components`` with a Parquet or CSV path.
    """
    import dask.array as da

    if not isinstance(post, Posterior):
        raise InputTypeError(f"post: expected a daskgmmis Posterior; found "
                             f"{type(post).__name__}.")
    path = os.fspath(path)
    check_not_input(path, stores_read_by(*vars(post).values()), "path")
    fmt = table_format(path)
    attrs = {"daskgmmis_format": POSTERIOR_FORMAT,
             "daskgmmis_format_version": POSTERIOR_FORMAT_VERSION, "K": post.K, "D": post.D,
             "columns": post.columns or [f"x{j}" for j in range(post.D)]}
    if fmt != "zarr":
        if components:
            raise InputError(f"components: the per-component means and covariances are "
                             f"(N, K, D) and (N, K, D, D) arrays; write them to a .zarr "
                             f"store, not {path}.")
        arrays, names = posterior_table(post)
        write_table(path, arrays, attrs=attrs, names=names, overwrite=overwrite)
        return
    names = ["mean", "covar", "resp", "logL", "resp_bg", "row_index"]
    if components:
        names += ["means", "covars"]
    key = post.row_keys()
    arrays = {**key, **{n: getattr(post, n) for n in names if getattr(post, n) is not None}}
    if "row" in key:
        arrays.pop("row_index", None)      # the same numbers, under the key's name
    if _is_dask(post.mean):
        rows = max(post.mean.chunks[0])
    else:
        rows = default_row_chunk(post.N, post.D)
    # zarr chunks are regular: make the dask chunks match them, so that no two
    # tasks write into the same zarr chunk
    arrays = {n: da.asarray(a).rechunk({0: rows}) for n, a in arrays.items()}
    with new_store(path, overwrite) as group:
        group.attrs.update(attrs)
        if post.ids is not None:
            group.attrs["id_name"] = post.id_name
        targets = [complete_array(group, n, a.shape, a.dtype, (rows,) + tuple(a.shape[1:]))
                   for n, a in arrays.items()]
        da.store(list(arrays.values()), targets, lock=False)
