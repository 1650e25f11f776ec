"""Bases of Crystalformer's position encodings and the Chebyshev numerics of CrystalFramer's angle
encoding (used by :mod:`crystalframes.models.periodic_attention`).

The angle Gaussians (width = 4 centre spacings, very smooth) are evaluated through their
Chebyshev expansion in c = e_k . r_hat, accurate to ``ANGLE_BASIS_TOLERANCE`` (absolute, peak 1):
the per-entry work becomes a three-term recurrence plus one batched matmul per block of degrees (no exp),
and :class:`ChebyshevMoments`' backward pass recomputes the recurrence instead of storing anything.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

# Crystalformer's constants (Taniai et al., ICLR 2024, and its public code).
DISTANCE_BASES = 64  # K Gaussians on (0, 14 A]
DISTANCE_MAX = 14.0  # = 10 r0
ANGLE_WIDTH_SCALE = 4.0  # angle Gaussian width / centre spacing (the reference's value_pe_angle_wscale)
# Largest angle-basis error accepted from the Chebyshev expansion (the Gaussians peak at 1):
# the working precision of each dtype (46 terms for D = 64 in float32, 63 in float64).
ANGLE_BASIS_TOLERANCE = {"float64": 1e-12, "float32": 1e-7}
EXP_FLOOR = -80.0
# Degrees per block of ChebyshevMoments (one batched matmul each): at 8, the (H x M)(M x 3 x 8)
# products of a CPU chunk run ~3x faster than 8 products with 3 columns, 23-degree blocks fall
# out of cache and run slower again. A module constant, not a class attribute: dynamo cannot
# read attributes of an autograd.Function.
CHEBYSHEV_BLOCK = 8
_TABLES: dict = {}  # ChebyshevMoments._table's tensors


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
    come sorted by length, and ``lengths`` is a host array (the chunk plan is made on the host).
    Evaluated with the recurrence T_n = 2c T_(n-1) - T_(n-2), in chunks of rows whose two
    recurrence blocks (below) hold at most ``budget`` elements; the backward pass,
    g_w = sum_(a,n) g_S T_n(c), reruns the recurrence instead of storing anything.

    The recurrence runs on c transposed, (rows, A, M), and fills blocks of k = ``CHEBYSHEV_BLOCK``
    consecutive degrees laid out (rows, A, k, M), so that one batched matmul serves a block:
    (H x M)(M x A k) per row in the forward pass, (H x A k)(A k x M) in the backward one. Per
    degree that leaves one operator (an addcmul, see :meth:`_recurrence`): ~3x fewer aten
    operators than a multiply, a subtraction and a matmul per degree (each one a kernel launch on
    a GPU, where the training step is launch-bound), and on a CPU the block products run ~3x
    faster than k products with A = 3 columns. The M x A k operand is a transposed view of the
    contiguous block: MKL's batched product is ~3x faster that way than with a contiguous one.

    The cosine gradient, g_c[r, m, a] = sum_n T_n'(c) sum_h w[r, h, m] g_S[r, h, a, n], uses
    T_n' = n U_(n-1) with the Chebyshev polynomials of the second kind from their own recurrence
    U_n = 2c U_(n-1) - U_(n-2) (U_0 = 1, U_1 = 2c): a polynomial, exact at c = +-1
    (T_n'(+-1) = (+-1)^(n+1) n^2) where the form n sin(n t) / sin(t), t = arccos c, is 0/0. It
    costs a second recurrence and a batched matmul per block, so it only runs when c requires a
    gradient (``ctx.needs_input_grad``); the fixed frames of the published models skip it.
    """

    @staticmethod
    def _chunks(lengths, axes: int, budget: int, depth: int = 1):
        """(start, stop, width) row chunks (width = the longest row of the chunk) of at most
        budget / depth elements rows x width x axes (``depth``: temporary elements per element);
        a chunk of more than budget/16 elements also stops before rows ~15% longer than its
        first (padding), smaller ones do not (per-op overhead)."""
        lengths = np.maximum(np.asarray(lengths), 1)  # host numbers: planning reads no device
        out, start = [], 0
        while start < len(lengths):
            rest = lengths[start:]
            size = np.arange(1, len(rest) + 1) * rest * axes
            fits = (size * depth <= budget) & ((rest <= 1.15 * rest[0] + 8) | (size <= budget // 16))
            stop = start + max(1, int(np.argmin(fits)) if not fits.all() else len(rest))
            out.append((start, stop, int(lengths[stop - 1])))
            start = stop
        return out

    @staticmethod
    def _table(name: str, terms: int, like: torch.Tensor) -> torch.Tensor:
        """A per-degree table as a tensor of ``like``'s dtype and device, made once per process
        (a host-to-device copy per call would wait for the device; a dict, not
        functools.lru_cache, which dynamo cannot trace): ``signs``, s_n = +1, +1, -1, -1, +1, ...
        for n = 0..terms-1 (the signs of :meth:`_recurrence`'s terms), or ``derivative``,
        n s_(n-1) for n = 1..terms-1 (the factor of g_S[n] that meets s_(n-1) U_(n-1))."""
        key = (name, terms, like.dtype, like.device)
        if key not in _TABLES:
            n = np.arange(terms) if name == "signs" else np.arange(1, terms)
            values = np.where(n % 4 < 2, 1.0, -1.0) if name == "signs" else n * np.where((n - 1) % 4 < 2, 1.0, -1.0)
            _TABLES[key] = torch.as_tensor(values, dtype=like.dtype, device=like.device)
        return _TABLES[key]

    @staticmethod
    def _recurrence(c, second_kind: bool = False):
        """Yield the blocks s_n T_n(c) (s_n U_n(c) with ``second_kind``) for c (rows, A, M): block j
        holds n = j k .. (j + 1) k - 1 (k = ``CHEBYSHEV_BLOCK``), as a (rows, A k, M) view of a
        (rows, A, k, M) buffer. Two buffers take turns: a block stays valid until the next-but-one
        yield, and the same two view objects come again and again.

        s_n as in :meth:`_table`: with X_n = s_n T_n, T_n = 2c T_(n-1) - T_(n-2) becomes
        X_n = X_(n-2) - 2c X_(n-1) for even n and X_(n-2) + 2c X_(n-1) for odd n, one addcmul
        per degree instead of a multiply and a subtraction. The signs are exact, so
        |X_n| = |T_n| to the rounding of the recurrence (exactly +-1 at c = +-1, 0 or +-1 at
        c = 0; addcmul rounds once where a fused multiply-add is used, as on CPUs with FMA and on
        GPUs); callers put s_n back on the (small) moments or their gradients.
        """
        rows, axes, m = c.shape
        k = CHEBYSHEV_BLOCK
        buffers = c.new_empty(2, rows, axes, k, m).unbind(0)
        views = [b.view(rows, axes * k, m) for b in buffers]
        slots = [b.unbind(2) for b in buffers]  # the degrees of a block, (rows, A, M) each
        x0 = x1 = None
        for j in itertools.count():
            for i, slot in enumerate(slots[j % 2]):
                n = j * k + i
                if n == 0:
                    x = slot.fill_(1)
                elif n == 1:
                    x = torch.mul(c, 2, out=slot) if second_kind else slot.copy_(c)
                else:
                    x = torch.addcmul(x0, c, x1, value=2.0 if n % 2 else -2.0, out=slot)
                x0, x1 = x1, x
            yield views[j % 2]

    @staticmethod
    def _transposed(series):
        """The blocks of ``series`` as transposed views, made once per buffer (not per block)."""
        views = {}
        for x in series:
            if id(x) not in views:
                views[id(x)] = x.mT
            yield views[id(x)]

    @staticmethod
    def forward(ctx, w, c, lengths, terms: int, budget: int):
        rows, heads, _ = w.shape
        axes, k = c.shape[-1], CHEBYSHEV_BLOCK
        blocks = -(-terms // k)
        # the last block's spare degrees are computed and dropped at the end
        full = w.new_empty(rows, heads, axes, blocks * k)
        chunks = ChebyshevMoments._chunks(lengths, axes, budget, depth=2 * k)
        signs = ChebyshevMoments._table("signs", blocks * k, w).view(blocks, k)
        for s, e, width in chunks:
            ws = w[s:e, :, :width].contiguous()
            series = ChebyshevMoments._recurrence(c[s:e, :width].transpose(1, 2).contiguous())  # (rows, A, M)
            part = w.new_empty(blocks, e - s, heads, axes * k)
            # unbind: all the blocks' output views in one operator; zip stops after ``blocks``
            for p, x in zip(part.unbind(0), ChebyshevMoments._transposed(series)):
                torch.bmm(ws, x, out=p)
            part = part.view(blocks, e - s, heads, axes, k).permute(1, 2, 3, 0, 4)
            torch.mul(part, signs, out=full[s:e].view(e - s, heads, axes, blocks, k))
        ctx.save_for_backward(w, c)
        ctx.chunks = chunks
        return full if blocks * k == terms else full[..., :terms].contiguous()

    @staticmethod
    def _by_block(g, factor, first: int, k: int):
        """(blocks, rows, H, A, k): factor[n - first] g[..., n] for the degrees n >= first, in
        blocks of k (zero beyond the last degree)."""
        rows, heads, axes, terms = g.shape
        blocks = -(-(terms - first) // k)
        padded = g.new_zeros(rows, heads, axes, blocks * k)
        torch.mul(g[..., first:], factor, out=padded[..., : terms - first])
        return padded.view(rows, heads, axes, blocks, k).permute(3, 0, 1, 2, 4)

    @staticmethod
    def backward(ctx, grad):
        w, c = ctx.saved_tensors
        need_w, need_c = ctx.needs_input_grad[:2]
        rows, heads, axes, terms = grad.shape
        k = CHEBYSHEV_BLOCK
        gw = grad.new_zeros(rows, heads, c.shape[1]) if need_w else None
        gc = torch.zeros_like(c) if need_c else None
        if need_w:  # s_n g_S[n]: s_n s_n T_n = T_n
            gs = ChebyshevMoments._by_block(grad, ChebyshevMoments._table("signs", terms, grad), 0, k)
        if need_c:  # n s_(n-1) g_S[n], to meet s_(n-1) U_(n-1)
            gd = ChebyshevMoments._by_block(grad, ChebyshevMoments._table("derivative", terms, grad), 1, k)
        for s, e, width in ctx.chunks:
            ct = c[s:e, :width].transpose(1, 2).contiguous()  # (rows, A, M)
            if need_w:
                # contiguous operands: baddbmm_ on strided views falls back to a loop over the batch
                g = gs[:, s:e].reshape(gs.shape[0], e - s, heads, axes * k)
                acc = grad.new_zeros(e - s, heads, width)
                for gb, x in zip(g.unbind(0), ChebyshevMoments._recurrence(ct)):
                    acc.baddbmm_(gb, x)
                gw[s:e, :, :width] = acc
            if need_c:
                # (rows, A, M): sum_n n U_(n-1)(c) (g_S[n]^T w), the products of a block summed
                # over its degrees at the end
                ws = w[s:e, :, :width].contiguous()
                g = gd[:, s:e].permute(0, 1, 3, 4, 2).reshape(gd.shape[0], e - s, axes * k, heads)
                acc, part = ct.new_zeros(e - s, axes * k, width), ct.new_empty(e - s, axes * k, width)
                for gb, u in zip(g.unbind(0), ChebyshevMoments._recurrence(ct, second_kind=True)):
                    torch.bmm(gb, ws, out=part)
                    acc.addcmul_(u, part)
                gc[s:e, :width] = acc.view(e - s, axes, k, width).sum(2).transpose(1, 2)
        return gw, gc, None, None, None
