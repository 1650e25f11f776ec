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
    preset_training,
    register_backbone,
)
# after specs, which registers the backbone modules (each imports specs.backbone_of)
from crystalframes.models.ecomformer import PRESETS as ECOMFORMER_PRESETS
from crystalframes.models.ecomformer import EComFormer, EComFormerConfig

__all__ = [
    "SpecError",
    "check_options",
    "split_supported",
    "unsupported_elements_error",
    "build_model",
    "parse_spec",
    "preset_training",
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
