"""Diagnostics: what frames do to symmetry-equivalent atoms (Hua & Lin, SPFrame, Section 3.1, Fig. 3)."""

from crystalframes.analysis.symmetry import STRUCTURE_FRAMES, symmetry_analysis

__all__ = ["symmetry_analysis", "STRUCTURE_FRAMES"]
