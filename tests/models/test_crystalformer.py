"""Crystalformer (Taniai et al., ICLR 2024) / CrystalFramer and its frame baselines (Ito, Taniai
et al., ICLR 2025): the model contract of crystalframes.testing for every frame option, the
periodic attention against a direct implementation of its formula, convergence of the periodic
sum, determinism, and sizes.

Models are float64 and in eval mode for exactness tests, with rho statistics calibrated by one
training-mode pass. Tests pin torch to one thread: the tensors are small, and on a shared
2-core machine two OpenMP threads make small ops tens of times slower.
"""

from __future__ import annotations

import dataclasses

import math
import re
import warnings

import numpy as np
import pytest
import torch

from crystalframes.data.batch import collate
from crystalframes.data.graph import GraphSettings, build_graph
from crystalframes.frames import FRAMES, frame_names, max_frame, static_local_frame, weighted_pca_frame
from crystalframes.io import Crystal
from crystalframes.models.crystalformer import CRYSTALFORMER_PRESETS, build_crystalformer
from crystalframes.models import num_parameters
from crystalframes.models import periodic_attention as pa
from crystalframes.testing import (
    DEFAULT_TOLERANCES,
    invariance_errors,
    predict,
    random_rotation,
    rotated,
    supercell,
)

TOL64 = DEFAULT_TOLERANCES["float64"]  # 1e-9
LOCAL_FRAMES = ("none", "max", "weighted_pca", "static")  # frames built from the attention entries
# one frame per crystal, from the cell, for every atom (CrystalFramer's "pca" and "lattice" baselines)
GLOBAL_FRAMES = ("global+positions_pca", "global+lattice_vector")
ALL_FRAMES = LOCAL_FRAMES + GLOBAL_FRAMES + ("global+qr", "spframe_quaternion+qr", "spframe_gram_schmidt+qr")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def batch_of(crystals, dtype=torch.float64):
    return collate([build_graph(c, GraphSettings(k=None)) for c in crystals], dtype=dtype)


def calibrated(model, crystals):
    """Set the rho statistics with one training-mode pass (no gradient), then eval mode."""
    dtype = next(model.parameters()).dtype
    model.train()
    with torch.no_grad():
        model(batch_of(crystals, dtype))
    return model.eval()


def small_model(frame, crystals, dtype=torch.float64, seed=0, preset="cpu_small", **overrides):
    """``frame`` as in a spec: ``max``, or ``global+positions_pca`` (frame + global frame)."""
    torch.manual_seed(seed)
    frame, _, global_name = frame.partition("+")
    if global_name:
        overrides["global_frame"] = global_name
    return calibrated(build_crystalformer(preset, frame=frame, **overrides).to(dtype), crystals)


def crystal_system(crystal) -> str:
    import spglib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        text = spglib.get_spacegroup((crystal.lattice, crystal.frac_coords, crystal.atomic_numbers), symprec=1e-3)
    number = int(re.search(r"\((\d+)\)", text).group(1))
    for bound, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"), (167, "trigonal"), (194, "hexagonal")):
        if number <= bound:
            return name
    return "cubic"


@pytest.fixture(scope="module")
def crystals(mp_sample, jarvis_sample):
    """12 small real crystals (2-8 atoms): from each shared sample the first 2 cubic, 2
    hexagonal (where max-frame ties abound) and 2 of lower symmetry."""
    picked = []
    for source in (mp_sample, jarvis_sample):
        want = {"cubic": 2, "hexagonal": 2, "other": 2}
        for c in source:
            if 2 <= c.num_atoms <= 8:
                system = crystal_system(c)
                key = system if system in want and system != "other" else "other"
                if want[key]:
                    want[key] -= 1
                    picked.append(c)
            if not any(want.values()):
                break
    assert len(picked) == 12
    return picked


# ---------------------------------------------------------------------------------------------
# sizes, presets, inputs
# ---------------------------------------------------------------------------------------------


def test_parameter_counts():
    """Trainable parameters, as the papers count: Crystalformer 853,505 (the reference code's
    sum over model.parameters() is 853,517: it adds 12 frozen statistics, which
    num_parameters leaves out); CrystalFramer adds 3 x H x d x D per layer: 951,809 (D = 64,
    paper ~952 K) and 878,081 (D = 16, paper ~878 K), for every frame option alike."""
    base = build_crystalformer("reference", frame="none")
    assert num_parameters(base) == 853_505
    assert sum(p.numel() for p in base.parameters()) == 853_505 + 12  # the frozen rho statistics
    for frame in [f for f in frame_names()[1:] if "features" not in FRAMES[f].needs]:  # learned frames add heads
        assert num_parameters(build_crystalformer("reference", frame=frame)) == 951_809
        assert num_parameters(build_crystalformer("lightweight", frame=frame)) == 878_081
    assert abs(951_809 - 952_000) < 500 and abs(878_081 - 878_000) < 500


def test_presets_and_training_settings_are_plain_data():
    from crystalframes.train.recipes import preset_task, preset_training

    assert set(CRYSTALFORMER_PRESETS) >= {"reference", "lightweight", "cpu_small", "mp_e_form", "jarvis_mbj_bandgap"}
    for preset in CRYSTALFORMER_PRESETS.values():
        build_crystalformer(preset.name, frame="max")
        training = preset_training(f"crystalformer@{preset.name}")
        assert training["optimizer"] == "adamw" and training["lr"] == 5e-4
    assert preset_training("crystalformer@mp_e_form")["epochs"] == 500
    assert preset_training("crystalformer@jarvis_mbj_bandgap")["epochs"] == 1600
    assert preset_task("crystalformer@jarvis_mbj_bandgap") == {"dataset": "jarvis_dft_3d_2021", "target": "mbj_bandgap"}


def test_build_errors():
    with pytest.raises(ValueError, match="unknown frame"):
        build_crystalformer(frame="quaternion")
    with pytest.raises(ValueError, match="unknown Crystalformer preset"):
        build_crystalformer("huge", frame="none")
    with pytest.raises(ValueError, match="unknown Crystalformer option"):
        build_crystalformer("cpu_small", frame="none", scalars=3)  # an eComFormer option
    with pytest.raises(ValueError, match="divisible"):
        build_crystalformer("cpu_small", frame="none", num_heads=3)


def test_elements_beyond_californium_are_rejected_by_name():
    model = build_crystalformer("cpu_small", frame="none").eval()
    einsteinium = Crystal("Es", np.eye(3) * 4.0, [99], [[0, 0, 0]])
    with pytest.raises(ValueError, match=r"Es \(Z=99\)"):
        predict(model, [einsteinium])
    californium = Crystal("Cf", np.eye(3) * 4.0, [98], [[0, 0, 0]])
    assert torch.isfinite(predict(model, [californium])).all()


def test_element_check_of_embed_is_not_a_counted_read_and_never_fails_on_a_device():
    """On the CPU, NumPy reads the atomic numbers (no device wait); on another device (meta: no
    values) unsupported elements get NaN rows instead of an error or an out-of-range index."""
    from crystalframes.profiling import StepCounter

    model = build_crystalformer("cpu_small", frame="none").eval()
    with StepCounter() as count:
        model.embed(torch.tensor([1, 8, 98]))
    assert count.syncs == 0, count.where
    with pytest.raises(ValueError, match=r"H\.\.Cf .* contains Es \(Z=99\)"):
        model.embed(torch.tensor([1, 99]))
    meta = build_crystalformer("cpu_small", frame="none").to("meta")
    assert meta.embed(torch.tensor([0, 5, 99], device="meta")).shape[0] == 3
    if torch.cuda.is_available():
        rows = build_crystalformer("cpu_small", frame="none").cuda().embed(torch.tensor([1, 0, 99], device="cuda")).cpu()
        assert torch.isfinite(rows[0]).all() and torch.isnan(rows[1:]).all()


# ---------------------------------------------------------------------------------------------
# the periodic sum
# ---------------------------------------------------------------------------------------------


def brute_force_entries(crystal, cutoff):
    """{(i, j, n)} with |r_j + nL - r_i| <= cutoff_i from a wide box of translations."""
    frac = np.mod(crystal.frac_coords, 1.0)
    pos, lat = frac @ crystal.lattice, crystal.lattice
    reach = int(math.ceil(max(cutoff) * np.linalg.norm(np.linalg.inv(lat), axis=0).max())) + 1
    shifts = np.array(np.meshgrid(*[np.arange(-reach, reach + 1)] * 3, indexing="ij")).reshape(3, -1).T
    out = set()
    for i in range(len(pos)):
        for j in range(len(pos)):
            d = np.linalg.norm(pos[j] + shifts @ lat - pos[i], axis=1)
            out |= {(i, j, tuple(s)) for s in shifts[d <= cutoff[i]]}
    return out


def test_periodic_entries_are_exactly_the_images_within_the_cutoff(crystals):
    skewed = Crystal("skewed", [[4.0, 0, 0], [3.7, 1.2, 0], [0.4, 0.3, 2.5]], [8, 14], [[0.1, 0.2, 0.3], [0.6, 0.55, 0.9]])
    single = Crystal("single", np.diag([2.5, 2.6, 2.7]), [6], [[0.5, 0.5, 0.5]])
    for crystal in crystals[:3] + [skewed, single]:
        b = batch_of([crystal])
        rng = np.random.default_rng(crystal.num_atoms)
        cutoff = torch.from_numpy(rng.uniform(5.0, 9.0, crystal.num_atoms))
        ent = pa.periodic_entries(b.pos, b.frac_coords, b.lattice, b.batch, b.num_atoms, cutoff, budget=2**10)
        got = list(zip(ent.centre.tolist(), ent.neighbour.tolist(), map(tuple, ent.shift.tolist())))
        assert len(got) == len(set(got)) and set(got) == brute_force_entries(crystal, cutoff.numpy())
        # sorted by centre, then distance; the atom itself first; pairs consistent
        assert (torch.diff(ent.centre) >= 0).all() and (ent.dist[ent.offset] == 0).all()
        same = torch.diff(ent.centre) == 0
        assert (torch.diff(ent.dist)[same] >= 0).all()
        assert torch.equal(ent.pair_centre[ent.pair], ent.centre) and torch.equal(ent.pair_neighbour[ent.pair], ent.neighbour)
        # filtering a wider enumeration gives the same entries as enumerating directly
        wide = pa.periodic_entries(b.pos, b.frac_coords, b.lattice, b.batch, b.num_atoms, cutoff * 1.3)
        sub = wide.within(cutoff)
        for name in ("centre", "neighbour", "shift", "offset", "count"):
            assert torch.equal(getattr(sub, name), getattr(ent, name)), name
        assert np.array_equal(sub.count_host, ent.count.numpy())
        # within() keeps the wider enumeration's pairs (those left without an entry get no weight)
        assert torch.equal(sub.pair_centre[sub.pair], sub.centre) and torch.equal(sub.pair_neighbour[sub.pair], sub.neighbour)
        used = sub.used_pairs()
        assert torch.equal(sub.pair_centre[used], ent.pair_centre) and torch.equal(sub.pair_neighbour[used], ent.pair_neighbour)


def frame_of(model):
    """The model's frame as its layers take it (None without one)."""
    return model.frame if model.frame.active else None


def naive_layer(att, x, crystal_batch, tie, frame):
    """Direct implementation of one attention layer on one crystal: a wide box of images,
    per-head softmax over (j, n) with d <= c sigma_ih, exact Gaussians, frames from the frames
    module on every entry."""
    pos, lattice = crystal_batch.pos, crystal_batch.lattice[0]
    n, h, d = x.shape[0], att.heads, att.head_dim
    q, k, v = (proj(x).view(n, h, d) for proj in (att.q_proj, att.k_proj, att.v_proj))
    rho = att.rho(q)
    a, cut = -rho / (2 * att.r0**2), att.cutoff_sigmas * att.r0 / rho.sqrt()
    reach = int(math.ceil(cut.max().item() * torch.linalg.inv(lattice).norm(dim=0).max().item())) + 1
    grid = torch.arange(-reach, reach + 1, dtype=x.dtype)
    shifts = torch.cartesian_prod(grid, grid, grid)
    out = torch.zeros(n, h, d, dtype=x.dtype)
    centre, vecs, weights = [], [], []
    for i in range(n):
        vec = (pos.unsqueeze(1) + (shifts @ lattice).unsqueeze(0) - pos[i]).reshape(-1, 3)
        j = torch.arange(n).repeat_interleave(len(shifts))
        dist = vec.norm(dim=-1)
        keep = dist <= cut[i].max()
        vec, j, dist = vec[keep], j[keep], dist[keep]
        logit = (q[i] * k[j]).sum(-1) / math.sqrt(d) + a[i] * dist.unsqueeze(-1) ** 2
        w = torch.softmax(logit.masked_fill(dist.unsqueeze(-1) > cut[i], float("-inf")), dim=0)  # (E, H)
        b = torch.exp(-((dist.unsqueeze(-1) - att.distance_centres) ** 2) / (2 * att.distance_width**2))
        out[i] = torch.einsum("eh,ehc->hc", w, v[j]) + torch.einsum("eh,ek,hck->hc", w, b, att.distance_proj)
        centre.append(torch.full((len(j),), i))
        vecs.append(vec)
        weights.append(w)
    if att.angle_proj is not None:
        ci, vec, w = torch.cat(centre), torch.cat(vecs), torch.cat(weights)
        if frame == "max":
            frames = max_frame(vec, w, ci, n, tie)
        elif frame == "weighted_pca":
            frames = weighted_pca_frame(vec, w, ci, n, tie)
        else:
            frames = static_local_frame(vec, ci, n, tie).unsqueeze(1).expand(n, h, 3, 3)
        dist = vec.norm(dim=-1)
        cos = torch.einsum("ec,ehkc->ehk", vec / dist.clamp_min(1e-6).unsqueeze(-1), frames[ci])
        mu, width = pa.angle_centres(att.angle_proj.shape[-1])
        basis = torch.exp(-((cos.unsqueeze(-1) - mu) ** 2) / (2 * width**2))
        w = w * (dist > 1e-6).unsqueeze(-1)  # the atom itself has no direction
        total = torch.zeros(n, h, 3, basis.shape[-1], dtype=x.dtype).index_add_(0, ci, w[..., None, None] * basis)
        out = out + torch.einsum("nhkm,khcm->nhc", total, att.angle_proj)
    return att.out_proj(out.reshape(n, h * d))


@pytest.mark.parametrize("frame", LOCAL_FRAMES)
def test_attention_layer_matches_the_direct_formula(frame, crystals):
    """Chunked entries, padded buckets, pre-filtered max frames and Chebyshev angle bases
    compute the same numbers as the formula written out directly (float64)."""
    for crystal in (crystals[0], crystals[5], crystals[9]):
        model = small_model(frame, [crystal], seed=1)
        b = batch_of([crystal])
        att, geometry = model.layers[0].attention, model.geometry(b)
        x = torch.randn(b.pos.shape[0], att.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.3
        with torch.no_grad():
            tie = None if geometry.frame_setup is None else geometry.frame_setup.tie_frames
            expected = naive_layer(att, x, b, tie, frame)
            got = att(x, geometry, frame_of(model), 0)
        assert (got - expected).abs().max() < 1e-11 * (1 + expected.abs().max())


def test_distinct_frames_group_the_heads_of_each_centre():
    """The angle encoding computes its moments once per distinct (centre, frame); every
    (centre, head) must get back its own frame, and only equal frames of one centre merge."""
    torch.manual_seed(0)
    base = torch.linalg.qr(torch.randn(4, 3, 3, dtype=torch.float64))[0]
    choice = torch.tensor([[0, 0, 1], [1, 1, 1], [2, 3, 2], [0, 0, 0]])  # centre 3 reuses centre 0's frame
    frames = base[choice]  # (4 centres, 3 heads, 3, 3)
    group, centre, distinct = pa._distinct_frames_per_centre(frames)
    assert distinct.shape[0] == 2 + 1 + 2 + 1  # centre 3's frame equals centre 0's, yet is its own group
    assert torch.equal(distinct[group], frames)
    assert torch.equal(centre[group], torch.arange(4).unsqueeze(1).expand(4, 3))


def test_heads_with_different_max_frames_are_covered(crystals):
    """The direct-formula comparison above exercises centres whose heads use different max
    frames (several groups per centre), not just the common case of one shared frame."""
    seen = []
    for crystal in (crystals[0], crystals[5], crystals[9]):
        model = small_model("max", [crystal], seed=1)
        b = batch_of([crystal])
        att, geometry = model.layers[0].attention, model.geometry(b)
        original = model.frame.forward

        def record(*args, original=original):
            out = original(*args)
            seen.append(pa._distinct_frames_per_centre(out)[1].shape[0] / out.shape[0])
            return out

        model.frame.forward = record
        x = torch.randn(b.pos.shape[0], att.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.3
        with torch.no_grad():
            att(x, geometry, model.frame, 0)
    assert seen and max(seen) > 1.0, seen


def test_periodic_sum_converged(crystals):
    """Doubling the image range (cutoff_sigmas 6 -> 12) moves outputs by < 1e-6 relative,
    whereas the reference's 3.5 sigma is not converged (~1e-3)."""
    sample = crystals[::2]
    for frame in ("none", "max"):
        model = small_model(frame, sample, preset="reference")

        def outputs(c):
            for layer in model.layers:
                layer.attention.cutoff_sigmas = c
            return predict(model, sample)

        ref = outputs(12.0)
        assert ((outputs(6.0) - ref).abs().max() / ref.abs().max()) < 1e-6
        reference_range = pa.REFERENCE_CUTOFF_SIGMAS
        assert ((outputs(reference_range) - outputs(2 * reference_range)).abs().max() / ref.abs().max()) > 1e-5


def test_chebyshev_angle_bases_reach_working_precision():
    grid = torch.linspace(-1, 1, 4001, dtype=torch.float64)
    for num in (64, 16, 8):
        mu, width = pa.angle_centres(num)
        exact = torch.exp(-((grid.unsqueeze(-1) - mu) ** 2) / (2 * width**2))
        for key, tol in pa.ANGLE_BASIS_TOLERANCE.items():
            coef = pa.chebyshev_expansion(mu, width, tol)
            cheb = torch.cos(torch.arange(coef.shape[0], dtype=torch.float64) * torch.arccos(grid).unsqueeze(-1))
            assert (cheb @ coef - exact).abs().max() <= tol, (num, key)
    assert pa.chebyshev_expansion(*pa.angle_centres(64), pa.ANGLE_BASIS_TOLERANCE["float32"]).shape[0] == 46


def test_chebyshev_moments_values_and_gradient():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 4, 6, 7, 7])
    mask = (torch.arange(7) < lengths.unsqueeze(-1)).unsqueeze(1)
    w = (torch.rand(5, 2, 7, dtype=torch.float64, generator=g) * mask).requires_grad_()
    c = torch.rand(5, 7, 3, dtype=torch.float64, generator=g) * 2 - 1
    moments = pa.ChebyshevMoments.apply(w, c, lengths, 9, 40)
    chebyshev = torch.cos(torch.arange(9, dtype=torch.float64) * torch.arccos(c).unsqueeze(-1))  # (R, M, 3, 9)
    assert torch.allclose(moments, torch.einsum("rhm,rmkn->rhkn", w, chebyshev), atol=1e-13)
    assert torch.autograd.gradcheck(lambda w: pa.ChebyshevMoments.apply(w * mask, c, lengths, 9, 40), (w,))


# ---------------------------------------------------------------------------------------------
# the model contract, every frame option (float64, eval)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ALL_FRAMES)
def test_model_contract(frame, crystals):
    """Rotation, translation, permutation and batch == single hold to 1e-9 on real crystals
    including cubic and hexagonal ones, for every frame option; supercells too except for the
    global pca / lattice frames, which are frames of the cell (test_global_frames_depend_on_the_cell).
    Another basis of the same cell changes the outputs only through the tie-breaking frame
    (test_tie_breaking_depends_on_the_cell_basis); without a frame it changes nothing."""
    model = small_model(frame, crystals)
    errors = invariance_errors(model, crystals, trials=2)
    for key in ("rotation", "translation", "permutation", "batch"):
        assert errors[key] <= TOL64, (frame, key, errors)
    if not frame.startswith("global"):
        assert errors["supercell"] <= TOL64, (frame, errors)
    if frame == "none":
        assert errors["basis_change"] <= TOL64, errors


def test_tie_breaking_depends_on_the_cell_basis(crystals):
    """Exact ties among neighbours (symmetric sites) are broken by the QR frame of the given
    lattice basis, as the frames module prescribes; another basis of the same lattice (here
    the Niggli-reduced one) can break them differently. Measured here: with the tie frame of
    the original basis, the other basis gives the same outputs to 1e-9, so the tie frame is the
    only basis-dependent ingredient (pca / lattice frames depend on the basis by definition)."""
    from crystalframes.frames import qr_frame
    from crystalframes.testing import niggli_reduced

    for frame in ("max", "weighted_pca", "static"):
        model = small_model(frame, crystals)
        original = model.geometry
        reduced = [niggli_reduced(c) for c in crystals]
        lattices = torch.from_numpy(np.stack([c.lattice for c in crystals]))

        def original_tie_frame(batch):
            geometry = original(batch)
            geometry.frame_setup = dataclasses.replace(geometry.frame_setup, tie_frames=qr_frame(lattices.to(batch.pos.dtype))[batch.batch])
            return geometry

        expected = predict(model, crystals)
        model.geometry = original_tie_frame
        assert (predict(model, reduced) - expected).abs().max() <= TOL64, frame


def test_global_frames_depend_on_the_cell(crystals):
    """Measured, not hidden: a supercell has other principal axes of its positions and other
    shortest lattice vectors, so the pca and lattice baselines change (by ~1e-4 here) while
    every local frame (and no frame) is supercell invariant to 1e-15."""
    cells = [supercell(c, (2, 1, 1)) for c in crystals]
    for frame in GLOBAL_FRAMES:
        model = small_model(frame, crystals)
        change = (predict(model, cells) - predict(model, crystals)).abs().max()
        assert change > 1e-6, frame


def test_a_broken_frame_would_be_caught(crystals):
    """Sensitivity of the contract test: the same model with the identity as every atom's
    frame (not equivariant) moves by far more than the tolerance under rotation."""
    model = small_model("global+positions_pca", crystals)
    original = model.geometry

    def identity_frames(batch):
        geometry = original(batch)
        identity = torch.eye(3, dtype=batch.pos.dtype).expand(batch.pos.shape[0], 3, 3).clone()
        geometry.frame_setup = dataclasses.replace(geometry.frame_setup, global_frames=identity)
        return geometry

    model.geometry = identity_frames
    rng = np.random.default_rng(0)
    moved = (predict(model, [rotated(c, random_rotation(rng)) for c in crystals]) - predict(model, crystals)).abs().max()
    assert moved > 1e4 * TOL64


@pytest.mark.parametrize("frame", ALL_FRAMES)
def test_evaluation_is_deterministic(frame, crystals):
    """Two evaluations give bit-identical outputs (the reference randomises signs and ties)."""
    model = small_model(frame, crystals, dtype=torch.float32)
    assert torch.equal(predict(model, crystals), predict(model, crystals))


def test_reference_crystalframer_is_deterministic_and_invariant(crystals):
    model = small_model("max", crystals[:4], preset="reference")
    first = predict(model, crystals[:4])
    assert torch.equal(first, predict(model, crystals[:4]))
    rng = np.random.default_rng(1)
    assert (predict(model, [rotated(c, random_rotation(rng)) for c in crystals[:4]]) - first).abs().max() <= TOL64


# ---------------------------------------------------------------------------------------------
# rho standardisation, memory, training
# ---------------------------------------------------------------------------------------------


def test_rho_statistics_are_batch_independent_in_evaluation(crystals):
    """Training mode standardises with the batch (and updates the running statistics; the
    first batch sets them); evaluation uses the running statistics only, so a crystal's output
    does not depend on what it is batched with, and evaluation changes nothing."""
    torch.manual_seed(0)
    model = build_crystalformer("cpu_small", frame="max").double()
    stats = model.layers[0].attention.rho_stats
    assert stats.tolist() == [0.0, 1.0, 0.0] and not stats.requires_grad
    model.train()
    with torch.no_grad():
        model(batch_of(crystals[:6]))
        first = stats.clone()
        assert first[2] == 1 and first[1] != 1.0
        alone_train = model(batch_of(crystals[:1]))
        mixed_train = model(batch_of(crystals[:1] + crystals[6:]))[:1]
    assert stats[2] == 3 and not torch.equal(stats, first)
    assert (alone_train - mixed_train).abs().max() > 1e-8  # training mode: batch statistics
    model.eval()
    frozen = stats.clone()
    alone, mixed = predict(model, crystals[:1]), predict(model, crystals[:1] + crystals[6:])[:1]
    assert (alone - mixed).abs().max() <= 1e-14 and torch.equal(stats, frozen)


def test_memory_budget_does_not_change_outputs(crystals):
    model = small_model("max", crystals)
    expected = predict(model, crystals)
    for layer in model.layers:
        layer.attention.memory_budget = 2**10  # many buckets, chunks and candidate batches
    assert (predict(model, crystals) - expected).abs().max() <= 1e-13


def test_large_cell_without_atom_cap(crystals):
    """A cell above the reference's 320-atom limit runs in float32 and gives the
    per-atom-averaged output of its primitive cell."""
    crystal = min(crystals, key=lambda c: c.num_atoms)
    reps = math.ceil((321 / crystal.num_atoms) ** (1 / 3))
    big = supercell(crystal, (reps, reps, reps))
    assert 320 < big.num_atoms <= 700
    model = small_model("max", [crystal], dtype=torch.float32)
    small_out, big_out = predict(model, [crystal]), predict(model, [big])
    assert torch.isfinite(big_out).all() and (big_out - small_out).abs().max() < 1e-5


def test_float32_agrees_with_float64_without_frames(crystals):
    """Without frames float32 is float64 to ~1e-7. (With max frames the frames module declares
    weights within sqrt(eps) = 3.5e-4 relative to be ties in float32, so a float32 model may
    pick another neighbour than float64 for some atoms: outputs then differ at ~1e-3.)"""
    model = small_model("none", crystals, preset="reference")
    y64 = predict(model, crystals)
    y32 = predict(model.float(), crystals).double()
    assert (y32 - y64).abs().max() < 1e-5 * y64.abs().max()


def test_training_step_and_gradients(crystals):
    """Gradients flow to every trainable parameter (the frozen statistics get none), and the
    layer's gradient with respect to its input matches finite differences."""
    torch.manual_seed(0)
    model = build_crystalformer("cpu_small", frame="max", num_targets=2).double().train()
    out = model(batch_of(crystals[:4]))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None and name.endswith("rho_stats")
    model.eval()
    b = batch_of(crystals[1:2])
    att, geometry = model.layers[0].attention, model.geometry(b)
    x = (torch.randn(b.pos.shape[0], att.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: att(x, geometry, model.frame, 0), (x,), atol=1e-7)


def test_lightweight_is_the_official_setting_and_the_coefficients_scale_the_encodings(crystals):
    """CrystalFramer's lightweight script: D = 16, value_pe_angle_wscale 1.0, value_pe_dist_coef
    1.5, value_pe_angle_coef 6.0 (fixed factors: the trainable count stays 878,081). With the
    values switched off (v_proj = 0) the layer output is out_proj(c_d D + c_a A): linear in the
    two coefficients."""
    c = build_crystalformer("lightweight", frame="max").config
    assert (c.angle_bases, c.angle_width_scale, c.distance_coef, c.angle_coef) == (16, 1.0, 1.5, 6.0)
    assert num_parameters(build_crystalformer("lightweight", frame="max")) == 878_081
    model = small_model("max", crystals[:2])
    b = batch_of(crystals[:2])
    att, geometry = model.layers[0].attention, model.geometry(b)
    x = torch.randn(b.pos.shape[0], att.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        att.v_proj.weight.zero_()
        att.v_proj.bias.zero_()
        att.out_proj.bias.zero_()

        def out(cd, ca):
            att.distance_coef, att.angle_coef = cd, ca
            return att(x, geometry, model.frame, 0)

        base, d2, a3 = out(1.0, 1.0), out(2.0, 1.0), out(1.0, 3.0)
        distance_part, angle_part = d2 - base, (a3 - base) / 2
        assert angle_part.abs().max() > 1e-6 and distance_part.abs().max() > 1e-6
        assert torch.allclose(out(1.5, 6.0), 1.5 * distance_part + 6.0 * angle_part, atol=1e-12)


def test_rho_statistics_first_batch_freezes_the_reference_way(crystals):
    """``rho_statistics="first_batch"``: the first training batch sets mean and variance and no
    later batch moves them (the reference); the default keeps running averages."""
    first, second = batch_of(crystals[:3]), batch_of(crystals[3:7])
    for mode, moves in (("first_batch", False), ("running", True)):
        torch.manual_seed(0)
        model = build_crystalformer("cpu_small", frame="none", rho_statistics=mode).double().train()
        with torch.no_grad():
            model(first)
            after_first = model.layers[0].attention.rho_stats[:2].clone()
            model(second)
        changed = not torch.equal(model.layers[0].attention.rho_stats[:2], after_first)
        assert changed is moves, mode
    with pytest.raises(Exception, match="rho_statistics"):
        build_crystalformer("cpu_small", frame="none", rho_statistics="sometimes")


def test_paper_presets_freeze_rho_statistics_like_the_reference_and_cpu_keeps_running():
    """The presets that reproduce the papers use the reference's first-batch statistics (measured
    better at `cpu` size, docs/crystalformer.md); `cpu` keeps running statistics, the setting every
    Crystalformer row of the frame study was trained with, and `cpu_first_batch_rho` is its twin."""
    from crystalframes.models.crystalformer import CRYSTALFORMER_PRESETS, crystalformer_config

    expected = {"cpu": "running", "cpu_small": "running", "cpu_lightweight_pe": "running", "cpu_first_batch_rho": "first_batch"}
    for name in CRYSTALFORMER_PRESETS:
        assert crystalformer_config(name, frame="none").rho_statistics == expected.get(name, "first_batch"), name
    assert {"reference", "lightweight", "mp_e_form", "jarvis_formation_energy"} <= set(CRYSTALFORMER_PRESETS)
