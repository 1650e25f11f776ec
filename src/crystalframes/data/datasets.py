"""Named datasets: what they are, where they come from, and how to get a local file for one.

Eight datasets are registered:

``mp_2018_demo``
    5,955 Materials Project crystals shipped inside the package (no download), labelled with
    the mp.2018.6.1 (MEGNet snapshot) formation energy and PBE gap; benchmark test records removed.
``jarvis_dft_3d_2021``
    JARVIS-DFT 3D, the ``dft_3d_2021`` benchmark snapshot (~55.7k crystals), a figshare zip.
``mp_2018``
    The MEGNet ``mp.2018.6.1`` Materials Project snapshot (~69k crystals), a figshare zip.
``perov_5``, ``carbon_24``
    The cubic perovskites of Castelli et al. (Energy Environ. Sci. 2012) and the AIRSS carbon
    polymorphs of Pickard (2020), as the CDVAE benchmark (Xie et al., ICLR 2022) splits them: one
    CSV table per split with a CIF per row. Read from a local copy of the tables when there is one
    (:func:`local_table_dirs`), else from the cache (``crystalframes data fetch perov_5``).
``mp_dielectric``, ``mp_elastic``, ``mp_piezo``
    Dielectric (3x3), elastic (6x6 Voigt) and piezoelectric (3x6 Voigt) tensors of Materials
    Project crystals (the matminer files, plus for ``mp_elastic`` the validation file of an
    elastic-tensor study), each tensor in the Cartesian frame of its record's structure and
    checked against the structure's point group at load (:mod:`crystalframes.io.tensor_tables`).
    Read from a local copy of the files (a ``tensors/`` folder of :func:`local_table_dirs`), else
    from the cache (``crystalframes data fetch mp_piezo``).

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
from crystalframes.io.tensor_tables import TENSOR_SETS, tensor_set_files

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
    "SHARED_DATA_ENV",
    "local_table_dirs",
    "local_table_files",
    "find_local_tables",
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
        Download URL of the archive, or ``None`` for an embedded dataset (for a set of tables:
        the folder of the upstream files, for reference; ``files`` holds each file's URL).
    member
        File name of the JSON inside the downloaded zip (``None`` if embedded); for a set of
        tables, the file-name pattern (glob) of the dataset's tables in its folder, which is how
        the readers pick its files out of a folder holding other datasets too; for a tensor set,
        its name in :data:`crystalframes.io.tensor_tables.TENSOR_SETS` (which names its files).
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
    files
        For a dataset published as one CSV table per split (a ``cif`` column, one row per
        crystal): split name -> URL of that table; for a tensor set, each upstream file's name
        -> its URL. Empty for archives and embedded datasets.
    collection
        The upstream collection a set of tables belongs to; a local copy may keep the tables in a
        sub-folder of that name (:func:`local_table_dirs`).
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
    files: dict[str, str] = field(default_factory=dict)
    collection: str | None = None

    @property
    def default_target(self) -> str:
        return next(iter(self.targets))

    @property
    def is_table_set(self) -> bool:
        """Published as one CSV table per split (``files``), not as one archive."""
        return bool(self.files)

    @property
    def is_tensor_set(self) -> bool:
        """Read by :mod:`crystalframes.io.tensor_tables` (tensor targets, symmetry-checked)."""
        return self.is_table_set and self.member in TENSOR_SETS

    @property
    def is_embedded(self) -> bool:
        return self.embedded is not None

    @property
    def filename(self) -> str:
        """File name of the local copy: the embedded file, ``<name>.zip`` in the cache, or for a
        set of tables the cache folder ``<name>`` holding them."""
        if self.embedded is not None:
            return self.embedded
        return self.name if self.is_table_set else f"{self.name}.zip"


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
    # CDVAE perov_5 (Castelli et al. 2012, CMR cubic perovskites). The heats of formation are per
    # 5-atom cell (= per ABX3 formula unit; divide by 5 for eV/atom), not per atom: they span
    # -0.38..4.98, i.e. up to ~1 eV/atom above the reference phases as per-cell values, but an
    # implausible 5 eV/atom as per-atom ones; matbench's copy of the same data says the same.
    "heat_ref": "eV/cell",
    "heat_all": "eV/cell",
    "dir_gap": "eV",
    "ind_gap": "eV",
    # CDVAE carbon_24 (Pickard 2020, AIRSS): the absolute CASTEP total energy per atom (~ -154),
    # not a formation energy.
    "energy_per_atom": "eV/atom",
    # Tensor sets (crystalframes.io.tensor_tables). The dielectric constants are relative
    # permittivities (dimensionless); poly_* are their polycrystalline averages (trace / 3).
    "e_electronic": "",
    "e_total": "",
    "poly_electronic": "",
    "poly_total": "",
    "elastic_tensor": "GPa",
    "piezoelectric_tensor": "C/m^2",
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

_CDVAE_DATA = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
_CDVAE_CITATION = (
    "T. Xie, X. Fu, O.-E. Ganea, R. Barzilay, T. Jaakkola, 'Crystal Diffusion Variational Autoencoder for "
    "Periodic Material Generation', ICLR 2022 (data splits; MIT licence)"
)


# The matminer 0.3.3 release's CSV files (BSD; the data CC-BY 4.0) and the validation file of
# Pakornchote et al.'s elastic-tensor study (MIT), pinned to a tag / commit.
_MATMINER_DATA = "https://raw.githubusercontent.com/hackingmaterials/matminer/v0.3.3/matminer/datasets"
_STRAINNET_DATA = ("https://raw.githubusercontent.com/trachote/predict_elastic_tensor/"
                   "2178392a6895287af3c7f95c2a31f7985b28b1e8/data/mp_val_clean.json")
_MP_CITATION = ("A. Jain et al., 'The Materials Project: A materials genome approach to accelerating materials "
                "innovation', APL Materials 1, 011002 (2013)")
_TENSOR_NOTE = "tensors in the Cartesian frame of each record's structure; rows breaking their point group's symmetry left out"


def _tensor_files(name: str) -> dict[str, str]:
    urls = {"strainnet_mp_elastic.json": _STRAINNET_DATA}
    return {spec.stem: urls.get(spec.stem, f"{_MATMINER_DATA}/{spec.stem}") for spec in TENSOR_SETS[name]}


def _cdvae_files(name: str) -> dict[str, str]:
    return {split: f"{_CDVAE_DATA}/{name}/{split}.csv" for split in ("train", "val", "test")}


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
    "perov_5": DatasetInfo(
        name="perov_5",
        description=(
            "18,928 cubic ABX3 perovskites (5 atoms/cell), CDVAE splits: heat of formation (eV per cell) and "
            "GLLB-SC gaps. A local copy may hold only part of it (e.g. val + test + a 1,024-row part of train: "
            "8,596 rows)"
        ),
        url=f"{_CDVAE_DATA}/perov_5",
        member="perov_5_*.csv*",
        n_records=18928,
        targets={name: TARGET_UNITS[name] for name in ("heat_ref", "heat_all", "dir_gap", "ind_gap")},
        id_key="material_id",
        citation=(
            "I. E. Castelli, D. D. Landis, K. S. Thygesen, S. Dahl, I. Chorkendorff, T. F. Jaramillo, "
            "K. W. Jacobsen, 'New cubic perovskites for one- and two-photon water splitting using the "
            "computational materials repository', Energy Environ. Sci. 5, 9034 (2012). " + _CDVAE_CITATION + "."
        ),
        license="MIT (CDVAE repository's data files); models trained on it may ship, the files themselves not",
        files=_cdvae_files("perov_5"),
        collection="cdvae",
    ),
    "carbon_24": DatasetInfo(
        name="carbon_24",
        description=(
            "10,153 AIRSS carbon polymorphs (6-24 atoms, pure carbon), CDVAE splits: absolute CASTEP energy "
            "(eV/atom). A local copy may hold val + test only (4,062 rows): no train records, use data.split=random"
        ),
        url=f"{_CDVAE_DATA}/carbon_24",
        member="carbon_24_*.csv*",
        n_records=10153,
        targets={"energy_per_atom": TARGET_UNITS["energy_per_atom"]},
        id_key="material_id",
        citation=(
            "C. J. Pickard, 'AIRSS data for carbon at 10GPa and the C+N+H+O system at 1GPa', Materials Cloud "
            "Archive 2020.0026 (2020). " + _CDVAE_CITATION + "."
        ),
        license="MIT (CDVAE repository's data files); models trained on it may ship, the files themselves not",
        files=_cdvae_files("carbon_24"),
        collection="cdvae",
    ),
    "mp_dielectric": DatasetInfo(
        name="mp_dielectric",
        description=("1,056 MP crystals (DFPT): dielectric tensors e_electronic, e_total (3x3) and scalars poly_electronic, "
                     "poly_total, refractive_index_n, dielectric_band_gap (eV); " + _TENSOR_NOTE),
        url=_MATMINER_DATA,
        member="mp_dielectric",
        n_records=1056,
        targets={name: TARGET_UNITS[name] for name in
                 ("e_electronic", "e_total", "poly_electronic", "poly_total", "refractive_index_n", "dielectric_band_gap")},
        id_key="material_id",
        citation=("I. Petousis et al., 'High-throughput screening of inorganic compounds for the discovery of novel "
                  "dielectric and optical materials', Sci. Data 4, 160134 (2017). " + _MP_CITATION + "."),
        license="CC-BY 4.0 (Materials Project data, through matminer's BSD-licensed files)",
        files=_tensor_files("mp_dielectric"),
        collection="tensors",
    ),
    "mp_elastic": DatasetInfo(
        name="mp_elastic",
        description=("1,181 MP crystals (de Jong et al.) and those of an elastic-tensor study's validation file: "
                     "elastic_tensor (6x6 Voigt, GPa) and scalars K_VRH, G_VRH (GPa), a material in both kept once; " + _TENSOR_NOTE),
        url=_MATMINER_DATA,
        member="mp_elastic",
        n_records=2500,  # rows of both files together, roughly: only a download far from it is flagged
        targets={name: TARGET_UNITS[name] for name in ("elastic_tensor", "K_VRH", "G_VRH")},
        id_key="material_id",
        citation=("M. de Jong et al., 'Charting the complete elastic properties of inorganic crystalline compounds', "
                  "Sci. Data 2, 150009 (2015); T. Pakornchote et al., 'StrainTensorNet: Predicting crystal structure "
                  "elastic properties using SE(3)-equivariant graph neural networks', Phys. Rev. Research 5, 043198 "
                  "(2023) (validation file). " + _MP_CITATION + "."),
        license="CC-BY 4.0 (Materials Project data); the second file from an MIT-licensed repository",
        files=_tensor_files("mp_elastic"),
        collection="tensors",
    ),
    "mp_piezo": DatasetInfo(
        name="mp_piezo",
        description=("941 MP crystals (DFPT): piezoelectric_tensor (3x6 Voigt, C/m^2, given in the IEEE frame, stored "
                     "in the structure's frame) and scalar eij_max; " + _TENSOR_NOTE),
        url=_MATMINER_DATA,
        member="mp_piezo",
        n_records=941,
        targets={name: TARGET_UNITS[name] for name in ("piezoelectric_tensor", "eij_max")},
        id_key="material_id",
        citation=("M. de Jong, W. Chen, H. Geerlings, M. Asta, K. A. Persson, 'A database to enable discovery and "
                  "design of piezoelectric materials', Sci. Data 2, 150053 (2015). " + _MP_CITATION + "."),
        license="CC-BY 4.0 (Materials Project data, through matminer's BSD-licensed files)",
        files=_tensor_files("mp_piezo"),
        collection="tensors",
    ),
}

# Other spellings users will type (the jarvis-tools / leaderboard names).
ALIASES: dict[str, str] = {
    "dft_3d_2021": "jarvis_dft_3d_2021",
    "jarvis_dft_3d": "jarvis_dft_3d_2021",
    "megnet": "mp_2018",
    "mp.2018.6.1": "mp_2018",
    "mp_demo": "mp_2018_demo",
    "perov-5": "perov_5",
    "perov5": "perov_5",
    "carbon-24": "carbon_24",
    "carbon24": "carbon_24",
    "mp-dielectric": "mp_dielectric",
    "dielectric": "mp_dielectric",
    "mp-elastic": "mp_elastic",
    "elastic": "mp_elastic",
    "mp-piezo": "mp_piezo",
    "piezo": "mp_piezo",
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
    "refractive_index_n", "eij_max", "dir_gap", "ind_gap", "poly_electronic", "poly_total",
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


# Folders holding local copies of datasets published as tables (a read-only data folder shared by
# the machines of a team, a mirror of the upstream files). Several folders: os.pathsep-separated.
SHARED_DATA_ENV = "CRYSTALFRAMES_SHARED_DATA"
_TABLE_SUFFIXES = (".csv", ".csv.gz")


def local_table_dirs() -> list[Path]:
    """Folders searched for a local copy of a set of tables, in order: those named by
    ``$CRYSTALFRAMES_SHARED_DATA``, else ``../shared/data`` seen from the current folder and from
    a source checkout of the package (the layout of the project's development machines). Nothing
    is created; folders that do not exist are left out."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        candidates = [Path(os.path.expanduser(p)) for p in env.split(os.pathsep) if p.strip()]
    else:
        candidates = [Path.cwd().parent / "shared" / "data"]
        checkout = Path(__file__).resolve().parents[3]  # <checkout>/src/crystalframes/data/datasets.py
        if (checkout / "pyproject.toml").is_file():
            candidates.append(checkout.parent / "shared" / "data")
    seen: list[Path] = []
    for path in candidates:
        try:
            if path.is_dir() and path.resolve() not in [p.resolve() for p in seen]:
                seen.append(path)
        except OSError:
            continue
    return seen


def local_table_files(folder: str | os.PathLike, info: DatasetInfo) -> list[Path]:
    """The tables of ``info`` in ``folder`` (files matching ``info.member``, ``.csv`` or
    ``.csv.gz``; for a tensor set, its files, all of them or none), sorted by name; empty for a
    dataset that is no set of tables."""
    if not info.is_table_set or info.member is None:
        return []
    if info.is_tensor_set:
        return sorted(tensor_set_files(Path(folder), info.member) or [])
    try:
        return sorted(p for p in Path(folder).glob(info.member) if p.name.lower().endswith(_TABLE_SUFFIXES) and p.is_file())
    except OSError:
        return []


def find_local_tables(info: DatasetInfo) -> Path | None:
    """The first folder of :func:`local_table_dirs` (or its ``info.collection`` sub-folder) holding
    tables of ``info``, or ``None``. Read in place, never copied."""
    for base in local_table_dirs():
        for folder in ([base / info.collection] if info.collection else []) + [base]:
            if local_table_files(folder, info):
                return folder
    return None
