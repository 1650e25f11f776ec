"""crystalframes: crystal property prediction with frame-based SE(3)-invariant networks."""

__version__ = "0.1.0"
