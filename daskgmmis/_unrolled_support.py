"""Hand-written support of the generated unrolled kernels (:mod:`daskgmmis._plain_kernels`,
:mod:`daskgmmis._rowcov_kernels`).

Bit casts between float64 and int64 that numba vectorizes (the inline exp builds 2^n
from the bits), and the whitening of the moment sums that the unrolled plain kernels
accumulate unwhitened (so that their running sums fit in registers).
"""

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic


@intrinsic
def _as_int(typingctx, x):
    """The int64 with the bits of the float64 ``x`` (a bitcast: vectorizes)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))
    return types.int64(types.float64), codegen


@intrinsic
def _as_float(typingctx, i):
    """The float64 with the bits of the int64 ``i``."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))
    return types.float64(types.int64), codegen


@numba.njit(nogil=True, cache=True)
def _whiten_sums(L, Ldiag_inv, Y1, Y2, Z1, Z2):  # pragma: no cover - compiled
    """Z1[k] += L_k^-1 Y1[k]; lower triangle of Z2[k] += L_k^-1 Y2[k] L_k^-T.

    Y1 (K, d) and Y2 (K, d, d) (lower triangle) are the moments of y = x - mu_k:
    the whitened moments of the generic kernel, whitened after the sums.
    """
    K, d = Y1.shape
    W = np.empty((d, d))
    V = np.empty((d, d))
    for k in range(K):
        for j in range(d):
            acc = Y1[k, j]
            for l in range(j):
                acc -= L[k, j, l] * V[l, 0]
            V[j, 0] = acc * Ldiag_inv[k, j]
        for j in range(d):
            Z1[k, j] += V[j, 0]
        # W = L^-1 Y2 (Y2 symmetric, from its lower triangle), then V = L^-1 W^T
        for c in range(d):
            for j in range(d):
                acc = Y2[k, j, c] if j >= c else Y2[k, c, j]
                for l in range(j):
                    acc -= L[k, j, l] * W[l, c]
                W[j, c] = acc * Ldiag_inv[k, j]
        for c in range(d):
            for j in range(d):
                acc = W[c, j]
                for l in range(j):
                    acc -= L[k, j, l] * V[l, c]
                V[j, c] = acc * Ldiag_inv[k, j]
        for j in range(d):
            for l in range(j + 1):
                Z2[k, j, l] += V[j, l]
