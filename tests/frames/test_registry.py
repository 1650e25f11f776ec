"""The frame layer: one registry, one protocol; a new frame is one class and runs on every
backbone without touching them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crystalframes.frames import FRAMES, Frame, build_frame, declared_dependences, frame_names, register_frame, resolve_frame
from crystalframes.models import BACKBONES, build_model
from crystalframes.testing import predict, random_rotation, rotated


@pytest.fixture
def nearest_neighbour_frame():
    """A frame written as a user would: e1 towards the nearest neighbour, e2 from the lattice's
    QR frame (equivariant, not very clever). Registered for the test only."""
    from crystalframes.frames import gram_schmidt

    @register_frame
    class Nearest(Frame):
        name = "test_nearest"
        summary = "test: nearest neighbour + QR axis"
        needs = frozenset({"neighbours"})
        uses_tie_frame = True

        def forward(self, layer, setup, hood):
            vec, centre, _ = hood.entries()
            d = vec.norm(dim=-1)
            d = torch.where(d > 1e-6, d, torch.full_like(d, float("inf")))
            score = -d + 1e-9 * torch.arange(len(d), dtype=d.dtype)  # deterministic among equals
            best = torch.full((hood.num_centres,), -float("inf"), dtype=d.dtype).scatter_reduce(0, centre, score, "amax")
            pick = torch.zeros(hood.num_centres, 3, dtype=vec.dtype).index_add_(0, centre, vec * (score == best[centre]).unsqueeze(-1))
            tie = setup.tie_frames.index_select(0, hood.centres)
            return gram_schmidt(pick, tie[:, 1], fallback=tie)

    yield "test_nearest"
    del FRAMES["test_nearest"]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_a_new_frame_is_one_class_and_runs_on_every_backbone(backbone, nearest_neighbour_frame, nacl_and_skewed):
    assert nearest_neighbour_frame in frame_names()
    torch.manual_seed(0)
    model = build_model(f"{backbone}:{nearest_neighbour_frame}@cpu_small").double().eval()
    assert model.spec == f"{backbone}:{nearest_neighbour_frame}@cpu_small"
    y0 = predict(model, nacl_and_skewed)
    assert torch.isfinite(y0).all()
    rotation = random_rotation(np.random.default_rng(3))
    assert (predict(model, [rotated(c, rotation) for c in nacl_and_skewed]) - y0).abs().max() <= 1e-9


def test_registry_rejects_taken_names_and_unknown_needs():
    class Again(Frame):
        name = "max"

    class Wants(Frame):
        name = "test_wants"
        needs = frozenset({"telepathy"})

    with pytest.raises(ValueError, match="taken"):
        register_frame(Again)
    with pytest.raises(ValueError, match="telepathy"):
        register_frame(Wants)
    assert "test_wants" not in FRAMES


def test_old_names_resolve_and_cannot_take_another_global_frame():
    assert resolve_frame("pca") == ("global", "positions_pca")
    assert resolve_frame("lattice") == ("global", "lattice_vector")
    assert resolve_frame("static_local") == ("static", None)
    assert resolve_frame("spframe_quaternion", "polar") == ("spframe_quaternion", "polar")
    with pytest.raises(ValueError, match="write that instead"):
        resolve_frame("pca", "qr")
    with pytest.raises(ValueError, match="unknown frame"):
        build_frame("no_such_frame")


def test_declarations_combine_the_frame_and_its_global_frame():
    assert declared_dependences("none") == {}
    assert set(declared_dependences("global", "identity")) == {"rotation"}
    assert set(declared_dependences("spframe_quaternion", "polar")) == {"supercell", "basis_change"}
    assert set(declared_dependences("spframe_gram_schmidt", "identity")) == {"rotation", "basis_change"}
    assert set(declared_dependences("max")) == {"basis_change"}
    for name in frame_names():
        cls = FRAMES[name]
        assert cls.summary and set(cls.needs) <= {"lattice", "neighbours", "attention", "features"}


def test_an_unknown_frame_option_is_an_error_not_ignored():
    """Backbones pass their frame options to whatever frame they run, so a frame accepts the
    options any registered frame declares and refuses a misspelt one, naming the known ones."""
    from crystalframes.frames import build_frame
    from crystalframes.frames.registry import frame_options

    assert frame_options() == {"angle_bins", "positive_quaternion"}
    build_frame("max", angle_bins=4, positive_quaternion=False)  # options of other frames: accepted
    with pytest.raises(TypeError, match=r"unknown frame option\(s\) \['angle_binz'\].*angle_bins"):
        build_frame("spframe_gram_schmidt", dim=8, edge_dim=8, angle_binz=4)


# The typed views a backbone hands its frame: each frame gets the view its needs call for.
VIEWS = {
    "ecomformer:static@cpu_small": "EdgeNeighbourhood",
    "ecomformer:max@cpu_small": "EdgeNeighbourhood",
    "ecomformer:spframe_quaternion@cpu_small": "GraphNeighbourhood",
    "schnet:global+polar@cpu_small": "Neighbourhood",
    "crystalformer:static@cpu_small": "RowNeighbourhood",
    "crystalformer:spframe_gram_schmidt@cpu_small": "GraphNeighbourhood",
    "crystalformer:global+qr@cpu_small": "Neighbourhood",
}


@pytest.mark.parametrize("spec", sorted(VIEWS))
def test_each_backbone_hands_a_frame_the_view_its_needs_call_for(spec, nacl_and_skewed):
    model = build_model(spec).double().eval()
    seen = set()
    handle = model.frame.register_forward_hook(lambda module, args, out: seen.add(type(args[2]).__name__))
    try:
        predict(model, nacl_and_skewed)
    finally:
        handle.remove()
    assert seen == {VIEWS[spec]}


def test_a_view_a_frame_cannot_read_is_a_type_error_naming_both():
    from crystalframes.frames import EdgeNeighbourhood, Neighbourhood
    from crystalframes.frames.registry import FrameSetup

    setup = FrameSetup(lattice=None, batch=None, tie_frames=torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    with pytest.raises(TypeError, match="'static'.*EntryNeighbourhood.*handed it a Neighbourhood"):
        build_frame("static")(0, setup, Neighbourhood(torch.arange(2)))
    edges = EdgeNeighbourhood(torch.arange(2), vec=torch.ones(3, 3, dtype=torch.float64), centre=torch.tensor([0, 1, 1]))
    with pytest.raises(TypeError, match="GraphNeighbourhood.*handed it a EdgeNeighbourhood"):
        build_frame("spframe_quaternion", dim=4, edge_dim=4)(0, setup, edges)


def test_frames_needing_entries_and_features_get_both_on_a_graph_backbone(nacl_and_skewed):
    """A frame may need neighbours and features at once; eComFormer's provider then hands it the
    view that is both (registered for the test only)."""
    from crystalframes.frames import EdgeGraphNeighbourhood
    from crystalframes.frames.registry import GlobalFrame

    @register_frame
    class Both(GlobalFrame):
        name = "test_both_views"
        needs = frozenset({"lattice", "neighbours", "features"})

        def forward(self, layer, setup, hood):
            assert isinstance(hood, EdgeGraphNeighbourhood)
            vec, centre, _ = hood.entries()
            assert vec.shape[0] == centre.shape[0] == hood.graph.centre.shape[0] == hood.edge_directions.shape[0]
            assert hood.features.shape[0] == hood.num_centres
            return super().forward(layer, setup, hood)

    try:
        assert torch.isfinite(predict(build_model("ecomformer:test_both_views@cpu_small").double(), nacl_and_skewed)).all()
    finally:
        del FRAMES["test_both_views"]


def test_the_fallback_sites_are_decided_once_per_forward_by_the_first_layer():
    """The equivariant Gram-Schmidt frame keeps its first layer's fallback decision in state of
    its own setup (one per forward pass); the setup every frame shares is frozen."""
    import dataclasses

    from crystalframes.frames.learned import GramSchmidtSetup

    frame = build_frame("equivariant_gram_schmidt", dim=4, edge_dim=4, layers=2)
    lattice = torch.eye(3, dtype=torch.float64).unsqueeze(0) * 3
    frac, batch = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    setup, other = frame.setup(lattice, frac, batch), frame.setup(lattice, frac, batch)
    assert isinstance(setup, GramSchmidtSetup) and setup.fallback_sites is not other.fallback_sites
    with pytest.raises(dataclasses.FrozenInstanceError):
        setup.global_frames = None
    sites = setup.fallback_sites
    with pytest.raises(RuntimeError, match="before layer 0"):
        sites.decided(1)
    first = (torch.tensor([[True], [False]]), torch.tensor([[False], [False]]))
    sites.decide(0, first)
    sites.decide(1, (torch.ones(2, 1, dtype=torch.bool),) * 2)  # a later layer's masks are not kept
    assert sites.decided(0) is None and sites.decided(1) is first
