"""Assembled models, built from a spec string ``backbone[:frame[+global_frame]][@preset]``.

>>> from crystalframes.models import build_model
>>> model = build_model("ecomformer:spframe_quaternion@jarvis_formation_energy")

See :mod:`crystalframes.models.specs` for the syntax and the backbone registry, and
:mod:`crystalframes.models.ecomformer` for eComFormer with SPFrame and its presets.
"""

from crystalframes.models.elements import split_supported, unsupported_elements_error
from crystalframes.models.parameters import num_parameters
from crystalframes.models.specs import (
    BACKBONES,
    Backbone,
    ModelSpec,
    SpecError,
    spec_grid,
    declared_dependences,
    build_model,
    check_options,
    parse_spec,
    register_backbone,
)
# The backbones this package ships, one module each, whose BACKBONE is its registry entry (a new
# backbone is one more name on these two lines).
from crystalframes.models import crystalformer, ecomformer, schnet  # noqa: E402
from crystalframes.models.ecomformer import PRESETS as ECOMFORMER_PRESETS
from crystalframes.models.ecomformer import EComFormer, EComFormerConfig

for _module in (ecomformer, crystalformer, schnet):
    register_backbone(_module.BACKBONE)

__all__ = [
    "SpecError",
    "check_options",
    "split_supported",
    "unsupported_elements_error",
    "build_model",
    "parse_spec",
    "spec_grid",
    "declared_dependences",
    "register_backbone",
    "Backbone",
    "BACKBONES",
    "ModelSpec",
    "EComFormer",
    "EComFormerConfig",
    "ECOMFORMER_PRESETS",
    "num_parameters",
]
