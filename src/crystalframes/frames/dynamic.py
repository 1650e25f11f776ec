"""Dynamic local frames of CrystalFramer (Ito, Taniai et al., ICLR 2025): built per atom (and head) from attention
weights w over neighbours j and lattice images n. No gradient flows through them. The static
local frame baseline is the max frame with distance weights, so it lives here too.

Inputs are flat over (centre atom, neighbour, image) entries: ``edge_vec`` (M, 3) displacement
r_ijn from the centre, ``weights`` (M,) or (M, H) for H heads, ``centre`` (M,) the centre atom
index, ``num_atoms`` N, and ``tie_frame`` (N, 3, 3) an equivariant frame per atom (normally the
QR frame of its structure's lattice) used only to break exact ties and for fallbacks. Output:
(N, 3, 3) or (N, H, 3, 3) rotations whose rows are the axes; equivariant.

Why ties need care: in every symmetric environment several neighbours carry exactly the same
weight. The reference code breaks such ties with random noise, so its predictions are random
and not invariant. Here tied candidates (values within :func:`tie_tolerance`) are ranked by
their coordinates in ``tie_frame`` (largest first coordinate, then second, then third), which
are rotation-invariant, so the choice rotates with the structure.
"""

from __future__ import annotations

import torch

from crystalframes.frames._util import oriented_eigenframe, segment_amax
from crystalframes.frames.local import gram_schmidt
from crystalframes.frames.registry import EntryNeighbourhood, Frame, RowNeighbourhood, register_frame, view
from crystalframes.nn.encodings import MIN_DISTANCE  # entries shorter than this have no direction: skipped


def tie_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance for "equal" weights and tie-break coordinates: sqrt(machine eps)
    (1.5e-8 in float64, 3.5e-4 in float32). Symmetry makes true ties equal to ~eps, while the
    near-ties of slightly imperfect real structures (~1e-7 to 1e-6 in DFT-relaxed data) stay
    distinct in float64, so no real value sits near the threshold by accident. Under mixed
    precision (``trainer.precision=bf16-mixed`` / ``16-mixed``) frames run in float32
    (:mod:`crystalframes.precision`), so the float32 figure applies; a bfloat16 / float16
    value never reaches this function.
    """
    return torch.finfo(dtype).eps ** 0.5

# Candidates for e2 must satisfy |cos(r, e1)| below this (Ito, Taniai et al., ICLR 2025).
MAX_COLLINEAR_COS = 0.9999


def _flatten_heads(edge_vec, weights, centre, num_atoms, tie_frame):
    """Treat each (atom, head) pair as its own centre so one code path serves any head count."""
    if weights.dim() == 1:
        return edge_vec, weights, centre, num_atoms, tie_frame, None
    heads = weights.shape[1]
    vec = edge_vec.repeat_interleave(heads, dim=0)
    cen = (centre.unsqueeze(1) * heads + torch.arange(heads, device=centre.device)).reshape(-1)
    tf = tie_frame.repeat_interleave(heads, dim=0)
    return vec, weights.reshape(-1), cen, num_atoms * heads, tf, heads


def _select(score: torch.Tensor, valid: torch.Tensor, coords: torch.Tensor, centre: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (per centre) of the entry with the largest ``score`` among ``valid`` ones, ties
    (within :func:`tie_tolerance`) broken by the largest tie-frame coordinates in turn; plus a
    mask of centres that had any valid entry."""
    tie = tie_tolerance(score.dtype)
    neg = torch.tensor(float("-inf"), dtype=score.dtype, device=score.device)
    s = torch.where(valid, score, neg)
    best = segment_amax(s, centre, size)
    tol = tie * best.abs()
    keep = valid & (s >= best[centre] - tol[centre])
    for c in range(3):
        key = torch.where(keep, coords[:, c], neg)
        top = segment_amax(key, centre, size)
        keep = keep & (key >= top[centre] - tie)
    idx = torch.arange(len(score), device=score.device)
    big = torch.full((size,), len(score), dtype=torch.long, device=score.device)
    first = big.scatter_reduce(0, centre, torch.where(keep, idx, len(score)), reduce="amin", include_self=True)
    return first.clamp_max(max(len(score) - 1, 0)), first < len(score)


@torch.no_grad()
def max_frame(
    edge_vec: torch.Tensor, weights: torch.Tensor, centre: torch.Tensor, num_atoms: int, tie_frame: torch.Tensor
) -> torch.Tensor:
    """Max frame (Ito, Taniai et al., ICLR 2025): e1 = direction to the entry of largest weight; e2' = direction
    maximising w (1 - |cos(r, e1)|) among entries with |cos| < 0.9999; e2 = Gram-Schmidt of e2'
    against e1; e3 = e1 x e2.

    Rules for the degenerate cases (each tested):
    - ties in w or in the e2 score: ranked by tie-frame coordinates (module docstring);
    - an atom with no usable entry: its frame is ``tie_frame``;
    - no candidate for e2 (all entries collinear with e1): e2 comes from the tie-frame axis
      least aligned with e1.
    """
    vec, w, cen, size, tf, heads = _flatten_heads(edge_vec.detach(), weights.detach(), centre, num_atoms, tie_frame.detach())
    dist = vec.norm(dim=-1)
    unit = vec / dist.clamp_min(MIN_DISTANCE).unsqueeze(-1)
    coords = torch.einsum("mk,mjk->mj", unit, tf[cen])  # invariant coordinates for tie-breaking
    usable = dist > MIN_DISTANCE
    i1, has1 = _select(w, usable, coords, cen, size)
    e1 = torch.where(has1.unsqueeze(-1), unit[i1], tf[:, 0])
    cos = (unit * e1[cen]).sum(-1)
    cand = usable & (cos.abs() < MAX_COLLINEAR_COS)
    i2, has2 = _select(w * (1 - cos.abs()), cand, coords, cen, size)
    v2 = torch.where(has2.unsqueeze(-1), unit[i2], torch.zeros_like(e1))
    frame = gram_schmidt(e1, v2, fallback=tf)  # zero v2 -> least-aligned tie-frame axis
    frame = torch.where(has1[:, None, None], frame, tf)
    return frame if heads is None else frame.reshape(num_atoms, heads, 3, 3)


def _principal_frame(sigma: torch.Tensor, mean_dir: torch.Tensor, wsum: torch.Tensor, tie_frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted PCA frame's axes from Sigma (..., 3, 3), the weighted mean direction
    (..., 3) and the total weight (...), signs as :func:`weighted_pca_frame` states, and the
    mask of the degenerate ones (which take the max frame instead)."""
    # A mean direction that is rounding noise (centrosymmetric sites: exactly 0 in exact
    # arithmetic) must not decide signs: compare it with the total weight, not with itself.
    negligible = mean_dir.norm(dim=-1) <= tie_tolerance(mean_dir.dtype) * wsum
    mean_dir = torch.where(negligible.unsqueeze(-1), torch.zeros_like(mean_dir), mean_dir)
    refs = torch.cat([mean_dir.unsqueeze(-2), tie_frame], dim=-2)  # (..., 4, 3)
    return oriented_eigenframe(sigma, refs)


@torch.no_grad()
def weighted_pca_frame(
    edge_vec: torch.Tensor, weights: torch.Tensor, centre: torch.Tensor, num_atoms: int, tie_frame: torch.Tensor
) -> torch.Tensor:
    """Weighted PCA frame (Ito, Taniai et al., ICLR 2025): axes = eigenvectors of Sigma_i = sum w r_hat r_hat^T
    (second moment about atom i, not mean-centred), by descending eigenvalue.

    Rules for the degenerate cases (each tested):
    - sign of u1, u2: positive projection on the weighted mean direction m_i = sum w r_hat; where
      that projection is ~0 (every centrosymmetric site), on the tie-frame axes in turn; u3 = u1 x u2;
    - (near-)equal eigenvalues (relative gap < 1e-4; e.g. any cubic site, where Sigma ~ I):
      the axes are not unique, so that atom's frame is its :func:`max_frame` for the same weights.
    """
    vec, w, cen, size, tf, heads = _flatten_heads(edge_vec.detach(), weights.detach(), centre, num_atoms, tie_frame.detach())
    dist = vec.norm(dim=-1)
    usable = (dist > MIN_DISTANCE).to(vec.dtype)
    unit = vec / dist.clamp_min(MIN_DISTANCE).unsqueeze(-1)
    wu = (w * usable).unsqueeze(-1) * unit
    sigma = torch.zeros(size, 3, 3, dtype=vec.dtype, device=vec.device)
    sigma.index_add_(0, cen, wu.unsqueeze(-1) * unit.unsqueeze(-2))
    mean_dir = torch.zeros(size, 3, dtype=vec.dtype, device=vec.device).index_add_(0, cen, wu)
    wsum = torch.zeros(size, dtype=vec.dtype, device=vec.device).index_add_(0, cen, w * usable)
    frame, degenerate = _principal_frame(sigma, mean_dir, wsum, tf)
    if degenerate.any():
        fallback = max_frame(vec, w, cen, size, tf)
        frame = torch.where(degenerate[:, None, None], fallback, frame)
    return frame if heads is None else frame.reshape(num_atoms, heads, 3, 3)


def static_local_frame(
    edge_vec: torch.Tensor, centre: torch.Tensor, num_atoms: int, tie_frame: torch.Tensor
) -> torch.Tensor:
    """CrystalFramer's static local frame: the max frame driven by distance alone.

    Weights w = 1/|r|^2, so e1 points to the nearest neighbour and e2 to the neighbour that best
    trades nearness against non-collinearity, (1 - |cos|)/|r|^2. (The reference code maximises
    +d^2 for e2, which selects the farthest image: a sign bug not copied here.)
    Ties and degenerate cases as in :func:`max_frame`.
    """
    return max_frame(edge_vec, _inverse_square_distance(edge_vec), centre, num_atoms, tie_frame)


def _inverse_square_distance(vec: torch.Tensor) -> torch.Tensor:
    """The static frame's weights 1/|r|^2 of displacements (..., 3); the atom itself (r = 0)
    gets a large finite weight, which the max frame skips as unusable anyway."""
    return 1.0 / vec.detach().pow(2).sum(-1).clamp_min(1e-12)


def _select_in_rows(score: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_select` per row of padded rows, densely: ``score`` (n, H, M) with -inf at the
    entries that are not candidates, ``coords`` (n, 3, M) the tie-frame coordinates (shared by
    the heads). Column (n, H) of the entry of largest score, ties broken as there (tie-frame
    coordinates in turn, then the first column), and a mask of the rows with a candidate.

    Reductions over M only: no output size depends on the data, so nothing waits for the
    device. Candidate scores are finite (attention weights), so a row has a candidate iff its
    best score is finite, and in such a row a non-candidate (-inf) never passes a threshold:
    the tests need no "& candidate". Rows without a candidate return column 0."""
    tie = tie_tolerance(score.dtype)
    best = score.amax(dim=-1, keepdim=True)
    keep = score >= best - tie * best.abs()
    for c in range(3):
        key = torch.where(keep, coords[:, c : c + 1], float("-inf"))
        keep = key >= key.amax(dim=-1, keepdim=True) - tie
    has = best.squeeze(-1).isfinite()
    first = keep.to(torch.int8).argmax(dim=-1)  # argmax returns the first maximum
    return torch.where(has, first, 0), has


@torch.no_grad()
def max_frame_of_rows(rows: RowNeighbourhood, tie_frame: torch.Tensor) -> torch.Tensor:
    """:func:`max_frame` per (centre, head) of padded rows, (n, H, 3, 3), computed densely over
    the rows' M columns with the same rules and the same arithmetic, so the frames are
    bit-identical to max_frame of the flat entries (padding cells may hold any finite values).

    No host synchronisation (issue 25): selecting entries (nonzero, boolean-mask indexing) would
    make the host wait for their count, as did the former shortcut of building the frame from
    the entries of large weight only and redoing the rows it could not vouch for. On a CPU the
    dense passes cost no more than that shortcut did, because the unit vectors are laid out
    (n, 3, M): every per-entry step is an elementwise pass over contiguous rows (a sum over a
    last axis of 3 is several times slower), and what does not depend on the head (unit
    vectors, tie-frame coordinates, usability) is computed once for all H heads."""
    w, vec, valid = rows.weights, rows.vec, rows.valid
    n, h, m = w.shape
    dist = vec.norm(dim=-1)  # as max_frame computes it
    unit = (vec / dist.clamp_min(MIN_DISTANCE).unsqueeze(-1)).transpose(1, 2).contiguous()  # (n, 3, M)
    # invariant coordinates for tie-breaking, (n, 3, M): row a = tie axis a . unit
    coords = tie_frame[:, :, 0:1] * unit[:, 0:1] + tie_frame[:, :, 1:2] * unit[:, 1:2] + tie_frame[:, :, 2:3] * unit[:, 2:3]
    # 0 at the usable entries, -inf elsewhere (padding, the atom itself), shared by the heads
    unusable = torch.where(valid & (dist > MIN_DISTANCE), 0.0, float("-inf")).to(w.dtype).unsqueeze(1)
    tie_rows = tie_frame.unsqueeze(1).expand(n, h, 3, 3)

    def entry(index: torch.Tensor) -> torch.Tensor:
        """Unit vectors (n, H, 3) at columns (n, H); contiguous, because gram_schmidt rounds
        strided rows differently from max_frame's contiguous ones (found: 1 ulp)."""
        return unit.gather(2, index.unsqueeze(1).expand(n, 3, h)).transpose(1, 2).contiguous()

    i1, has1 = _select_in_rows(w + unusable, coords)
    e1 = torch.where(has1.unsqueeze(-1), entry(i1), tie_rows[:, :, 0])
    cos = (unit[:, 0:1] * e1[:, :, 0:1] + unit[:, 1:2] * e1[:, :, 1:2] + unit[:, 2:3] * e1[:, :, 2:3]).abs()  # |cos| (n, H, M)
    score = torch.where(cos < MAX_COLLINEAR_COS, w * (1 - cos), float("-inf")) + unusable
    i2, has2 = _select_in_rows(score, coords)
    v2 = torch.where(has2.unsqueeze(-1), entry(i2), torch.zeros_like(e1))
    frame = gram_schmidt(e1, v2, fallback=tie_rows)  # zero v2 -> least-aligned tie-frame axis
    return torch.where(has1[:, :, None, None], frame, tie_rows)


@torch.no_grad()
def static_frame_of_rows(rows: RowNeighbourhood, tie_frame: torch.Tensor) -> torch.Tensor:
    """:func:`static_local_frame` per centre of padded rows, (n, 3, 3): the max frame of the
    weights 1/|r|^2 computed as there, so bit-identical to it on the flat entries, and without
    host synchronisation (:func:`max_frame_of_rows`)."""
    weights = _inverse_square_distance(rows.vec).unsqueeze(1)  # (n, 1, M): one "head"
    return max_frame_of_rows(RowNeighbourhood(rows.centres, vec=rows.vec, valid=rows.valid, weights=weights), tie_frame).squeeze(1)


@torch.no_grad()
def weighted_pca_frame_of_rows(rows: RowNeighbourhood, tie_frame: torch.Tensor) -> torch.Tensor:
    """:func:`weighted_pca_frame` per (centre, head) of padded rows, (n, H, 3, 3), same rules,
    without host synchronisation (issue 25): Sigma, the mean direction and the total weight are
    sums over the M columns (padding and the atom itself weigh 0), and the max frame of the
    degenerate rows is computed for every row (:func:`max_frame_of_rows`) and picked by
    ``torch.where`` instead of after a host test of whether any row is degenerate.

    Not bit-identical to the flat entries' frames: the sums over the entries run in another
    order (weighted_pca_frame adds entry after entry), so Sigma differs by rounding and the axes
    of the non-degenerate rows by a few eps / gap (measured up to 1e-14 in float64 and 1e-5 in
    float32; tests/frames/test_frames_of_rows.py). The degeneracy decision (relative eigenvalue
    gap < 1e-4) compares gaps that are either ~eps (symmetry) or far from the threshold, so
    both take the max frame at the same rows, and there the frames are bit-identical. The sign
    decisions agree too in float64; in float32 an axis whose projection on the mean direction
    is zero by symmetry (a mirror plane containing the mean) can get its sign from rounding
    (frames/_util.SIGN_ATOL, 1e-6, is below float32's rounding of the axes), here as in
    weighted_pca_frame.

    The sums are elementwise products summed over M, not a matrix product: under TF32
    matmuls on a GPU (``torch.set_float32_matmul_precision("high")``, which Lightning suggests)
    a matrix product would round Sigma to ~1e-3, beyond the 1e-4 degeneracy threshold, and
    cubic sites would take arbitrary axes. Each of the 9 quantities is its own (n, H, M) pass:
    one temporary of the size the attention budget plans for, and faster on a CPU than a
    (n, H, 9, M) broadcast."""
    w, vec, valid = rows.weights, rows.vec, rows.valid
    n, h, m = w.shape
    dist = vec.norm(dim=-1)
    unit = (vec / dist.clamp_min(MIN_DISTANCE).unsqueeze(-1)).transpose(1, 2).contiguous()  # (n, 3, M)
    wu = torch.where((valid & (dist > MIN_DISTANCE)).unsqueeze(1), w, 0.0)  # 0 at padding and the atom itself
    # per column: r_hat r_hat^T by its distinct entries (xx, yy, zz, xy, yz, zx), then r_hat;
    # slices and roll, not a list index, which a GPU would copy to the device and wait for
    terms = torch.cat([unit * unit, unit * unit.roll(-1, dims=1), unit], dim=1)  # (n, 9, M)
    xx, yy, zz, xy, yz, zx, *mean = ((wu * terms[:, k : k + 1]).sum(-1) for k in range(9))  # (n, H) each
    sigma = torch.stack([xx, xy, zx, xy, yy, yz, zx, yz, zz], dim=-1).view(n, h, 3, 3)
    tie_rows = tie_frame.unsqueeze(1).expand(n, h, 3, 3)
    frame, degenerate = _principal_frame(sigma, torch.stack(mean, dim=-1), wu.sum(-1), tie_rows)
    return torch.where(degenerate[..., None, None], max_frame_of_rows(rows, tie_frame), frame)


# ---------------------------------------------------------------------------------------------
# The frames of the registry
# ---------------------------------------------------------------------------------------------

# Measured in the model contract suite (differences ~1e-6 to 1e-3 on symmetric crystals).
_TIES = {"basis_change": "exact ties are broken by the QR frame of the chosen lattice basis, which another basis of the same crystal changes"}


@register_frame
class StaticFrame(Frame):
    """CrystalFramer's static local frame (:func:`static_local_frame`) of each centre's
    neighbour entries."""

    name = "static"
    summary = "CrystalFramer's static baseline: max frame of 1/|r|^2 (nearest neighbours)"
    needs = frozenset({"neighbours"})
    uses_tie_frame = True
    dependences = _TIES

    def forward(self, layer, setup, hood):
        tie = setup.tie_frames.index_select(0, hood.centres)
        if isinstance(hood, RowNeighbourhood):
            return static_frame_of_rows(hood, tie)
        vec, centre, _ = view(self, hood, EntryNeighbourhood).entries()
        return static_local_frame(vec, centre, hood.num_centres, tie)


class _AttentionFrame(Frame):
    """CrystalFramer's dynamic frames: built from the attention weights of each layer, per head
    when the weights have heads (no gradient flows through them)."""

    needs = frozenset({"neighbours", "attention"})
    uses_tie_frame = True
    dependences = _TIES


@register_frame
class MaxFrame(_AttentionFrame):
    """CrystalFramer's max frame (:func:`max_frame`) of the attention weights."""

    name = "max"
    summary = "CrystalFramer: dynamic max frame of each layer's attention weights"

    def forward(self, layer, setup, hood):
        tie = setup.tie_frames.index_select(0, hood.centres)
        if isinstance(hood, RowNeighbourhood) and hood.weights is not None:
            return max_frame_of_rows(hood, tie)
        vec, centre, weights = view(self, hood, EntryNeighbourhood).entries()
        return max_frame(vec, weights, centre, hood.num_centres, tie)


@register_frame
class WeightedPCAFrame(_AttentionFrame):
    """CrystalFramer's weighted PCA frame (:func:`weighted_pca_frame`) of the attention weights."""

    name = "weighted_pca"
    summary = "CrystalFramer: dynamic weighted-PCA frame of each layer's attention weights"

    def forward(self, layer, setup, hood):
        tie = setup.tie_frames.index_select(0, hood.centres)
        if isinstance(hood, RowNeighbourhood) and hood.weights is not None:
            return weighted_pca_frame_of_rows(hood, tie)
        vec, centre, weights = view(self, hood, EntryNeighbourhood).entries()
        return weighted_pca_frame(vec, weights, centre, hood.num_centres, tie)
