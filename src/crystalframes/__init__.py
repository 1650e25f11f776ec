"""crystalframes: crystal property prediction with frame-based SE(3)-invariant networks."""

from crystalframes.version import __version__

__all__ = ["__version__", "load_model", "load_ensemble"]


def load_model(path_or_name, device="cpu"):
    """Load a trained model (a ``model.pt`` file or a run folder); see :mod:`crystalframes.api`."""
    from crystalframes.api import load_model as _load

    return _load(path_or_name, device)


def load_ensemble(paths, device="cpu"):
    """Load several trained models of the same target as one ensemble (mean and standard
    deviation over members); see :class:`crystalframes.api.Ensemble`."""
    from crystalframes.api import load_ensemble as _load

    return _load(paths, device)
