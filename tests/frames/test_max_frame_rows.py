"""max_frame_of_rows, the max frame of padded entry rows that CrystalFramer's attention builds
every layer (issue 25: no host synchronisation): bit-identical to max_frame of the flat entries
and to the former prefiltering implementation (kept below as the reference), per head, in float64
and float32, on real crystals (symmetric ones: ties) and on the degenerate rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crystalframes.data.batch import collate
from crystalframes.data.graph import build_graph
from crystalframes.frames import max_frame, qr_frame
from crystalframes.frames import dynamic
from crystalframes.frames.dynamic import MIN_DISTANCE, max_frame_of_rows
from crystalframes.frames.registry import RowNeighbourhood
from crystalframes.models.crystalformer import build_crystalformer
from crystalframes.profiling import StepCounter
from crystalframes.testing import by_crystal_system, random_rotation
from tests.frames.conftest import assert_rotations, batch_of, invariant_weights

DTYPES = (torch.float64, torch.float32)


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: a second thread only slows them

# ---------------------------------------------------------------------------------------------
# the former implementation (before issue 25), the reference: max_frame of the entries with
# w >= 1e-3 w_max, verified, and rebuilt from every entry of the rows the verification rejects
# ---------------------------------------------------------------------------------------------

PREFILTER = 1e-3


@torch.no_grad()
def prefiltered_max_frame_of_rows(rows: RowNeighbourhood, tie_frame: torch.Tensor) -> torch.Tensor:
    w, vec, valid = rows.weights, rows.vec, rows.valid
    dist = vec.norm(dim=-1)
    n, h, m = w.shape
    t = PREFILTER * w.amax(dim=-1, keepdim=True)
    valid = valid.unsqueeze(1)
    tie_rows = tie_frame.repeat_interleave(h, dim=0)
    cells = vec.reshape(n * m, 3)

    def build(mask, rows_wanted=None):
        flat = torch.nonzero(mask.reshape(-1)).squeeze(-1)
        row = torch.div(flat, m, rounding_mode="floor")
        if rows_wanted is not None:
            row = (torch.cumsum(rows_wanted, 0) - 1).index_select(0, row)
        size = n * h if rows_wanted is None else int(rows_wanted.sum())
        ties = tie_rows if rows_wanted is None else tie_rows[rows_wanted]
        cell = torch.div(flat, h * m, rounding_mode="floor") * m + flat % m
        return max_frame(cells.index_select(0, cell), w.reshape(-1).index_select(0, flat), row, size, ties)

    kept = valid & (w >= t)
    frames = build(kept).view(n, h, 3, 3)
    d = dist.unsqueeze(1)
    cos = torch.einsum("nmc,nhc->nhm", vec, frames[:, :, 0]) / d.clamp_min(MIN_DISTANCE)
    candidate = kept & (d > MIN_DISTANCE) & (cos.abs() < dynamic.MAX_COLLINEAR_COS)
    best = torch.where(candidate, w * (1 - cos.abs()), torch.zeros_like(w)).amax(dim=-1)
    redo = (best < 2 * t.squeeze(-1)).reshape(-1)
    if bool(redo.any()):
        every = (valid.expand(n, h, m).reshape(n * h, m) & redo.unsqueeze(-1)).view(n, h, m)
        frames = frames.reshape(n * h, 3, 3).index_copy(0, torch.nonzero(redo).squeeze(-1), build(every, redo)).view(n, h, 3, 3)
    return frames


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------


def padded_rows(vec, weights, centre, n, *, self_entry=True, seed=0) -> RowNeighbourhood:
    """Flat entries (vec (E, 3), weights (E, H), centre (E,) sorted) as padded rows; with
    ``self_entry`` every row starts with the atom itself (r = 0, the largest weight, as
    infinitely connected attention has it). Padding cells hold arbitrary finite values
    (large weights included): they must be ignored."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(centre, minlength=n)
    if self_entry:
        top = weights.max() + 1
        vec = torch.cat([vec.new_zeros(n, 3), vec])
        weights = torch.cat([top.expand(n, weights.shape[1]), weights])
        centre = torch.cat([torch.arange(n), centre])
        order = torch.argsort(centre, stable=True)
        vec, weights, centre, counts = vec[order], weights[order], centre[order], counts + 1
    m = int(counts.max())
    valid = torch.arange(m) < counts.unsqueeze(-1)
    start = torch.cumsum(counts, 0) - counts
    col = torch.arange(len(centre)) - start[centre]
    rows_vec = (torch.rand(n, m, 3, generator=g, dtype=vec.dtype) * 8 - 4)
    rows_w = torch.rand(n, weights.shape[1], m, generator=g, dtype=vec.dtype) * 3
    rows_vec[centre, col] = vec
    rows_w[centre, :, col] = weights
    return RowNeighbourhood(torch.arange(n), vec=rows_vec, valid=valid, weights=rows_w)


def assert_same_frames(rows: RowNeighbourhood, tie: torch.Tensor):
    """The rows' frames equal max_frame of the flat entries and the former implementation, bit
    for bit."""
    got = max_frame_of_rows(rows, tie)
    vec, centre, weights = rows.entries()
    flat = max_frame(vec, weights, centre, len(tie), tie)
    assert got.dtype == rows.vec.dtype and got.shape == flat.shape
    assert torch.equal(got, flat), f"differs from max_frame by {(got - flat).abs().max():.3g}"
    assert torch.equal(got, prefiltered_max_frame_of_rows(rows, tie))
    assert_rotations(got.double(), atol=1e-12 if rows.vec.dtype == torch.float64 else 1e-5)
    return got


def graph_rows(crystals, dtype, self_entry=True):
    """Rows of the 12-nearest-neighbour entries of ``crystals``, with distance-only weights of
    three heads (ties wherever distances tie: symmetric crystals), and the tie frames."""
    b = batch_of(crystals)
    rows = padded_rows(b.edge_vec.to(dtype), invariant_weights(b).to(dtype), b.edge_index[0], len(b.batch), self_entry=self_entry)
    return rows, qr_frame(b.lattice)[b.batch].to(dtype)


@pytest.fixture(scope="module")
def real_crystals(mp_sample):
    return by_crystal_system(mp_sample, per_kind=6, max_atoms=12)


# ---------------------------------------------------------------------------------------------
# equality
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_equals_max_frame_on_real_and_symmetric_crystals(real_crystals, nacl_and_skewed, dtype):
    """Cubic, hexagonal and low-symmetry MP crystals and rock salt, with and without the atom
    itself in the rows: every (centre, head) frame equals max_frame's; symmetric crystals must
    have given ties (several entries of equal largest weight)."""
    for self_entry in (True, False):
        rows, tie = graph_rows(real_crystals + nacl_and_skewed, dtype, self_entry)
        w = torch.where(rows.valid.unsqueeze(1) & (rows.vec.norm(dim=-1).unsqueeze(1) > MIN_DISTANCE), rows.weights, -1)
        ties = (w >= w.amax(-1, keepdim=True) * (1 - dynamic.tie_tolerance(dtype))).sum(-1)
        assert (ties > 1).any() and (~rows.valid).any()  # the rows hold ties and padding
        assert_same_frames(rows, tie)


@pytest.mark.parametrize("dtype", DTYPES)
def test_equals_max_frame_on_the_rows_of_crystalframer(real_crystals, dtype):
    """The rows CrystalFramer's attention hands the max frame (every layer and bucket of a
    forward pass), captured from the model."""
    torch.manual_seed(0)
    model = build_crystalformer("cpu_small", frame="max").to(dtype).eval()
    captured = []

    def spy(rows, tie):
        captured.append((rows, tie))
        return max_frame_of_rows(rows, tie)

    batch = collate([build_graph(c, model.graph_settings) for c in real_crystals[:10]], dtype=dtype)
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(dynamic, "max_frame_of_rows", spy)
        model(batch)
    assert captured
    for rows, tie in captured:
        assert rows.vec.dtype == dtype
        assert_same_frames(rows, tie)


@pytest.mark.parametrize("dtype", DTYPES)
def test_degenerate_rows(dtype):
    """Rows of one crystal-free centre each, built to hit every rule of max_frame: a row with
    only the atom itself (-> tie frame), rows whose entries are all collinear (no e2 candidate ->
    gram_schmidt's fallback), a row where only collinear entries have weight (the e2 score is 0
    everywhere: a tie of all the others), exact weight ties, and rows of different lengths."""
    tie = qr_frame(torch.tensor([[[4.0, 0.3, 0.1], [0.2, 3.5, 0.4], [0.1, 0.6, 5.0]]], dtype=torch.float64))[0].to(dtype)
    g = torch.Generator().manual_seed(3)
    axis = torch.tensor([0.6, -0.48, 0.64], dtype=torch.float64)
    cube = torch.tensor([[s * (i == k) for k in range(3)] for i in range(3) for s in (1.0, -1.0)], dtype=torch.float64)
    line = torch.cat([axis * t for t in (1.0, -1.0, 2.0, -2.0, 3.5)]).view(-1, 3)
    generic = torch.randn(9, 3, generator=g, dtype=torch.float64) * 2
    base = torch.tensor([2.5, 0.5, 0.75], dtype=torch.float64)
    near = base + torch.tensor([0.0, 0.3, -0.2], dtype=torch.float64) * 0.1 * dynamic.tie_tolerance(dtype)
    entries = [
        (torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 3)),  # only the atom itself
        (line, torch.rand(5, 3, generator=g)),  # all collinear
        (line[:2], torch.ones(2, 3)),  # collinear and tied
        (torch.cat([line[:2], generic]), torch.cat([torch.ones(2, 3), torch.zeros(9, 3)])),  # e2 scores all 0
        (cube * 2.5, torch.ones(6, 3)),  # six tied neighbours (octahedron)
        (torch.cat([cube * 2.5, cube * 3.0 + 0.2]), torch.exp(-torch.cat([cube * 2.5, cube * 3.0 + 0.2]).norm(dim=-1, keepdim=True) * torch.tensor([1.0, 0.5, 0.0]))),
        (generic, torch.rand(9, 3, generator=g)),
        # equal weights in directions that agree to within the tie tolerance: the first column wins
        (torch.stack([near, base]), torch.ones(2, 3)),
        (torch.cat([torch.stack([base, near]), generic[:4]]), torch.cat([torch.ones(2, 3), torch.full((4, 3), 0.5)])),
    ]
    vec = torch.cat([v for v, _ in entries]).to(dtype)
    w = torch.cat([x.to(torch.float64) for _, x in entries]).to(dtype)
    centre = torch.cat([torch.full((len(v),), i) for i, (v, _) in enumerate(entries)])
    n = len(entries)
    # each row's frame in its own tie frame (a rotated copy of one), so rows do not share it
    rng = np.random.default_rng(5)
    ties = torch.stack([tie @ torch.tensor(random_rotation(rng), dtype=dtype) for _ in range(n)])
    rows = padded_rows(vec, w, centre, n)
    frames = assert_same_frames(rows, ties)
    assert torch.equal(frames[0], ties[0].expand(3, 3, 3))  # only the atom itself: the tie frame
    # all collinear: e1 along the line, e2 from the tie frame (gram_schmidt's fallback)
    e1 = frames[1, :, 0].double()
    assert torch.allclose(e1.abs() @ axis.abs().unsqueeze(-1), torch.ones(3, 1, dtype=torch.float64), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# no host synchronisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_host_synchronisation(real_crystals, dtype):
    """max_frame_of_rows waits for the device nowhere (issue 25); the former implementation did
    (the check can fail)."""
    rows, tie = graph_rows(real_crystals[:6], dtype)
    with StepCounter() as count:
        max_frame_of_rows(rows, tie)
    assert count.syncs == 0, count.where.most_common()
    assert count.ops > 0
    with StepCounter() as former:
        prefiltered_max_frame_of_rows(rows, tie)
    assert former.syncs + sum(former.outside.values()) > 0
