"""Neural-network building blocks: fixed encodings, atom features, eComFormer layers and the
SPFrame frame-construction blocks. Models (``crystalframes.models``) assemble them."""

from crystalframes.nn.atom_features import CGCNN_FEATURE_DIM, AtomFeatureTable, cgcnn_table
from crystalframes.nn.comformer_layers import (
    EdgeGroups,
    EdgeTable,
    EquivariantUpdateLayer,
    GramSchmidtFrame,
    InvariantMessage,
    IrrepsToScalarConv,
    MessageGraph,
    NodeTransformerLayer,
    QuaternionFrame,
    ScalarToIrrepsConv,
    linear_of_concat,
)
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
    "InvariantMessage",
    "QuaternionFrame",
    "GramSchmidtFrame",
]
