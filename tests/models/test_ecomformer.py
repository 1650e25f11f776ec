"""eComFormer with SPFrame and its frame baselines: the model contract (crystalframes.testing)
and the properties SPFrame (Hua & Lin) claims, on real crystals from ../shared/data.

Invariance tests run in float64 on "amplified" models: at initialisation the directional
(l = 1, 2) paths of the equivariant layers move the output by only ~1e-7, which would hide a
broken frame; scaling their weight networks by 10 makes a frame that is not invariant move the
output by ~1e-4 (see ``test_identity_global_frame_is_not_invariant``) while exact invariance
still gives ~1e-15.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from crystalframes.data.batch import collate
from crystalframes.data.graph import build_graph
from crystalframes.models import SpecError, build_model, num_parameters, parse_spec
from crystalframes.frames import frame_names
from crystalframes.models.ecomformer import PRESETS, EComFormer

FRAMES = frame_names()
from crystalframes.testing import (
    DEFAULT_TOLERANCES,
    invariance_errors,
    predict,
    random_rotation,
    rotated,
    supercell,
)

TOL64 = DEFAULT_TOLERANCES["float64"]  # 1e-9
SMALL = "cpu_small"
# Every variant that must be exactly SO(3)-invariant: the backbone alone, the equivariant local
# frame, and both SPFrame constructions with each real (equivariant) global frame.
INVARIANT_SPECS = [
    "ecomformer:none",
    "ecomformer:equivariant_gram_schmidt+qr",
    "ecomformer:spframe_quaternion+qr",
    "ecomformer:spframe_quaternion+polar",
    "ecomformer:spframe_quaternion+lattice_pca",
    "ecomformer:spframe_gram_schmidt+qr",
    "ecomformer:spframe_gram_schmidt+polar",
    "ecomformer:spframe_gram_schmidt+lattice_pca",
]
# Global frames that depend on the shape of the cell, so a 2x1x1 supercell changes them.
CELL_SHAPE_FRAMES = ("polar", "lattice_pca")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads stall at every
    parallel region whenever another process holds a core (measured 10-15x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_model(spec: str, dtype=torch.float64, amplify: float = 10.0, seed: int = 0, **overrides) -> EComFormer:
    torch.manual_seed(seed)
    model = build_model(f"{spec}@{SMALL}", **overrides).to(dtype)
    if amplify != 1.0:
        with torch.no_grad():
            for layer in model.layers:
                if hasattr(layer, "tp1"):
                    layer.tp1.fc[2].weight.mul_(amplify)
                    layer.tp2.fc[2].weight.mul_(amplify)
    return model.eval()


def space_group_number(crystal) -> int:
    import warnings

    import spglib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib's own error-handling notice
        text = spglib.get_spacegroup((crystal.lattice, crystal.frac_coords, crystal.atomic_numbers), symprec=1e-3)
    return int(re.search(r"\((\d+)\)", text).group(1))


def crystal_system(number: int) -> str:
    for bound, name in ((2, "triclinic"), (15, "monoclinic"), (74, "orthorhombic"), (142, "tetragonal"), (167, "trigonal"), (194, "hexagonal")):
        if number <= bound:
            return name
    return "cubic"


def pick(crystals, wanted: dict[str, int], max_atoms: int = 8) -> list:
    """The first crystals (<= max_atoms) of each crystal system, as many as ``wanted`` says."""
    left = dict(wanted)
    out = []
    for c in crystals:
        if not any(left.values()):
            break
        if c.num_atoms > max_atoms:
            continue
        system = crystal_system(space_group_number(c))
        if left.get(system, 0) > 0:
            left[system] -= 1
            out.append(c)
    return out


def rock_salt():
    """NaCl, conventional 8-atom cell, a = 5.64 A (as the ``nacl`` fixture, for module scope)."""
    from crystalframes.io import Crystal

    fcc = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return Crystal("NaCl", np.eye(3) * 5.64, [11] * 4 + [17] * 4, np.concatenate([fcc, fcc + [0.5, 0, 0]]))


@pytest.fixture(scope="module")
def test_crystals(jarvis_sample, mp_sample):
    """15 real crystals: 6 cubic (rock salt, perovskite...), 3 hexagonal, trigonal, tetragonal,
    orthorhombic, monoclinic and 2 triclinic, at most 8 atoms each."""
    chosen = [rock_salt()]
    chosen += pick(jarvis_sample, {"cubic": 3, "hexagonal": 2, "trigonal": 1, "tetragonal": 1, "orthorhombic": 1, "monoclinic": 1, "triclinic": 1})
    chosen += pick(mp_sample, {"cubic": 2, "hexagonal": 1, "triclinic": 1})
    systems = [crystal_system(space_group_number(c)) for c in chosen]
    assert systems.count("cubic") >= 4 and systems.count("hexagonal") >= 2 and systems.count("triclinic") >= 2
    return chosen


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def test_reference_parameter_count():
    """eComFormer (Yan et al., ICLR 2024; its reference code) has 5,583,809 parameters (attention layer 855,296,
    equivariant layer 2,862,272, each tensor product with its weight network 1,381,632)."""
    model = build_model("ecomformer:none@reference")
    assert model.spec == "ecomformer:none@reference"
    assert num_parameters(model) == 5_583_809
    kinds = model.config.layer_order
    assert kinds == ("att", "equi", "att", "att")
    sizes = [num_parameters(layer) for layer in model.layers]
    assert sizes == [855_296, 2_862_272, 855_296, 855_296]
    assert num_parameters(model.layers[1].tp1) == num_parameters(model.layers[1].tp2) == 1_381_632


def test_paper_preset_sizes():
    """Seed 000 Table 3 lists eComFormer at 4.9 M parameters on JARVIS formation energy: three
    blocks of (transformer, equivariant) layers at C = 128 give 4,867,009."""
    sizes = {frame: num_parameters(build_model(f"ecomformer:{frame}@jarvis_formation_energy")) for frame in FRAMES}
    print("JARVIS e_form preset parameters:", sizes)
    assert sizes["none"] == 4_867_009
    assert sizes["none"] < sizes["spframe_quaternion"] < sizes["equivariant_gram_schmidt"] <= sizes["spframe_gram_schmidt"]


# ---------------------------------------------------------------------------------------------
# Exactness of the fast paths
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ["none", "spframe_quaternion"])
def test_fused_tensor_products_match_e3nn(test_crystals, frame):
    """The fused tensor products and the distance de-duplication are exact rearrangements:
    outputs and gradients equal the literal e3nn computation up to float64 rounding (the
    intermediate features reach ~1e3, so the outputs agree to ~1e-11, not 1e-16)."""
    fast = small_model(f"ecomformer:{frame}", amplify=1.0)
    literal = build_model(f"ecomformer:{frame}@{SMALL}", tensor_product="e3nn", deduplicate=False).double().eval()
    literal.load_state_dict(fast.state_dict())
    batch = collate([build_graph(c, fast.graph_settings) for c in test_crystals[:6]], dtype=torch.float64)
    out_fast, out_literal = fast(batch), literal(batch)
    assert torch.allclose(out_fast, out_literal, rtol=0, atol=1e-9)
    out_fast.sum().backward()
    out_literal.sum().backward()
    scale = max(float(q.grad.abs().max()) for q in literal.parameters())
    for (name, p), q in zip(fast.named_parameters(), literal.parameters()):
        assert float((p.grad - q.grad).abs().max()) <= 1e-9 * scale, name


# ---------------------------------------------------------------------------------------------
# Invariance (model contract), float64, eval mode
# ---------------------------------------------------------------------------------------------


# invariance_report needs at least one supercell; (1, 1, 1) is the crystal itself, for tests
# that are not about supercells.
NO_SUPERCELL = ((1, 1, 1),)


def test_invariance_report_runs_the_checks_asked_for(test_crystals):
    """A subset of checks gives exactly those keys; batching the variants does not change the
    figures (batch sizes 1 and 32 agree); an unknown check is an error naming the choices."""
    from crystalframes.testing import invariance_report

    model = small_model("ecomformer:spframe_quaternion")
    crystals = test_crystals[:4]
    one = invariance_report(model, crystals, trials=1, checks=("rotation", "mirror"), batch_size=1)
    many = invariance_report(model, crystals, trials=1, checks=("rotation", "mirror"), batch_size=32)
    assert [set(r) for r in one] == [{"id", "notes", "rotation", "mirror"}] * 4  # notes: skipped trials
    for a, b in zip(one, many):
        assert a["rotation"] <= 1e-9 and b["rotation"] <= 1e-9
        # (a centrosymmetric crystal's mirror image is a rotated copy: its difference may be 0)
        assert a["mirror"] == pytest.approx(b["mirror"], rel=1e-6, abs=1e-12)
    assert max(r["mirror"] for r in one) > 1e-6  # the frames do break mirror symmetry here
    with pytest.raises(ValueError, match="unknown checks"):
        invariance_report(model, crystals, checks=("rotations",))


@pytest.mark.parametrize("spec", INVARIANT_SPECS)
def test_invariance(test_crystals, spec):
    """Rotation, translation, permutation, batch-vs-single and supercell invariance <= 1e-9.
    Supercells: 2x1x1 and 2x2x2, except that frames built from the cell shape (polar, lattice
    PCA) are only checked on 2x2x2 (see test_cell_shape_global_frames_change_with_supercells).

    A change of unit-cell basis (Niggli, shear) is invariant for the backbone alone; every
    frame that reads the lattice (the global frames; the fallback of degenerate atoms of the
    equivariant Gram-Schmidt frame) depends on the basis, so for those it is printed, not
    asserted (docs/models.md)."""
    model = small_model(spec)
    shape_frame = any(spec.endswith("+" + g) for g in CELL_SHAPE_FRAMES)
    cells = ((2, 2, 2),) if shape_frame else ((2, 1, 1), (2, 2, 2))
    errors = invariance_errors(model, test_crystals, trials=1, supercells=cells)
    print(spec, {k: f"{v:.1e}" for k, v in errors.items()})
    exact = ["rotation", "translation", "permutation", "batch", "supercell"]
    if spec == "ecomformer:none":
        exact.append("basis_change")
    for key in exact:
        assert errors[key] <= TOL64, (key, errors)


@pytest.mark.parametrize("spec", [s for s in INVARIANT_SPECS if s != "ecomformer:none"])
def test_frames_rotate_with_the_crystal(test_crystals, spec):
    """Every frame F_i is a rotation and is equivariant, F_i(QX) = F_i(X) Q^T, so the
    frame-transformed edge vectors r_ij F_i^T fed to the harmonics are invariant."""
    model = small_model(spec)
    rng = np.random.default_rng(1)
    for crystal in test_crystals[:8]:
        q = random_rotation(rng)
        frames = model.frames_of(collate([build_graph(crystal, model.graph_settings)], dtype=torch.float64))
        turned = model.frames_of(collate([build_graph(rotated(crystal, q), model.graph_settings)], dtype=torch.float64))
        qt = torch.from_numpy(q.T)
        for f, g in zip(frames, turned):
            eye = torch.eye(3, dtype=f.dtype).expand_as(f)
            assert torch.allclose(f @ f.transpose(-1, -2), eye, atol=1e-12)
            assert torch.allclose(torch.linalg.det(f), torch.ones(len(f), dtype=f.dtype), atol=1e-12)
            assert torch.allclose(g, f @ qt, atol=1e-9), crystal.id


def test_float32_rotation_invariance(test_crystals):
    """float32 runs the same code; errors stay at float32 rounding (tolerance 1e-4)."""
    model = small_model("ecomformer:spframe_quaternion+qr", dtype=torch.float32, amplify=1.0)
    errors = invariance_errors(model, test_crystals[:8], trials=1, supercells=NO_SUPERCELL)
    assert errors["rotation"] <= DEFAULT_TOLERANCES["float32"], errors


def test_large_supercell_has_no_atom_limit(nacl):
    """No limit on atoms per cell: a 6x6x6 rock-salt supercell (1,728 atoms) gives the same
    per-atom-averaged prediction as the 8-atom cell."""
    model = small_model("ecomformer:spframe_quaternion+qr")
    big = supercell(nacl, (6, 6, 6))
    assert big.num_atoms == 1728
    assert torch.allclose(predict(model, [big]), predict(model, [nacl]), rtol=0, atol=TOL64)


# ---------------------------------------------------------------------------------------------
# What the global frame does
# ---------------------------------------------------------------------------------------------


def test_identity_global_frame_is_not_invariant(test_crystals):
    """Seed 000 A.3 says F_global may be the identity "since eComFormer produces SO(3)-invariant
    outputs". It may not: with F_global = I the edge vectors are rotated by per-atom invariant
    frames R_i, and the second tensor product pairs h_j (built in atom j's frame) with Y(r_ij)
    in atom i's frame, so the output depends on the orientation unless all R_i are equal. The
    same weights with the QR global frame are invariant. Measured here: ~1e-4 vs ~1e-15."""
    with_identity = small_model("ecomformer:spframe_quaternion+identity")
    with_qr = small_model("ecomformer:spframe_quaternion+qr")
    with_qr.load_state_dict(with_identity.state_dict())
    broken = invariance_errors(with_identity, test_crystals, trials=1, supercells=NO_SUPERCELL)
    fixed = invariance_errors(with_qr, test_crystals, trials=1, supercells=NO_SUPERCELL)
    print(f"spframe_quaternion rotation error: identity global frame {broken['rotation']:.2e}, qr {fixed['rotation']:.2e}")
    assert broken["rotation"] > 1e-6  # measured ~1e-4 (seed 0): clearly not invariant
    assert fixed["rotation"] <= TOL64
    # everything that does not rotate the crystal is still exact with the identity frame
    for key in ("translation", "permutation", "batch"):
        assert broken[key] <= TOL64, (key, broken)


def _shape_frame_supercell_changes(model, crystals):
    """(largest change of the frames, largest change of the output) from cell to 2x1x1 supercell."""
    frame_change, output_change = 0.0, 0.0
    for crystal in crystals:
        big = supercell(crystal, (2, 1, 1))
        f = model.frames_of(collate([build_graph(crystal, model.graph_settings)], dtype=torch.float64))
        g = model.frames_of(collate([build_graph(big, model.graph_settings)], dtype=torch.float64))
        n = crystal.num_atoms
        frame_change = max(frame_change, max(float((b[:n] - a).abs().max()) for a, b in zip(f, g)))
        output_change = max(output_change, float((predict(model, [big]) - predict(model, [crystal])).abs().max()))
    return frame_change, output_change


@pytest.mark.parametrize("global_frame", ["qr", *CELL_SHAPE_FRAMES])
def test_cell_shape_global_frames_change_with_supercells(test_crystals, global_frame):
    """The QR frame of L^T = QR is unchanged by a diagonal supercell (columns scaled by
    positive factors); the polar and lattice-PCA frames depend on the cell's shape, so a 2x1x1
    supercell of a non-orthogonal cell changes them (and the SPFrame prediction). Measured and
    documented, not hidden: the model is invariant to 2x2x2 supercells with every frame."""
    model = small_model(f"ecomformer:spframe_quaternion+{global_frame}")
    oblique = [c for c in test_crystals if abs(np.dot(c.lattice[0], c.lattice[1])) > 1e-6 or abs(np.dot(c.lattice[0], c.lattice[2])) > 1e-6]
    assert len(oblique) >= 3
    frame_change, output_change = _shape_frame_supercell_changes(model, oblique)
    print(f"{global_frame}: 2x1x1 supercell changes frames by {frame_change:.2e}, outputs by {output_change:.2e}")
    if global_frame == "qr":
        assert frame_change <= 1e-12 and output_change <= TOL64
    else:
        assert frame_change > 1e-3


def test_symmetry_equivalent_atoms_share_the_invariant_local_frame(nacl):
    """SPFrame's point (Hua & Lin, section 3.2): F_INV,i is computed from invariant features, so
    symmetry-equivalent atoms get identical local frames (all Na of rock salt; all Cl)."""
    from crystalframes.frames import qr_frame

    model = small_model("ecomformer:spframe_quaternion+qr")
    batch = collate([build_graph(nacl, model.graph_settings)], dtype=torch.float64)
    f_global = qr_frame(batch.lattice)[0]
    for frames in model.frames_of(batch):
        local = frames @ f_global.T  # F_INV,i = F_i F_global^T
        na, cl = local[:4], local[4:]
        assert torch.allclose(na, na[:1].expand_as(na), atol=1e-12)
        assert torch.allclose(cl, cl[:1].expand_as(cl), atol=1e-12)
        assert not torch.allclose(na[0], cl[0], atol=1e-6)


def test_edge_groups_merge_exactly_the_edges_with_equal_inputs():
    """Pairs group the edges by (centre, neighbour), triples by (centre, neighbour, distance
    row); every edge's group carries its own atoms and row, and the group count is the number
    of distinct keys."""
    from crystalframes.nn import EdgeTable, MessageGraph

    torch.manual_seed(0)
    edge_index = torch.randint(0, 6, (2, 300))  # 6 atoms: many repeated pairs
    distances = torch.randint(0, 4, (300,)).double()  # 4 distinct distances
    graph = MessageGraph(edge_index, 6, torch.float64)
    table = EdgeTable.of_distances(distances)
    pairs, triples = graph.groups(None), graph.groups(table)
    assert pairs.centre.shape[0] == len({(int(a), int(b)) for a, b in edge_index.T})
    assert triples.centre.shape[0] == len({(int(a), int(b), float(d)) for (a, b), d in zip(edge_index.T, distances)})
    assert torch.equal(pairs.expand(pairs.centre), edge_index[0]) and torch.equal(pairs.expand(pairs.neighbour), edge_index[1])
    assert torch.equal(triples.expand(triples.centre), edge_index[0]) and torch.equal(triples.expand(triples.neighbour), edge_index[1])
    assert torch.equal(table.values[triples.expand(triples.row)], distances)
    assert graph.groups(table.map(lambda x: 2 * x)) is triples  # one grouping per forward pass
    literal = MessageGraph(edge_index, 6, torch.float64, group_edges=False).groups(table)
    assert literal.index is None and literal.centre.shape[0] == 300


@pytest.mark.parametrize("train", [False, True])
def test_grouped_attention_equals_per_edge_attention(train):
    """The backbone's attention layer and the frame block's message give the same outputs
    and gradients with and without edge grouping, also in training mode (BatchNorm statistics
    over the edges)."""
    from crystalframes.frames.learned import InvariantMessage
    from crystalframes.nn import EdgeTable, MessageGraph, NodeTransformerLayer

    torch.manual_seed(0)
    edge_index = torch.randint(0, 10, (2, 400))
    table = EdgeTable.of_distances(torch.randint(0, 7, (400,)).double())
    table = table.map(lambda d: torch.sin(d.unsqueeze(-1) * torch.arange(1, 17, dtype=d.dtype)))
    f = torch.randn(10, 16, dtype=torch.float64)
    for layer in (NodeTransformerLayer(16).double(), InvariantMessage(16).double()):
        layer.train(train)
        outs = []
        for group_edges in (True, False):
            layer.zero_grad()
            out = layer(f, table, MessageGraph(edge_index, 10, torch.float64, group_edges=group_edges))
            out.square().sum().backward()
            outs.append((out.detach(), [p.grad.clone() for p in layer.parameters()]))
        (grouped, g1), (literal, g2) = outs
        assert torch.allclose(grouped, literal, rtol=0, atol=1e-12)
        for a, b in zip(g1, g2):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_quaternion_head_positive_by_default():
    """The seed's softplus head keeps all four quaternion components positive (a restricted
    set of rotations); ``positive=False`` is the unrestricted option."""
    from crystalframes.frames.learned import QuaternionHead
    from crystalframes.nn import EdgeTable, MessageGraph

    torch.manual_seed(0)
    edge_index = torch.randint(0, 20, (2, 200))
    graph = MessageGraph(edge_index, 20, torch.float32)
    f, edge = torch.randn(20, 16), EdgeTable(torch.randn(200, 16))
    for positive in (True, False):
        block = QuaternionHead(16, positive=positive).eval()
        with torch.no_grad():
            q = block.quaternions(f, edge, graph)
            rot = block(f, edge, graph)
        assert bool((q > 0).all()) is positive
        assert torch.allclose(rot @ rot.transpose(-1, -2), torch.eye(3).expand(20, 3, 3), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Training step on every structure
# ---------------------------------------------------------------------------------------------


def _training_step_is_finite(crystals, frame: str, batch_size: int = 64):
    torch.manual_seed(0)
    model = build_model(f"ecomformer:{frame}@{SMALL}", num_targets=1)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for start in range(0, len(crystals), batch_size):
        chunk = crystals[start : start + batch_size]
        batch = collate(chunk)
        out = model(batch)
        assert torch.isfinite(out).all(), (frame, [c.id for c in chunk])
        loss = (out - 1.0).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is None or torch.isfinite(p.grad).all(), (frame, name, [c.id for c in chunk])
        optimiser.step()


@pytest.fixture(scope="module")
def all_graphs(jarvis_sample, mp_sample):
    settings = build_model(f"ecomformer:none@{SMALL}").graph_settings
    return [build_graph(c, settings) for c in jarvis_sample], [build_graph(c, settings) for c in mp_sample]


@pytest.mark.parametrize("frame", FRAMES)
def test_training_step_finite_jarvis_and_mp_stride(all_graphs, frame):
    """One training step (float32, train mode, Adam) per batch of 64: finite outputs and
    gradients on all 1,325 JARVIS structures and every 4th MP structure (full MP: slow test)."""
    jarvis, mp = all_graphs
    _training_step_is_finite(jarvis + mp[::4], frame)


@pytest.mark.slow
@pytest.mark.parametrize("frame", FRAMES)
def test_training_step_finite_every_structure(all_graphs, frame):
    jarvis, mp = all_graphs
    assert len(jarvis) == 1325 and len(mp) == 5955
    _training_step_is_finite(jarvis + mp, frame)


# ---------------------------------------------------------------------------------------------
# Specs, presets, features, portability
# ---------------------------------------------------------------------------------------------


def test_spec_parsing_and_defaults():
    assert str(parse_spec("ecomformer")) == "ecomformer:spframe_quaternion+qr@jarvis_formation_energy"
    assert str(parse_spec("ecomformer:none@reference")) == "ecomformer:none@reference"
    assert str(parse_spec("ecomformer:spframe_quaternion+polar@mp_gap")) == "ecomformer:spframe_quaternion+polar@mp_gap"
    assert parse_spec("ecomformer:equivariant_gram_schmidt@cpu_small").global_frame == "qr"
    for bad, message in [
        ("ecomformer:none+qr@reference", "uses no global frame"),
        ("ecomformer:quaternions", "unknown frame"),
        ("ecomformer:spframe_quaternion+pca", "unknown global frame"),
        ("ecomformer:none@jarvis", "unknown preset"),
        ("transformer:none", "unknown backbone"),
        ("ecomformer none", "bad model spec"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_spec(bad)


def test_overrides():
    model = build_model("ecomformer:spframe_quaternion+polar@cpu_small", num_targets=3, hidden=16, layer_order="att-equi")
    assert model.config.global_frame == "polar" and model.config.hidden == 16
    assert model.config.layer_order == ("att", "equi") and len(model.frame.heads) == 1
    batch = collate([build_graph(_cubic(), model.graph_settings)])
    assert model.eval()(batch).shape == (1, 3)
    with pytest.raises(SpecError, match="unknown ecomformer model option .hiden. .did you mean .hidden"):
        build_model("ecomformer:none@cpu_small", hiden=3)
    with pytest.raises(ValueError, match="part of the spec"):
        build_model("ecomformer:none@cpu_small", frame="spframe_quaternion")


def _cubic():
    from crystalframes.io import Crystal

    return Crystal("Po", np.eye(3) * 3.35, [84], np.zeros((1, 3)))


def test_presets_hold_the_paper_settings():
    """Seed 000 A.5 sizes and training settings, as plain data."""
    from crystalframes.train.recipes import preset_task, preset_training

    expect = {
        "jarvis_formation_energy": (128, 3, 64, "onecycle"),
        "jarvis_total_energy": (128, 2, 64, "onecycle"),
        "jarvis_optb88vdw_bandgap": (128, 3, 64, "polynomial"),
        "jarvis_mbj_bandgap": (128, 2, 64, "polynomial"),
        "jarvis_ehull": (128, 2, 64, "onecycle"),
        "mp_e_form": (196, 2, 32, "onecycle"),
        "mp_gap": (128, 3, 32, "onecycle"),
        "mp_bulk": (512, 4, 64, "onecycle"),
        "mp_shear": (128, 4, 64, "onecycle"),
    }
    for name, (hidden, blocks, batch_size, scheduler) in expect.items():
        p, training = PRESETS[name], preset_training(f"ecomformer@{name}")
        assert p.model["hidden"] == hidden and p.model["layer_order"] == ("att", "equi") * blocks
        assert training["batch_size"] == batch_size and training["scheduler"]["name"] == scheduler
        assert training["loss"] == ("mse" if name == "mp_shear" else "l1")
        assert preset_task(f"ecomformer@{name}")["target"]
    assert preset_training("ecomformer@jarvis_optb88vdw_bandgap")["epochs"] == 800
    assert preset_training("ecomformer@jarvis_mbj_bandgap")["lr"] == 3e-4


def test_atom_features(nacl):
    from crystalframes.nn import CGCNN_FEATURE_DIM, AtomFeatureTable, cgcnn_table

    table = cgcnn_table()
    assert table.shape == (101, CGCNN_FEATURE_DIM) and np.isnan(table[0]).all()
    assert set(np.unique(table[1:])) == {0.0, 1.0}
    features = AtomFeatureTable()(torch.tensor([11, 17]))
    assert features.shape == (2, 92) and not torch.equal(features[0], features[1])
    with pytest.raises(ValueError, match="Md"):
        AtomFeatureTable()(torch.tensor([11, 101]))


def test_atom_features_check_without_a_counted_read_and_never_fail_on_a_device():
    """On the CPU the check reads the atomic numbers with NumPy (no device wait, none counted); on
    another device (meta here: no values) the lookup of an unsupported element cannot fail: its
    row is NaN (crystalframes.nn.atom_features says why)."""
    from crystalframes.nn import AtomFeatureTable
    from crystalframes.profiling import StepCounter

    table = AtomFeatureTable()
    with StepCounter() as count:
        table(torch.tensor([11, 17, 8]))
    assert count.syncs == 0, count.where
    meta = AtomFeatureTable().to("meta")
    assert meta(torch.tensor([11, 0, 101, -3], device="meta")).shape == (4, 92)
    if torch.cuda.is_available():
        rows = AtomFeatureTable().cuda()(torch.tensor([11, 0, 101], device="cuda")).cpu()
        assert torch.isfinite(rows[0]).all() and torch.isnan(rows[1:]).all()


def test_no_cuda_specific_code():
    """CPU and CUDA from the same code: no .cuda() calls, no CUDA-only or scatter packages."""
    root = Path(__file__).resolve().parents[2] / "src" / "crystalframes"
    for path in [root / "models" / "ecomformer.py", *sorted((root / "nn").glob("*.py"))]:
        text = path.read_text()
        for pattern in (".cuda(", "torch_scatter", "torch_sparse", "cupy"):
            assert pattern not in text, (path.name, pattern)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(test_crystals):
    model = small_model("ecomformer:spframe_quaternion+qr", amplify=1.0)
    batch = collate([build_graph(c, model.graph_settings) for c in test_crystals], dtype=torch.float64)
    with torch.no_grad():
        cpu = model(batch)
        gpu = model.to("cuda")(batch.to("cuda")).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-9)


def test_spframe_with_a_constant_local_frame_is_plain_ecomformer(nacl_and_skewed):
    """SPFrame with every invariant local frame the identity (F_i = F_global for all atoms)
    computes exactly plain eComFormer with the same weights (float64, <= 1e-12): the frame layer
    adds nothing but the frames. Parameters drawn afresh so every tensor-product path carries
    signal (crystalframes.testing.randomise_parameters)."""
    from crystalframes.testing import randomise_parameters

    torch.manual_seed(0)
    spframe = randomise_parameters(build_model("ecomformer:spframe_quaternion+polar@cpu_small")).double().eval()
    plain = build_model("ecomformer:none@cpu_small").double().eval()
    missing, unexpected = plain.load_state_dict(spframe.state_dict(), strict=False)
    assert not missing and all(k.startswith("frame.") for k in unexpected)
    batch = collate([build_graph(c, plain.graph_settings) for c in nacl_and_skewed], dtype=torch.float64)
    with torch.no_grad():
        learned = (spframe(batch) - plain(batch)).abs().max().item()
        for head in spframe.frame.heads:  # a constant local frame: the identity for every atom
            head.forward = lambda f, *args, **kwargs: torch.eye(3, dtype=f.dtype).expand(f.shape[0], 3, 3)
        constant = (spframe(batch) - plain(batch)).abs().max().item()
    assert constant <= 1e-12
    # the negative control: the learned local frames do change the output, if weakly (2.5e-7
    # here: the l > 0 features they rotate are sums over nearly isotropic k-NN neighbourhoods)
    assert learned > 1e3 * 1e-12
