"""Named datasets: what they are, where they come from, and how to get a local file for one.

Three datasets are registered:

``mp_2018_demo``
    5,955 Materials Project crystals shipped inside the package (no download), labelled with
    the mp.2018.6.1 (MEGNet snapshot) formation energy and PBE gap; benchmark test records removed.
``jarvis_dft_3d_2021``
    JARVIS-DFT 3D, the ``dft_3d_2021`` benchmark snapshot (~55.7k crystals), a figshare zip.
``mp_2018``
    The MEGNet ``mp.2018.6.1`` Materials Project snapshot (~69k crystals), a figshare zip.

Downloads live in :func:`crystalframes.data.paths.cache_dir` (fetched by
:mod:`crystalframes.data.download`); :mod:`crystalframes.data.sources` turns a name or path into a
local file. Nothing is created at import time.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from crystalframes.data.paths import cache_dir
from crystalframes.io.errors import DatasetError

__all__ = [
    "DatasetInfo",
    "DATASETS",
    "TARGET_UNITS",
    "get_dataset_info",
    "list_datasets",
    "target_units",
    "NONNEGATIVE_TARGETS",
    "target_is_nonnegative",
    "benchmark_split_key",
    "embedded_path",
]


@dataclass(frozen=True)
class DatasetInfo:
    """Everything the project knows about one named dataset.

    Attributes
    ----------
    name
        Registry name (``crystalframes data fetch NAME``).
    description
        One line for listings.
    url
        Download URL of the archive, or ``None`` for an embedded dataset.
    member
        File name of the JSON inside the downloaded zip (``None`` if embedded).
    n_records
        Expected (approximate) number of records; a download far from it triggers a warning.
    targets
        Default targets in order of importance, mapped to their units. The first is the default.
    id_key
        Key holding the record id in the raw records (``jid`` for JARVIS, ``id`` for MEGNet).
    citation
        What to cite / the attribution the data's licence asks for.
    sha256
        Pinned sha256 of the downloaded archive, or ``None`` (not pinned: the archive is
        validated by content instead).
    embedded
        File name of the packaged copy under ``crystalframes/data/embedded`` (``None`` if downloaded).
    license
        Licence of the data.
    split_keys
        Target name -> key of the official id lists in ``benchmark_splits.json.gz``.
    """

    name: str
    description: str
    url: str | None
    member: str | None
    n_records: int
    targets: dict[str, str]
    id_key: str
    citation: str
    sha256: str | None = None
    embedded: str | None = None
    license: str = ""
    split_keys: dict[str, str] = field(default_factory=dict)

    @property
    def default_target(self) -> str:
        return next(iter(self.targets))

    @property
    def is_embedded(self) -> bool:
        return self.embedded is not None

    @property
    def filename(self) -> str:
        """File name of the local copy: the embedded file, or ``<name>.zip`` in the cache."""
        return self.embedded if self.embedded is not None else f"{self.name}.zip"


# Units of every target name the project knows, in the records' own spelling.
TARGET_UNITS: dict[str, str] = {
    # JARVIS-DFT (dft_3d_2021); 'ehull' is stored per atom by JARVIS but labelled eV by the leaderboard.
    "formation_energy_peratom": "eV/atom",
    "optb88vdw_total_energy": "eV/atom",
    "optb88vdw_bandgap": "eV",
    "mbj_bandgap": "eV",
    "hse_gap": "eV",
    "ehull": "eV",
    "bulk_modulus_kv": "GPa",
    "shear_modulus_gv": "GPa",
    # MEGNet mp.2018.6.1 (megnet.json spelling)
    "e_form": "eV/atom",
    "gap pbe": "eV",
    "e_hull": "eV/atom",
    # Materials Project sample / embedded demo
    "mp2018_e_form": "eV/atom",
    "mp2018_gap_pbe": "eV",
    "K_VRH": "GPa",
    "G_VRH": "GPa",
    "log10_K_VRH": "log10(GPa)",
    "log10_G_VRH": "log10(GPa)",
    "flla_formation_energy_per_atom": "eV/atom",
    "flla_e_above_hull": "eV/atom",
    "dielectric_band_gap": "eV",
    "refractive_index_n": "",  # dimensionless
    "eij_max": "C/m^2",
}

_JARVIS_TARGETS = [
    "formation_energy_peratom",
    "optb88vdw_total_energy",
    "optb88vdw_bandgap",
    "mbj_bandgap",
    "ehull",
    "bulk_modulus_kv",
    "shear_modulus_gv",
]

DATASETS: dict[str, DatasetInfo] = {
    "mp_2018_demo": DatasetInfo(
        name="mp_2018_demo",
        description=(
            "5,955 Materials Project crystals (embedded, no download): mp.2018.6.1 formation energy "
            "and PBE gap, elastic moduli for 1,113; benchmark train/val only (test records removed)"
        ),
        url=None,
        member=None,
        n_records=5955,
        targets={
            "mp2018_e_form": "eV/atom",
            "mp2018_gap_pbe": "eV",
            "log10_K_VRH": "log10(GPa)",
            "log10_G_VRH": "log10(GPa)",
        },
        id_key="id",
        citation=(
            "Materials Project (Jain et al., APL Mater. 2013; CC-BY 4.0) via matminer 0.3.3 (Ward et al., "
            "Comput. Mater. Sci. 2018); mp.2018.6.1 labels (Chen et al., Chem. Mater. 2019) from "
            "jarvis-leaderboard 2024.10.30 (Choudhary et al., npj Comput. Mater. 2024). See embedded/ATTRIBUTION.md."
        ),
        embedded="mp_2018_demo.jsonl.gz",
        license="CC-BY 4.0 (Materials Project data); matminer BSD-style",
        split_keys={"mp2018_e_form": "megnet_e_form", "mp2018_gap_pbe": "megnet_gappbe"},
    ),
    "jarvis_dft_3d_2021": DatasetInfo(
        name="jarvis_dft_3d_2021",
        description="JARVIS-DFT 3D crystals, dft_3d_2021 benchmark snapshot (~55.7k records; 'na' = missing)",
        url="https://ndownloader.figshare.com/files/29204826",
        member="jdft_3d-8-18-2021.json",
        n_records=55713,
        targets={name: TARGET_UNITS[name] for name in _JARVIS_TARGETS},
        id_key="jid",
        citation=(
            "K. Choudhary et al., 'The joint automated repository for various integrated simulations "
            "(JARVIS) for data-driven materials design', npj Comput. Mater. 6, 173 (2020). NIST, public domain."
        ),
        license="public domain (NIST)",
        split_keys={name: f"dft_3d_{name}" for name in _JARVIS_TARGETS},
    ),
    "mp_2018": DatasetInfo(
        name="mp_2018",
        description=(
            "Materials Project mp.2018.6.1 snapshot used by MEGNet (~69k records): formation energy "
            "and PBE gap ('bulk modulus'/'shear modulus' where present)"
        ),
        url="https://ndownloader.figshare.com/files/26724977",
        member="megnet.json",
        n_records=69239,
        targets={"e_form": "eV/atom", "gap pbe": "eV"},
        id_key="id",
        citation=(
            "C. Chen, W. Ye, Y. Zuo, C. Zheng, S. P. Ong, 'Graph Networks as a Universal Machine Learning "
            "Framework for Molecules and Crystals', Chem. Mater. 31, 3564 (2019); Materials Project "
            "(Jain et al., APL Mater. 2013; CC-BY 4.0)."
        ),
        license="CC-BY 4.0 (Materials Project data)",
        split_keys={"e_form": "megnet_e_form", "gap pbe": "megnet_gappbe"},
    ),
}

# Other spellings users will type (the jarvis-tools / leaderboard names).
ALIASES: dict[str, str] = {
    "dft_3d_2021": "jarvis_dft_3d_2021",
    "jarvis_dft_3d": "jarvis_dft_3d_2021",
    "megnet": "mp_2018",
    "mp.2018.6.1": "mp_2018",
    "mp_demo": "mp_2018_demo",
}


def _canonical_name(name: str) -> str | None:
    key = name.strip()
    if key in DATASETS:
        return key
    return ALIASES.get(key) or ALIASES.get(key.lower()) or (key.lower() if key.lower() in DATASETS else None)


def get_dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name`` (aliases such as ``megnet`` or ``dft_3d_2021`` accepted)."""
    canonical = _canonical_name(str(name))
    if canonical is None:
        raise DatasetError(str(name), f"unknown dataset; known datasets: {', '.join(DATASETS)}")
    return DATASETS[canonical]


def list_datasets() -> list[DatasetInfo]:
    """All registered datasets, in registry order."""
    return list(DATASETS.values())


def target_units(name: str) -> str:
    """Units of a target (``eV/atom``, ``eV``, ``GPa``, ``log10(GPa)``...); ``""`` when unknown
    or dimensionless. Matching also tolerates case and ``-``/space/``_`` differences."""
    if name in TARGET_UNITS:
        return TARGET_UNITS[name]
    wanted = _loose(name)
    for known, unit in TARGET_UNITS.items():
        if _loose(known) == wanted:
            return unit
    return ""


# Targets that cannot be below zero: band gaps, energies above the hull, elastic moduli of stable
# crystals, refractive index, the largest piezoelectric coefficient (a magnitude). A model's
# prediction for them can still come out slightly negative (Cu's gap: -0.001 eV); predictions
# are clipped at 0 for these (the raw value stays available). Formation and total energies and
# log10 moduli can be negative and are not listed.
NONNEGATIVE_TARGETS: frozenset[str] = frozenset({
    "optb88vdw_bandgap", "mbj_bandgap", "hse_gap", "gap pbe", "mp2018_gap_pbe", "dielectric_band_gap",
    "ehull", "e_hull", "flla_e_above_hull",
    "bulk_modulus_kv", "shear_modulus_gv", "K_VRH", "G_VRH",
    "refractive_index_n", "eij_max",
})


def target_is_nonnegative(name: str) -> bool:
    """Whether a target cannot physically be below zero (:data:`NONNEGATIVE_TARGETS`), so its
    predictions are clipped at 0. Matching tolerates case and ``-``/space/``_`` differences, as
    :func:`target_units` does; an unknown target is not clipped."""
    wanted = _loose(name)
    return any(_loose(known) == wanted for known in NONNEGATIVE_TARGETS)


def _loose(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in " _-")


def benchmark_split_key(dataset: str, target: str) -> str | None:
    """Key of the official id lists (``benchmark_splits.json.gz``) for ``target`` of a named dataset,
    or ``None`` if the benchmark has no split for it."""
    return get_dataset_info(dataset).split_keys.get(target)


def embedded_path(info: DatasetInfo) -> Path:
    """Local path of an embedded dataset.

    ``importlib.resources`` gives a real file for normal installs; for zipped installs the file is
    copied once into the cache folder so readers can open it by path.
    """
    if info.embedded is None:
        raise DatasetError(info.name, "not an embedded dataset")
    resource = importlib.resources.files("crystalframes.data").joinpath("embedded", info.embedded)
    if isinstance(resource, Path):
        if not resource.is_file():
            raise DatasetError(info.name, f"embedded file {info.embedded} is missing from the installed package")
        return resource
    target = cache_dir() / "embedded" / info.embedded
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        with importlib.resources.as_file(resource) as src:
            shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    return target
