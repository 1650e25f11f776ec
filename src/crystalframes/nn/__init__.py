"""Neural-network building blocks: fixed encodings, atom features, message-passing bookkeeping
and eComFormer's layers. Models (``crystalframes.models``) assemble them; frames, learned ones
included, live in ``crystalframes.frames``."""

from crystalframes.nn.atom_features import CGCNN_FEATURE_DIM, AtomFeatureTable, cgcnn_table
from crystalframes.nn.comformer_layers import (
    EquivariantUpdateLayer,
    IrrepsToScalarConv,
    NodeTransformerLayer,
    ScalarToIrrepsConv,
)
from crystalframes.nn.graph import EdgeGroups, EdgeTable, MessageGraph, linear_of_concat
from crystalframes.nn.encodings import GaussianBasis, inverse_distance, lattice_cosines

__all__ = [
    "CGCNN_FEATURE_DIM",
    "AtomFeatureTable",
    "cgcnn_table",
    "GaussianBasis",
    "inverse_distance",
    "lattice_cosines",
    "MessageGraph",
    "EdgeGroups",
    "EdgeTable",
    "linear_of_concat",
    "NodeTransformerLayer",
    "EquivariantUpdateLayer",
    "ScalarToIrrepsConv",
    "IrrepsToScalarConv",
]
