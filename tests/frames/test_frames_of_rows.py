"""The static and weighted PCA frames of padded entry rows (issue 25: no host synchronisation),
against the same frames of the flat entries: static_frame_of_rows bit for bit;
weighted_pca_frame_of_rows with the same degeneracy and sign decisions, bit for bit on the
degenerate rows (the max frame) and within rounding amplified by the eigenvalue gap elsewhere
(its sums run in another order). Per head and per atom, float64 and float32, on real, symmetric
and degenerate rows, and on the rows CrystalFramer's attention hands the frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from crystalframes.data.batch import collate
from crystalframes.data.graph import build_graph
from crystalframes.frames import max_frame, qr_frame, static_local_frame, weighted_pca_frame
from crystalframes.frames import dynamic
from crystalframes.frames.dynamic import (
    MIN_DISTANCE,
    max_frame_of_rows,
    static_frame_of_rows,
    weighted_pca_frame_of_rows,
)
from crystalframes.frames.registry import FrameSetup, RowNeighbourhood, build_frame
from crystalframes.io import Crystal
from crystalframes.models import build_model
from crystalframes.models.crystalformer import build_crystalformer
from crystalframes.profiling import StepCounter
from crystalframes.testing import by_crystal_system, random_crystals, random_rotation
from tests.frames.conftest import assert_rotations
from tests.frames.test_max_frame_rows import graph_rows, padded_rows

DTYPES = (torch.float64, torch.float32)


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: a second thread only slows them


@pytest.fixture(scope="module")
def real_crystals(mp_sample):
    return by_crystal_system(mp_sample, per_kind=6, max_atoms=12)


def simple_cubic():
    """One atom per cubic cell: 6 nearest neighbours at equal distance, Sigma ~ I at any
    distance-only weights (every row degenerate)."""
    return Crystal("sc", np.eye(3) * 3.0, [29], [[0.0, 0.0, 0.0]])


def flat(rows: RowNeighbourhood, n: int):
    """(vec, centre, weights) of the rows' flat entries (what the frames used before)."""
    assert rows.num_centres == n
    return rows.entries()


def exact_statistics(vec, weights, centre, n):
    """Of each (centre, head), in float64: the smallest relative eigenvalue gap of Sigma (n, H),
    the weighted mean direction (n, H, 3) and the total weight (n, H)."""
    v = vec.double()
    d = v.norm(dim=-1)
    u = v / d.clamp_min(MIN_DISTANCE).unsqueeze(-1)
    w = weights.double() * (d > MIN_DISTANCE).double().unsqueeze(-1)  # (E, H)
    sigma = torch.zeros(n, w.shape[1], 3, 3, dtype=torch.float64)
    sigma.index_add_(0, centre, w[:, :, None, None] * (u[:, :, None] * u[:, None, :]).unsqueeze(1))
    mean = torch.zeros(n, w.shape[1], 3, dtype=torch.float64).index_add_(0, centre, w.unsqueeze(-1) * u.unsqueeze(1))
    wsum = torch.zeros(n, w.shape[1], dtype=torch.float64).index_add_(0, centre, w)
    ev = torch.linalg.eigvalsh(sigma).flip(-1)
    gap = ((ev[..., :-1] - ev[..., 1:]) / ev.abs().amax(-1, keepdim=True).clamp_min(1e-300)).amin(-1)
    return gap, mean, wsum


def assert_static_same(rows: RowNeighbourhood, tie: torch.Tensor) -> torch.Tensor:
    got = static_frame_of_rows(rows, tie)
    vec, centre, _ = flat(rows, len(tie))
    want = static_local_frame(vec, centre, len(tie), tie)
    assert got.dtype == rows.vec.dtype and got.shape == want.shape == (len(tie), 3, 3)
    assert torch.equal(got, want), f"differs from static_local_frame by {(got - want).abs().max():.3g}"
    return got


def assert_pca_close(rows: RowNeighbourhood, tie: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weighted_pca_frame_of_rows against weighted_pca_frame of the flat entries: the same rows
    take the max frame (then bit-identical), and elsewhere the axes differ by rounding only, at
    most a few eps / gap. Returns the frames and the mask of the rows that took the max frame.

    One exception, in float32 only: an axis whose projection on the mean direction is zero by
    symmetry (a mirror plane containing the mean) may come out with opposite signs, because
    the sign rule's threshold (1e-6 |m|, frames/_util.SIGN_ATOL) lies below float32's rounding
    of the axes (~eps / gap), so rounding decides that sign in both implementations. Allowed
    where the exact (float64) projection is within that rounding, never in float64."""
    n = len(tie)
    got = weighted_pca_frame_of_rows(rows, tie)
    vec, centre, weights = flat(rows, n)
    want = weighted_pca_frame(vec, weights, centre, n, tie)
    assert got.dtype == rows.vec.dtype and got.shape == want.shape
    fell_back = (got == max_frame_of_rows(rows, tie)).flatten(-2).all(-1)
    assert torch.equal(fell_back, (want == max_frame(vec, weights, centre, n, tie)).flatten(-2).all(-1))
    assert torch.equal(got[fell_back], want[fell_back])
    eps = torch.finfo(rows.vec.dtype).eps
    gap, mean, wsum = exact_statistics(vec, weights, centre, n)
    bound = (16 * eps / gap).unsqueeze(-1)  # (n, H, 1): per axis
    g, f = got.double(), want.double()
    same = ((g - f).abs().amax(-1) <= bound)[..., :2]  # (n, H, 2): u1, u2
    flipped = ((g + f).abs().amax(-1) <= bound)[..., :2]
    if rows.vec.dtype == torch.float64:
        undecided = torch.zeros_like(flipped)
    else:
        noise = 16 * (eps / gap + eps * wsum / mean.norm(dim=-1).clamp_min(1e-300)).unsqueeze(-1)
        undecided = (f[..., :2, :] @ mean.unsqueeze(-1)).squeeze(-1).abs() <= noise * mean.norm(dim=-1, keepdim=True)
    ok = fell_back.unsqueeze(-1) | same | (flipped & undecided)
    assert ok.all(), f"rows {ok.all(-1).logical_not().nonzero().tolist()} differ beyond rounding (gaps {gap[~ok.all(-1)].tolist()})"
    assert_rotations(got.double(), atol=1e-12 if rows.vec.dtype == torch.float64 else 1e-5)
    return got, fell_back


# ---------------------------------------------------------------------------------------------
# rows of real and symmetric crystals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_static_frame_equals_the_flat_one(real_crystals, nacl_and_skewed, dtype):
    """Cubic, hexagonal and low-symmetry MP crystals, rock salt, a one-atom cubic cell and a
    triclinic cell, with and without the atom itself in the rows (r = 0: weight 1e12, not
    usable): bit-identical to static_local_frame."""
    for self_entry in (True, False):
        rows, tie = graph_rows(real_crystals + nacl_and_skewed + [simple_cubic()], dtype, self_entry)
        assert (~rows.valid).any()  # padding, with arbitrary values, must be ignored
        assert_static_same(rows, tie)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_pca_frame_matches_the_flat_one_per_head(real_crystals, nacl_and_skewed, dtype):
    """The same crystals with three heads of distance-only weights: some rows degenerate
    (cubic sites), some not; decisions and degenerate frames as the flat entries', the other
    axes within rounding."""
    for self_entry in (True, False):
        rows, tie = graph_rows(real_crystals + nacl_and_skewed + [simple_cubic()], dtype, self_entry)
        frames, fell_back = assert_pca_close(rows, tie)
        assert fell_back.any() and (~fell_back).any()
        assert fell_back[-1].all()  # the simple cubic site (last row): every head


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_atom_weights_and_heads_agree(real_crystals, dtype):
    """One head (per-atom frames) gives weighted_pca_frame of 1-D weights, and each head of a
    multi-head row gives the frame of that head alone."""
    rows, tie = graph_rows(real_crystals[:8], dtype)
    frames = weighted_pca_frame_of_rows(rows, tie)
    for h in range(rows.weights.shape[1]):
        one = dataclasses.replace(rows, weights=rows.weights[:, h : h + 1].contiguous())
        assert torch.equal(weighted_pca_frame_of_rows(one, tie)[:, 0], frames[:, h])
        got, _ = assert_pca_close(one, tie)
        vec, centre, weights = flat(one, len(tie))
        per_atom = weighted_pca_frame(vec, weights[:, 0], centre, len(tie), tie)
        assert torch.equal(weighted_pca_frame(vec, weights, centre, len(tie), tie)[:, 0], per_atom)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rock_salt_takes_the_max_frame_exactly(nacl, dtype):
    """Rock salt, rotated: every site is cubic (Sigma ~ I for distance-only weights), so every
    row must take the max frame, bit-identical to the flat path, in any orientation (a
    degeneracy decision flipped by rounding would give arbitrary axes)."""
    from crystalframes.testing import rotated

    for seed in range(3):
        crystal = rotated(nacl, random_rotation(np.random.default_rng(seed))) if seed else nacl
        rows, tie = graph_rows([crystal], dtype)
        _, fell_back = assert_pca_close(rows, tie)
        assert fell_back.all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_degenerate_rows(dtype):
    """Rows built for the rules of weighted_pca_frame: only the atom itself (no usable entry:
    Sigma = 0, the tie frame), an octahedron (Sigma ~ I: the max frame), a centrosymmetric row
    (mean direction ~0: signs from the tie frame), an axial row (two equal eigenvalues), a
    generic row, and a row whose weights are all zero."""
    g = torch.Generator().manual_seed(4)
    cube = torch.tensor([[s * (i == k) for k in range(3)] for i in range(3) for s in (1.0, -1.0)], dtype=torch.float64)
    centro = torch.tensor([[2.0, 0, 0], [0, 1.0, 0.3], [0.1, 0, 3]], dtype=torch.float64)
    generic = torch.randn(7, 3, generator=g, dtype=torch.float64) * 2
    entries = [
        (torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 2)),
        (cube * 2.5, torch.ones(6, 2)),
        (torch.cat([centro, -centro]), torch.tensor([3.0, 2.0, 1.0, 3.0, 2.0, 1.0]).unsqueeze(-1).expand(6, 2)),
        (torch.cat([cube[:4] * 2.0, cube[4:] * 3.0]), torch.ones(6, 2)),
        (generic, torch.rand(7, 2, generator=g)),
        (generic[:3], torch.zeros(3, 2)),
    ]
    vec = torch.cat([v for v, _ in entries]).to(dtype)
    w = torch.cat([x.double() for _, x in entries]).to(dtype)
    centre = torch.cat([torch.full((len(v),), i) for i, (v, _) in enumerate(entries)])
    n = len(entries)
    tie0 = qr_frame(torch.tensor([[[4.0, 0.3, 0.1], [0.2, 3.5, 0.4], [0.1, 0.6, 5.0]]], dtype=torch.float64))[0]
    rng = np.random.default_rng(7)
    ties = torch.stack([tie0 @ torch.tensor(random_rotation(rng)) for _ in range(n)]).to(dtype)
    rows = padded_rows(vec, w, centre, n)
    frames, fell_back = assert_pca_close(rows, ties)
    assert fell_back[[0, 1, 3, 5]].all() and not fell_back[[2, 4]].any()
    assert torch.equal(frames[0], ties[0].expand(2, 3, 3))  # nothing usable: the tie frame


@pytest.mark.parametrize("name", ["static", "weighted_pca"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_of_crystalframer(real_crystals, name, dtype):
    """The rows CrystalFramer's attention hands the frame (every layer, many buckets: a small
    memory budget), captured from a forward pass."""
    torch.manual_seed(0)
    model = build_crystalformer("cpu_small", frame=name, memory_budget=2**12).to(dtype).eval()
    fn = {"static": "static_frame_of_rows", "weighted_pca": "weighted_pca_frame_of_rows"}[name]
    original = getattr(dynamic, fn)
    captured = []

    def spy(rows, tie):
        captured.append((rows, tie))
        return original(rows, tie)

    batch = collate([build_graph(c, model.graph_settings) for c in real_crystals[:10]], dtype=dtype)
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(dynamic, fn, spy)
        model(batch)
    assert len(captured) > 2 * model.config.num_layers  # several buckets per layer
    for rows, tie in captured:
        assert rows.vec.dtype == dtype
        if name == "static":
            assert_static_same(rows, tie)
        else:
            assert_pca_close(rows, tie)


# ---------------------------------------------------------------------------------------------
# no host synchronisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["static", "weighted_pca"])
def test_frames_of_rows_do_not_synchronise(real_crystals, name):
    """The frames' forward on rows waits for the device nowhere; on the flat entries (which
    :meth:`RowNeighbourhood.entries` selects with nonzero) it did (the check can fail)."""
    rows, tie = graph_rows(real_crystals[:6], torch.float32)
    if name == "static":
        rows = dataclasses.replace(rows, weights=None)
    frame = build_frame(name)
    setup = FrameSetup(lattice=None, batch=None, tie_frames=tie)
    with StepCounter() as count:
        frame(0, setup, rows)
    assert count.syncs == 0, count.where.most_common()
    assert count.ops > 0
    with StepCounter() as former:
        vec, centre, weights = dataclasses.replace(rows).entries()  # a fresh view: entries not derived yet
        if name == "static":
            static_local_frame(vec, centre, len(tie), tie)
        else:
            weighted_pca_frame(vec, weights, centre, len(tie), tie)
    assert former.syncs > 0


@pytest.mark.parametrize("name", ["static", "weighted_pca"])
def test_training_step_has_no_frame_syncs(name):
    """A Crystalformer training step with many buckets per layer: no synchronisation comes
    from the frame code (before: one nonzero per bucket, and one degeneracy test per bucket for
    weighted_pca)."""
    torch.manual_seed(0)
    model = build_model(f"crystalformer:{name}@cpu_small", memory_budget=2**12).float().train()
    batch = collate([build_graph(c, model.graph_settings) for c in random_crystals(8, seed=1)], dtype=torch.float32)
    with StepCounter() as count:
        model(batch).sum().backward()
    assert count.ops > 0
    frames = {k: v for k, v in count.where.items() if "crystalframes/frames/" in k}
    assert not frames, frames
