"""Tensor read-outs (issue 27): index symmetries built in, equivariance under SO(3) and O(3) per
read-out and frame, and what exact O(3) equivariance implies (Neumann's principle) where frames
cannot give it. float64 on real Materials Project crystals of the embedded demo set (cubic,
hexagonal, lower symmetry) and random triclinic cells; relative errors against the output's
largest entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crystalframes.data.batch import collate
from crystalframes.data.graph import build_graph
from crystalframes.models.specs import build_model
from crystalframes.models.tensor_heads import TensorModel
from crystalframes.io.tensors import rotate
from crystalframes.nn.cartesian import DIELECTRIC, ELASTIC, PIEZOELECTRIC, TENSOR_KINDS, into_frame, out_of_frame
from crystalframes.testing import (basis_changed, demo_crystals, mirrored, random_crystals, random_rotation, randomise_parameters,
                                   rotated, supercell)

EXACT = 1e-12  # float64: the outputs below are exact to ~1e-14
KINDS = (DIELECTRIC, PIEZOELECTRIC, ELASTIC)


@pytest.fixture(scope="module")
def crystals():
    return demo_crystals(2, 6) + random_crystals(3, seed=1)


def _model(spec, kind, readout, frame=None, seed=0):
    model = TensorModel(build_model(spec, num_targets=1), kind, readout, **({"frame": frame} if frame else {})).double()
    return randomise_parameters(model, seed).eval()


def _predict(model, crystals):
    batch = collate([build_graph(c, model.backbone.graph_settings) for c in crystals], dtype=torch.float64)
    with torch.no_grad():
        return model(batch)


def _relative(a, b):
    return float((a - b).abs().amax() / b.abs().amax())


# -- the tensors themselves --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_free_components_give_tensors_with_the_index_symmetries(kind):
    free = torch.randn(5, kind.num_free, dtype=torch.float64)
    t = kind.from_free(free)
    assert t.shape == (5, *kind.shape) and kind.num_free == {2: 6, 3: 18, 4: 21}[kind.rank]
    assert torch.equal(kind.to_free(t), free) or torch.allclose(kind.to_free(t), free, atol=1e-15)
    if kind.rank == 2:
        assert torch.equal(t, t.transpose(-1, -2))
    if kind.rank == 3:
        assert torch.equal(t, t.transpose(-1, -2))
    if kind.rank == 4:
        for perm in ((1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)):
            assert torch.equal(t, t.permute(0, *(p + 1 for p in perm)))
    # every free component appears: no two free components are tied together
    assert torch.linalg.matrix_rank(torch.stack([kind.from_free(e).flatten() for e in torch.eye(kind.num_free, dtype=torch.float64)])) == kind.num_free


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_rotation_is_a_group_action_and_frames_invert(kind):
    rng = np.random.default_rng(0)
    a, b = (torch.tensor(random_rotation(rng)) for _ in range(2))
    t = kind.from_free(torch.randn(kind.num_free, dtype=torch.float64))
    r = kind.rank
    assert torch.allclose(rotate(rotate(t, a, r), b, r), rotate(t, b @ a, r), atol=1e-13)
    assert torch.allclose(out_of_frame(into_frame(t, a, r), a, r), t, atol=1e-13)
    # a rotated tensor keeps its symmetries
    assert torch.allclose(kind.from_free(kind.to_free(rotate(t, a, r))), rotate(t, a, r), atol=1e-13)
    # a polar tensor under inversion: (-1)^rank
    assert torch.allclose(rotate(t, -torch.eye(3, dtype=torch.float64), r), (-1) ** r * t)


def test_the_irreps_of_each_kind_span_its_symmetric_tensors():
    from crystalframes.models.tensor_heads import _change_of_basis

    for kind in KINDS:
        irreps, basis = _change_of_basis(kind)
        assert basis.shape == (kind.num_free, *kind.shape)
        flat = basis.reshape(kind.num_free, -1)
        # orthonormal and inside the kind's symmetric tensors
        assert torch.allclose(flat @ flat.T, torch.eye(kind.num_free, dtype=torch.float64) * (flat @ flat.T).diagonal(), atol=1e-12)
        assert torch.allclose(kind.from_free(kind.to_free(basis)), basis, atol=1e-12)
        assert irreps.replace(" ", "") == {"dielectric": "1x0e+1x2e", "piezoelectric": "2x1o+1x2o+1x3o",
                                           "elastic": "2x0e+2x2e+1x4e"}[kind.name]


# -- equivariance, per read-out ------------------------------------------------------------------------

ALL, EVEN, NONE = (2, 3, 4), (2, 4), ()
# (spec, read-out, global frame, the ranks for which it is O(3)-equivariant)
READOUTS = [
    ("schnet:none@cpu_small", "global", "polar_o3", ALL),
    ("schnet:none@cpu_small", "global", "qr_o3", ALL),
    ("schnet:none@cpu_small", "global", "qr", NONE),
    # F(L Q^T) = -F(L) Q^T for improper Q: right for even ranks, a sign off for odd ones
    ("schnet:none@cpu_small", "global", "lattice_vector", EVEN),
    ("schnet:static@cpu_small", "local", None, NONE),
    ("ecomformer:spframe_quaternion@cpu_small", "local", None, NONE),
    ("ecomformer:none@cpu_small", "irreps", None, ALL),
    ("schnet:none@cpu_small", "irreps", None, ALL),
]


@pytest.mark.parametrize("spec,readout,frame,o3_ranks", READOUTS, ids=lambda x: str(x))
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_tensor_outputs_rotate_with_the_crystal(spec, readout, frame, o3_ranks, kind, crystals):
    """T(QS) = Q^(x n) T(S) for random proper Q; for improper Q (a rotation times a mirror) only
    where the read-out is O(3)-equivariant, and visibly not otherwise (a negative control)."""
    model = _model(spec, kind, readout, frame)
    t = _predict(model, crystals)
    assert t.shape == (len(crystals), *kind.shape) and torch.isfinite(t).all()
    rng = np.random.default_rng(1)
    for _ in range(2):
        q = random_rotation(rng)
        moved = _predict(model, [rotated(c, q) for c in crystals])
        assert _relative(moved, rotate(t, torch.tensor(q), kind.rank)) < EXACT
    m = np.diag([-1.0, 1.0, 1.0]) @ random_rotation(rng)
    improper = _relative(_predict(model, [rotated(c, m) for c in crystals]), rotate(t, torch.tensor(m), kind.rank))
    if kind.rank in o3_ranks:
        assert improper < EXACT
    else:
        assert improper > 1e-3


def test_read_outs_are_refused_where_the_backbone_lacks_what_they_need():
    with pytest.raises(ValueError, match="per-atom frame"):
        TensorModel(build_model("schnet:none@cpu_small", num_targets=1), DIELECTRIC, "local")
    with pytest.raises(ValueError, match="k-NN graph"):
        TensorModel(build_model("crystalformer:none@cpu_small", num_targets=1), DIELECTRIC, "irreps")
    with pytest.raises(ValueError, match="unknown global frame"):
        TensorModel(build_model("schnet:none@cpu_small", num_targets=1), DIELECTRIC, "global", frame="nope")


# -- what exact O(3) equivariance implies --------------------------------------------------------------


def _point_group(crystal):
    from crystalframes.analysis.symmetry import symmetry_dataset

    return symmetry_dataset(crystal, 1e-3)


def test_an_o3_equivariant_read_out_obeys_neumanns_principle_and_a_frame_does_not(crystals):
    """The irreps read-out predicts a zero piezoelectric tensor for every centrosymmetric crystal
    and an isotropic rank-2 tensor for every cubic one (to rounding): f(gS) = g f(S) with gS = S.
    A frame cannot be equivariant at such a structure (its axes would have to be their own
    images), so the O(3) global-frame read-out gives neither."""
    centro = [c for c in crystals if any(np.array_equal(w, -np.eye(3)) for w in _point_group(c).rotations)]
    cubic = [c for c in crystals if _point_group(c).number >= 195]
    assert centro and cubic  # the demo set has both
    for readout, frame, exact in (("irreps", None, True), ("global", "polar_o3", False)):
        spec = "ecomformer:none@cpu_small" if readout == "irreps" else "schnet:none@cpu_small"
        piezo = _predict(_model(spec, PIEZOELECTRIC, readout, frame), centro)
        scale = _predict(_model(spec, PIEZOELECTRIC, readout, frame), crystals).abs().amax()
        eps = _predict(_model(spec, DIELECTRIC, readout, frame), cubic)
        iso = eps.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * torch.eye(3, dtype=torch.float64)
        anisotropy = float((eps - iso).abs().amax() / eps.abs().amax())
        if exact:
            assert float(piezo.abs().amax() / scale) < EXACT and anisotropy < EXACT
        else:
            assert float(piezo.abs().amax() / scale) > 1e-3 and anisotropy > 1e-3


def test_the_irreps_read_out_does_not_depend_on_the_cell(crystals):
    """Supercells and other lattice bases of the same crystal: the same tensor (the k-NN graph
    of every atom and the mean over atoms do not change). The O(3) polar frame follows the basis
    (a declared dependence, as for invariant outputs)."""
    sample = crystals[:4]
    model = _model("ecomformer:none@cpu_small", ELASTIC, "irreps")
    t = _predict(model, sample)
    assert _relative(_predict(model, [supercell(c, (2, 1, 1)) for c in sample]), t) < EXACT
    shear = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    assert _relative(_predict(model, [basis_changed(c, shear) for c in sample]), t) < EXACT
    polar = _model("schnet:none@cpu_small", ELASTIC, "global", "polar_o3")
    assert _relative(_predict(polar, [basis_changed(c, shear) for c in sample]), _predict(polar, sample)) > 1e-3


def test_mirror_images_of_the_same_crystal_get_mirrored_tensors(crystals):
    """The mirror x -> -x is an improper transformation: an O(3) read-out maps the tensor by
    diag(-1, 1, 1) in every index."""
    model = _model("schnet:none@cpu_small", PIEZOELECTRIC, "global", "polar_o3")
    t = _predict(model, crystals)
    m = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    assert _relative(_predict(model, [mirrored(c) for c in crystals]), rotate(t, m, 3)) < EXACT


@pytest.mark.parametrize("readout,spec", [("global", "schnet:none@cpu_small"), ("local", "schnet:static@cpu_small"),
                                          ("irreps", "schnet:none@cpu_small")])
def test_every_read_out_trains_in_float32(readout, spec, crystals):
    """Finite, non-zero gradients for every parameter of the read-out, in the float32 a training runs."""
    model = TensorModel(build_model(spec, num_targets=1), TENSOR_KINDS["elastic"], readout).float().train()
    batch = collate([build_graph(c, model.backbone.graph_settings) for c in crystals], dtype=torch.float32)
    model(batch).square().mean().backward()
    for name, p in model.head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


# -- crystalframes check on a tensor model ------------------------------------------------------------


@pytest.fixture(scope="module")
def structures_file(tmp_path_factory, crystals):
    """The demo crystals (cubic, hexagonal, lower symmetry) and random cells as one JSONL file."""
    import json

    from pymatgen.core import Element

    path = tmp_path_factory.mktemp("check") / "structures.jsonl"
    with open(path, "w") as fh:
        for c in crystals:
            species = [Element.from_Z(int(z)).symbol for z in c.atomic_numbers]
            fh.write(json.dumps({"id": c.id, "lattice": np.asarray(c.lattice).tolist(), "species": species,
                                 "frac_coords": np.asarray(c.frac_coords).tolist()}) + "\n")
    return path


@pytest.mark.parametrize("spec,readout,frame,o3", [("ecomformer:none@cpu_small", "irreps", None, True),
                                                   ("schnet:none@cpu_small", "global", "polar_o3", True),
                                                   ("schnet:static@cpu_small", "local", None, False)])
def test_check_tests_a_tensor_model_for_equivariance(spec, readout, frame, o3, tmp_path, structures_file):
    """`crystalframes check MODEL.pt`: rotations and the batch pass for every read-out; reflections
    pass for the O(3) read-outs and are a declared dependence (not a failure) for an SO(3) one;
    Neumann's principle passes for the irreps read-out and is declared for the frame read-outs."""
    import json

    from typer.testing import CliRunner

    from crystalframes.api import save_model_file
    from crystalframes.cli import app
    from crystalframes.data.normalise import TargetNormaliser

    model = _model(spec, PIEZOELECTRIC, readout, frame)
    norm = TargetNormaliser().fit(np.array([[-1.0], [1.0]]), names=["piezoelectric_tensor"])
    path = save_model_file(tmp_path / "model.pt", model, spec, {}, norm, ["piezoelectric_tensor"], ["C/m^2"])
    result = CliRunner().invoke(app, ["check", str(path), str(structures_file), "--json", "--trials", "1"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    overall, declared = out["overall"], out["declared_dependences"]
    assert out["tensor"]["o3_equivariant"] is o3 and "max_neumann_error" in overall
    for key in ("max_rotation_error", "max_translation_error", "max_permutation_error", "max_batch_error"):
        assert overall[key] < 1e-9, (key, overall[key])
    if o3:
        assert overall["max_reflection_error"] < 1e-9 and "reflection" not in declared
    else:
        assert overall["max_reflection_error"] > 1e-3 and "reflection" in declared
    if readout == "irreps":
        assert overall["max_neumann_error"] < 1e-9 and "neumann" not in declared
        assert overall["max_supercell_error"] < 1e-9 and overall["max_basis_change_error"] < 1e-9
    else:
        assert overall["max_neumann_error"] > 1e-3 and "neumann" in declared
    assert out["failed"] == []
