"""Every frame of SPFrame (Hua & Lin) and CrystalFramer (Ito, Taniai et al., ICLR 2025): the
frame layer (:mod:`~crystalframes.frames.registry`: one protocol, one registry of frames by
name, used by every backbone) and the constructions it is made of.

A frame is a rotation F (orthonormal, det = +1) whose rows are the axes. An equivariant frame
satisfies F(QX, QL) = F(X, L) Q^T for every rotation Q, so x F^T is invariant; an invariant
frame does not change at all. Models compose these functions and never reimplement them.

===========================  ===========  ====================================================================
function                     kind         source
===========================  ===========  ====================================================================
qr_frame                     global, eq.  Hua & Lin, SPFrame, A.1 (QR of the lattice)
polar_frame                  global, eq.  Hua & Lin, SPFrame, A.1 (polar decomposition)
lattice_pca_frame            global, eq.  Hua & Lin, SPFrame, A.1, Algorithm 2
positions_pca_frame          global, eq.  Ito, Taniai et al., ICLR 2025, baseline (PCA of unit-cell positions)
lattice_vector_frame         global, eq.  Ito, Taniai et al., ICLR 2025, baseline (shortest lattice vectors)
identity_frame               global       not equivariant (ablation)
gram_schmidt                 local        Hua & Lin, SPFrame, Eqs. 14-16 (eq. or inv. by its inputs)
static_local_frame           local, eq.   Ito, Taniai et al., ICLR 2025, baseline (distance-driven max frame)
max_frame                    local, eq.   Ito, Taniai et al., ICLR 2025 (dynamic, from attention weights)
weighted_pca_frame           local, eq.   Ito, Taniai et al., ICLR 2025 (dynamic, from attention weights)
quaternion_to_rotation       local, inv.  Hua & Lin, SPFrame, Algorithm 1/3
compose_spframe              -            Hua & Lin, SPFrame, Eq. 4
edges_in_frames              -            Hua & Lin, SPFrame, Eq. 5
===========================  ===========  ====================================================================

The registered frames (names of model specs) are the classes in ``registry`` (``none``,
``global``), ``dynamic`` (``static``, ``max``, ``weighted_pca``) and ``learned``
(``spframe_quaternion``, ``spframe_gram_schmidt``, ``equivariant_gram_schmidt``).
"""

# registry first: the frame modules below register themselves on import
from crystalframes.frames.registry import (
    FRAME_ALIASES,
    FRAMES,
    GLOBAL_FRAME_DEPENDENCES,
    NEEDS,
    Frame,
    EdgeGraphNeighbourhood,
    EdgeNeighbourhood,
    EntryNeighbourhood,
    FrameSetup,
    GraphNeighbourhood,
    Neighbourhood,
    RowNeighbourhood,
    build_frame,
    declared_dependences,
    frame_names,
    register_frame,
    resolve_frame,
)
from crystalframes.frames.dynamic import max_frame, static_local_frame, weighted_pca_frame  # noqa: E402
from crystalframes.frames import learned  # noqa: E402,F401 (registers the learned frames)
from crystalframes.frames.global_frames import (
    GLOBAL_FRAMES,
    global_frame,
    identity_frame,
    lattice_pca_frame,
    lattice_vector_frame,
    polar_frame,
    positions_pca_frame,
    qr_frame,
)
from crystalframes.frames.local import gram_schmidt
from crystalframes.frames.spframe import compose_spframe, edges_in_frames, quaternion_to_rotation

__all__ = [
    "FRAMES",
    "FRAME_ALIASES",
    "GLOBAL_FRAME_DEPENDENCES",
    "NEEDS",
    "Frame",
    "FrameSetup",
    "Neighbourhood",
    "EntryNeighbourhood",
    "EdgeNeighbourhood",
    "RowNeighbourhood",
    "GraphNeighbourhood",
    "EdgeGraphNeighbourhood",
    "build_frame",
    "declared_dependences",
    "frame_names",
    "register_frame",
    "resolve_frame",
    "GLOBAL_FRAMES",
    "global_frame",
    "qr_frame",
    "polar_frame",
    "lattice_pca_frame",
    "positions_pca_frame",
    "lattice_vector_frame",
    "identity_frame",
    "gram_schmidt",
    "static_local_frame",
    "max_frame",
    "weighted_pca_frame",
    "quaternion_to_rotation",
    "compose_spframe",
    "edges_in_frames",
]
