"""Bases of Crystalformer's position encodings and the Chebyshev numerics of CrystalFramer's angle
encoding (used by :mod:`crystalframes.nn.periodic_attention`).

The angle Gaussians (width = 4 centre spacings, very smooth) are evaluated through their
Chebyshev expansion in c = e_k . r_hat, accurate to ``ANGLE_BASIS_TOLERANCE`` (absolute, peak 1):
the per-entry work becomes a three-term recurrence plus one batched matmul per degree (no exp),
and :class:`ChebyshevMoments`' backward pass recomputes the recurrence instead of storing anything.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

# Crystalformer's constants (REFERENCE.md section 3).
DISTANCE_BASES = 64  # K Gaussians on (0, 14 A]
DISTANCE_MAX = 14.0  # = 10 r0
ANGLE_WIDTH_SCALE = 4.0  # angle Gaussian width / centre spacing (the reference's value_pe_angle_wscale)
# Largest angle-basis error accepted from the Chebyshev expansion (the Gaussians peak at 1):
# the working precision of each dtype (46 terms for D = 64 in float32, 63 in float64).
ANGLE_BASIS_TOLERANCE = {"float64": 1e-12, "float32": 1e-7}
EXP_FLOOR = -80.0


def gaussian(x: torch.Tensor, centres: torch.Tensor, width: float) -> torch.Tensor:
    """exp(-(x - mu_k)^2 / (2 width^2)) for every centre: (...,) -> (..., len(centres)).

    Exponents are floored at ``EXP_FLOOR``: values below exp(-80) = 1.8e-35 are noise to any
    sum they enter, and exp of float32-underflowing arguments runs ~10x slower on CPUs.
    """
    z = torch.sub(x.unsqueeze(-1) * (1.0 / width), centres * (1.0 / width))
    return z.square_().mul_(-0.5).clamp_min_(EXP_FLOOR).exp_()


def distance_centres(num: int = DISTANCE_BASES, max_distance: float = DISTANCE_MAX) -> tuple[torch.Tensor, float]:
    """Crystalformer's distance bases: mu_k = k r_max / K for k = 1..K (on (0, r_max]),
    width = spacing = r_max / K."""
    spacing = max_distance / num
    return torch.arange(1, num + 1, dtype=torch.float64) * spacing, spacing


def angle_centres(num: int, width_scale: float = ANGLE_WIDTH_SCALE) -> tuple[torch.Tensor, float]:
    """Angle bases on [-1, 1]: mu_m = -1 + 2m/(D-1) for m = 0..D-1, width = width_scale x spacing
    (D = 64: width 0.127; D = 16: width 0.533)."""
    if num < 2:
        raise ValueError(f"the angle encoding needs at least 2 Gaussians, got {num}")
    spacing = 2.0 / (num - 1)
    return torch.linspace(-1.0, 1.0, num, dtype=torch.float64), width_scale * spacing


@functools.lru_cache(maxsize=None)
def _chebyshev_series(centres: tuple, width: float, terms: int = 256) -> np.ndarray:
    """Chebyshev coefficients (terms, D) of the Gaussians, from interpolation at ``terms``
    Chebyshev nodes (converged to rounding for any width used here)."""
    k = np.arange(terms)
    nodes = np.cos(np.pi * (k + 0.5) / terms)
    values = np.exp(-((nodes[:, None] - np.asarray(centres)) ** 2) / (2 * width**2))
    coef = (2.0 / terms) * np.cos(np.outer(k, np.pi * (k + 0.5) / terms)) @ values
    coef[0] *= 0.5
    return coef


def chebyshev_expansion(centres: torch.Tensor, width: float, tolerance: float = 1e-12) -> torch.Tensor:
    """Coefficients C (r, D) with sum_n C[n, m] T_n(c) = exp(-(c - mu_m)^2 / (2 width^2)) to within
    ``tolerance`` for every c in [-1, 1]: the shortest truncation of the Chebyshev series whose
    dropped tail has sum_n |C[n, m]| <= tolerance (|T_n| <= 1 makes that a bound on the error)."""
    coef = _chebyshev_series(tuple(centres.double().tolist()), float(width))
    tail = np.cumsum(np.abs(coef)[::-1], axis=0)[::-1].max(axis=1)  # tail[r] = max_m sum_{n >= r} |C|
    fits = np.nonzero(tail <= tolerance)[0]
    if len(fits) == 0:
        raise ValueError(f"the angle Gaussians of width {width} need more than {len(coef)} Chebyshev terms")
    return torch.from_numpy(coef[: max(2, int(fits[0]))].copy())


class ChebyshevMoments(torch.autograd.Function):
    """S[r, h, a, n] = sum_m w[r, h, m] T_n(c[r, m, a]) for n = 0..terms-1 (Chebyshev moments).

    Differentiable in ``w`` (R, H, M) and in ``c`` (R, M, A) in [-1, 1] (the cosines of a learned
    frame). Row r only uses its first ``lengths[r]`` columns (w is zero beyond them); rows must
    come sorted by length, and ``lengths`` is a host array (the chunk plan is made on the host). Evaluated with the recurrence T_n = 2c T_(n-1) - T_(n-2) and one
    batched matmul per degree, in chunks of rows of at most ``budget`` elements of c; the
    backward pass, g_w = sum_(a,n) g_S T_n(c), reruns the recurrence instead of storing
    anything. The recurrence runs on c transposed, (rows, A, M): MKL's batched (H x M)(M x A)
    product is ~3x faster with the M x A operand as a transposed view of a contiguous (A x M)
    block than as (M x A) itself, and the backward's (H x A)(A x M) product takes that block
    directly.

    The cosine gradient, g_c[r, m, a] = sum_n T_n'(c) sum_h w[r, h, m] g_S[r, h, a, n], uses
    T_n' = n U_(n-1) with the Chebyshev polynomials of the second kind from their own recurrence
    U_n = 2c U_(n-1) - U_(n-2) (U_0 = 1, U_1 = 2c): a polynomial, exact at c = +-1
    (T_n'(+-1) = (+-1)^(n+1) n^2) where the form n sin(n t) / sin(t), t = arccos c, is 0/0. It
    costs a second batched matmul and recurrence per degree, so it only runs when c requires a
    gradient (``ctx.needs_input_grad``); the fixed frames of the published models skip it.
    """

    @staticmethod
    def _chunks(lengths, axes: int, budget: int):
        """(start, stop, width) row chunks (width = the longest row of the chunk) within the
        element budget; a chunk of more than budget/16 elements also stops before rows ~15%
        longer than its first (padding), smaller ones do not (per-op overhead)."""
        lengths = np.maximum(np.asarray(lengths), 1)  # host numbers: planning reads no device
        out, start = [], 0
        while start < len(lengths):
            rest = lengths[start:]
            size = np.arange(1, len(rest) + 1) * rest * axes
            fits = (size <= budget) & ((rest <= 1.15 * rest[0] + 8) | (size <= budget // 16))
            stop = start + max(1, int(np.argmin(fits)) if not fits.all() else len(rest))
            out.append((start, stop, int(lengths[stop - 1])))
            start = stop
        return out

    @staticmethod
    def _recurrence(c, second_kind: bool = False):
        """Yield T_0(c), T_1(c), ... (U_0(c), U_1(c), ... with ``second_kind``) reusing three
        buffers (each valid until the next yield)."""
        t0, t1 = torch.ones_like(c), 2 * c if second_kind else c.clone()
        yield t0
        yield t1
        c2, t2 = 2 * c, torch.empty_like(c)
        while True:
            torch.mul(c2, t1, out=t2).sub_(t0)
            yield t2
            t0, t1, t2 = t1, t2, t0

    @staticmethod
    def forward(ctx, w, c, lengths, terms: int, budget: int):
        rows, heads, _ = w.shape
        out = w.new_empty(rows, heads, c.shape[-1], terms)
        chunks = ChebyshevMoments._chunks(lengths, c.shape[-1], budget)
        for s, e, width in chunks:
            ws = w[s:e, :, :width].contiguous()
            series = ChebyshevMoments._recurrence(c[s:e, :width].transpose(1, 2).contiguous())  # (rows, A, M)
            part = w.new_empty(terms, e - s, heads, c.shape[-1])
            for n in range(terms):
                torch.bmm(ws, next(series).transpose(1, 2), out=part[n])
            out[s:e] = part.permute(1, 2, 3, 0)
        ctx.save_for_backward(w, c)
        ctx.chunks = chunks
        return out

    @staticmethod
    def backward(ctx, grad):
        w, c = ctx.saved_tensors
        need_w, need_c = ctx.needs_input_grad[:2]
        rows, heads, _, terms = grad.shape
        gw = grad.new_zeros(rows, heads, c.shape[1]) if need_w else None
        gc = torch.zeros_like(c) if need_c else None
        for s, e, width in ctx.chunks:
            # contiguous operands: baddbmm_ on strided views falls back to a loop over the batch
            gs = grad[s:e].permute(3, 0, 1, 2).contiguous()  # (terms, rows, H, A)
            ct = c[s:e, :width].transpose(1, 2).contiguous()  # (rows, A, M)
            if need_w:
                acc = grad.new_zeros(e - s, heads, width)
                series = ChebyshevMoments._recurrence(ct)
                for n in range(terms):
                    acc.baddbmm_(gs[n], next(series))
                gw[s:e, :, :width] = acc
            if need_c:
                # (rows, A, M): sum_n n U_(n-1)(c) (g_S[n]^T w)
                ws = w[s:e, :, :width].contiguous()
                gst = gs.transpose(2, 3).contiguous()  # (terms, rows, A, H)
                acc, part = torch.zeros_like(ct), torch.empty_like(ct)
                series = ChebyshevMoments._recurrence(ct, second_kind=True)
                for n in range(1, terms):
                    torch.bmm(gst[n], ws, out=part)
                    acc.addcmul_(next(series), part, value=float(n))
                gc[s:e, :width] = acc.transpose(1, 2)
        return gw, gc, None, None, None
