"""Helpers for checking symmetry properties, and the model contract suite (:class:`ModelContract`)
that every backbone x frame of this package passes and that a third-party backbone or frame runs
with one line."""

from __future__ import annotations

import numpy as np


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed proper rotation matrix (det = +1), float64 (Haar measure via QR)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotated(crystal, rotation: np.ndarray):
    """The same crystal rigidly rotated: lattice rows L -> L Q^T, fractional coordinates unchanged."""
    from dataclasses import replace

    return replace(crystal, lattice=crystal.lattice @ np.asarray(rotation).T)


# ---------------------------------------------------------------------------------------------
# Model contract checks (reused by every model's tests and by `crystalframes check`).
# A model is any torch.nn.Module with a ``graph_settings`` attribute (GraphSettings) whose
# forward maps a GraphBatch to per-structure outputs of shape (B, T).
# ---------------------------------------------------------------------------------------------

DEFAULT_TOLERANCES = {"float64": 1e-9, "float32": 1e-4}


def predict(model, crystals, dtype=None):
    """Model outputs (B, T) for a list of crystals, in one batch, eval mode, no grad."""
    import torch

    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph

    dtype = dtype or next(model.parameters()).dtype
    device = next(model.parameters()).device
    batch = collate([build_graph(c, model.graph_settings) for c in crystals], dtype=dtype).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(batch).detach().cpu()
    finally:
        model.train(was_training)


def translated(crystal, shift_frac):
    from dataclasses import replace

    return replace(crystal, frac_coords=crystal.frac_coords + np.asarray(shift_frac))


def permuted(crystal, perm):
    from dataclasses import replace

    perm = np.asarray(perm)
    return replace(crystal, frac_coords=crystal.frac_coords[perm], atomic_numbers=crystal.atomic_numbers[perm])


def supercell(crystal, reps=(2, 1, 1)):
    """The same crystal described by a (reps[0] x reps[1] x reps[2]) supercell."""
    from dataclasses import replace

    reps = np.asarray(reps, dtype=int)
    shifts = np.stack(np.meshgrid(*[np.arange(r) for r in reps], indexing="ij"), -1).reshape(-1, 3)
    frac = np.concatenate([(crystal.frac_coords + s) / reps for s in shifts])
    return replace(
        crystal,
        lattice=crystal.lattice * reps[:, None],
        frac_coords=frac,
        atomic_numbers=np.tile(crystal.atomic_numbers, len(shifts)),
    )


def mirrored(crystal):
    """The mirror image (x -> -x): an improper transformation, not a symmetry of SO(3) models."""
    from dataclasses import replace

    return replace(crystal, lattice=crystal.lattice * np.array([-1.0, 1.0, 1.0]))


def basis_changed(crystal, matrix):
    """The same crystal described with another lattice basis: L' = M L for an integer M with
    det M = +-1 (fractional coordinates f' = f M^-1)."""
    from dataclasses import replace

    m = np.asarray(matrix)
    if not np.allclose(m, np.round(m)) or round(abs(np.linalg.det(m))) != 1:
        raise ValueError("a basis change must be an integer matrix with determinant +-1")
    return replace(crystal, lattice=m @ crystal.lattice, frac_coords=crystal.frac_coords @ np.linalg.inv(m))


class BasisChangeSkipped(ValueError):
    """A basis-change trial that cannot be made for this cell (the reason is the message);
    :func:`invariance_report` notes it and goes on with the other trials."""


def niggli_reduced(crystal):
    """The crystal on its Niggli-reduced basis (pymatgen), as a basis change of the same lattice.

    The reduction runs on the lattice scaled to unit volume: pymatgen's tolerances are absolute
    (Angstrom), so a 1e5 A cell came back half-reduced with a non-integer change of basis, a
    1e7 A one made it allocate a matrix of 135 TiB and a 1e12 A one never finished. A basis
    change does not depend on the scale, so the integer matrix found on the scaled lattice is
    the one of the real lattice. Raises :class:`BasisChangeSkipped` when no integer matrix with
    determinant +-1 comes out (a degenerate cell)."""
    from pymatgen.core import Lattice

    lattice = np.asarray(crystal.lattice, dtype=float)
    volume = abs(np.linalg.det(lattice))
    if not np.isfinite(volume) or volume <= 0:
        raise BasisChangeSkipped(f"the cell volume is {volume:.3g}")
    scaled = lattice / np.cbrt(volume)
    reduced = Lattice(scaled).get_niggli_reduced_lattice().matrix
    exact = reduced @ np.linalg.inv(scaled)
    m = np.round(exact)
    if not np.allclose(exact, m, atol=1e-6) or round(abs(np.linalg.det(m))) != 1:
        raise BasisChangeSkipped("the Niggli reduction gave no integer change of basis with determinant +-1")
    return basis_changed(crystal, m)


# A fixed shear of the basis (a, b, c) -> (a, a + b, c): the simplest non-trivial basis change.
SHEAR_BASIS_CHANGE = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])

INVARIANCE_KEYS = ("rotation", "translation", "permutation", "supercell", "basis_change", "batch", "mirror")


def worst(values) -> float:
    """The largest of ``values``, NaN when any value is NaN.

    Python's ``max`` drops a NaN unless it comes first (``max([1e-12, nan]) == 1e-12``: every
    comparison with NaN is false), so a model whose output turns NaN for one structure would
    pass a tolerance check; :func:`numpy.max` propagates it. Raises ``ValueError`` on no values."""
    return float(np.max(np.asarray(list(values), dtype=float)))


def predict_in_batches(model, crystals, batch_size: int = 32) -> "torch.Tensor":
    """:func:`predict` over ``crystals`` in batches of ``batch_size`` (B, T)."""
    import torch

    return torch.cat([predict(model, crystals[i : i + batch_size]) for i in range(0, len(crystals), batch_size)])


def invariance_report(model, crystals, trials: int = 3, seed: int = 0, supercells=((2, 1, 1), (2, 2, 2)),
                      checks=INVARIANCE_KEYS, batch_size: int = 32) -> list[dict]:
    """Per structure, the largest absolute change of the model's outputs under each
    transformation (keys ``checks``, a subset of :data:`INVARIANCE_KEYS`, plus ``id``). ``batch``
    compares the output in a batch with the output of the structure alone; ``mirror`` is the
    change under a reflection, which SO(3)-invariant models need not be invariant to;
    ``basis_change`` uses the Niggli basis and a shear of the basis (the same crystal, another
    unit-cell description); a basis change that cannot be made for a cell
    (:class:`BasisChangeSkipped`) is left out for that structure and named in its row's
    ``notes`` (a list of strings, empty when nothing was skipped). Every variant of every
    structure is predicted in batches of ``batch_size`` (eval mode: the outputs do not depend on
    the batch, which ``batch`` checks)."""
    if int(trials) < 1 or int(batch_size) < 1:
        raise ValueError(f"trials and batch_size must be at least 1, got {trials} and {batch_size}")
    unknown = set(checks) - set(INVARIANCE_KEYS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {INVARIANCE_KEYS}")
    rng = np.random.default_rng(seed)
    ref = predict_in_batches(model, crystals, batch_size)
    # Each check: a list of transformations, each applied to every structure.
    variants = {
        "rotation": [lambda c: rotated(c, random_rotation(rng)) for _ in range(trials)],
        "translation": [lambda c: translated(c, rng.uniform(-1, 1, 3)) for _ in range(trials)],
        "permutation": [lambda c: permuted(c, rng.permutation(c.num_atoms)) for _ in range(trials)],
        "supercell": [lambda c, reps=tuple(reps): supercell(c, reps) for reps in supercells],
        "basis_change": [niggli_reduced, lambda c: basis_changed(c, SHEAR_BASIS_CHANGE)],
        "mirror": [mirrored],
    }
    import torch

    rows = [{"id": c.id, "notes": []} for c in crystals]

    def or_unchanged(transform, c, row):
        try:
            return transform(c)
        except BasisChangeSkipped as exc:
            row["notes"].append(f"{getattr(transform, '__name__', 'basis change')} trial skipped: {exc}")
            return c  # the unchanged structure: its change is 0, the note says why

    for key in checks:
        if key == "batch":  # every structure alone
            outputs = torch.cat([predict(model, [c]) for c in crystals])
            changes = (outputs - ref).abs().amax(dim=1)
        else:
            changes = torch.zeros(len(crystals), dtype=ref.dtype)
            for transform in variants[key]:
                changed = [or_unchanged(transform, c, row) for c, row in zip(crystals, rows)]
                change = (predict_in_batches(model, changed, batch_size) - ref).abs().amax(dim=1)
                changes = torch.maximum(changes, change)  # propagates NaN (a broken output must show)
        for row, change in zip(rows, changes.tolist()):
            row[key] = change
    return rows


EQUIVARIANCE_KEYS = ("rotation", "reflection", "translation", "permutation", "supercell", "basis_change", "batch", "neumann")


def equivariance_report(model, crystals, trials: int = 3, seed: int = 0, supercells=((2, 1, 1), (2, 2, 2)),
                        batch_size: int = 32) -> list[dict]:
    """:func:`invariance_report` for a tensor model (outputs (B, 3, ..., 3)): per structure, the
    largest absolute change of the network's output against what it must be, in the network's
    own units (a trained model's outputs are scaled so that the training tensors' entries have
    RMS 1; a relative error per structure would be meaningless where the tensor must vanish, as a
    piezoelectric tensor at an inversion centre). ``rotation`` / ``reflection``: T(QS) against Q T(S) (every index) for random
    proper Q, and for Q times a mirror; ``translation``, ``permutation``, ``supercell``,
    ``basis_change``, ``batch``: T unchanged; ``neumann``: T against R T(S) for every operation R
    of the structure's point group (spglib, symprec 0.01 A): Neumann's principle."""
    import torch

    from crystalframes.io.tensors import point_group_rotations, rotate

    rank = model.kind.rank
    rng = np.random.default_rng(seed)
    ref = predict_in_batches(model, crystals, batch_size)
    rows = [{"id": c.id, "notes": []} for c in crystals]

    def change(outputs, expected):
        return (outputs - expected).reshape(len(crystals), -1).abs().amax(dim=1)

    def record(key, values):
        for row, value in zip(rows, values.tolist()):
            row[key] = max(row.get(key, 0.0), value) if value == value else value  # NaN stays

    for _ in range(trials):
        for key, q in (("rotation", random_rotation(rng)), ("reflection", np.diag([-1.0, 1.0, 1.0]) @ random_rotation(rng))):
            moved = predict_in_batches(model, [rotated(c, q) for c in crystals], batch_size)
            record(key, change(moved, rotate(ref, torch.as_tensor(q, dtype=ref.dtype), rank)))
        record("translation", change(predict_in_batches(model, [translated(c, rng.uniform(-1, 1, 3)) for c in crystals], batch_size), ref))
        record("permutation", change(predict_in_batches(model, [permuted(c, rng.permutation(c.num_atoms)) for c in crystals], batch_size), ref))
    for reps in supercells:
        record("supercell", change(predict_in_batches(model, [supercell(c, reps) for c in crystals], batch_size), ref))
    for transform in (niggli_reduced, lambda c: basis_changed(c, SHEAR_BASIS_CHANGE)):
        changed = []
        for c, row in zip(crystals, rows):
            try:
                changed.append(transform(c))
            except BasisChangeSkipped as exc:
                row["notes"].append(f"basis change trial skipped: {exc}")
                changed.append(c)
        record("basis_change", change(predict_in_batches(model, changed, batch_size), ref))
    record("batch", change(torch.cat([predict(model, [c]) for c in crystals]), ref))
    neumann = []
    for c, t in zip(crystals, ref):
        ops = torch.as_tensor(point_group_rotations(c.lattice, c.frac_coords, c.atomic_numbers), dtype=ref.dtype)
        neumann.append((rotate(t.expand(len(ops), *t.shape), ops, rank) - t).abs().amax())
    record("neumann", torch.stack(neumann))
    return rows


def invariance_errors(model, crystals, trials: int = 3, seed: int = 0, supercells=((2, 1, 1), (2, 2, 2))) -> dict:
    """Largest absolute change of the model's outputs under each transformation over all
    ``crystals`` (like e3nn's ``assert_equivariant``: a dict of errors; compare with
    :data:`DEFAULT_TOLERANCES` for the model's dtype). Keys as :func:`invariance_report`; an
    error is NaN when any structure's is (:func:`worst`), so a NaN output fails a comparison."""
    rows = invariance_report(model, crystals, trials, seed, supercells)
    return {key: worst(r[key] for r in rows) for key in INVARIANCE_KEYS}


def randomise_parameters(model, seed: int = 0):
    """Every trainable parameter drawn afresh, in place: matrices N(0, 1/fan_in), vectors
    N(0, 0.1^2). Returns the model.

    A freshly initialised model can be nearly blind to some of its inputs (eComFormer's l > 0
    tensor-product paths start near zero, so its outputs move by ~1e-8 when its frames change),
    which makes an invariance check weak and a negative control impossible. Drawn this way every
    path carries signal of order one."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                continue
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * fan_in**-0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return model


def relative_rotation_error(model, crystals, autocast=None, trials: int = 1, seed: int = 0) -> float:
    """max |f(Qx) - f(x)| / max |f(x)| over ``crystals`` and ``trials`` random rotations Q
    (eval mode). ``autocast`` (e.g. ``torch.bfloat16``) runs both predictions under
    ``torch.autocast`` on the model's device, as ``trainer.precision=bf16-mixed`` does: the
    figure of :mod:`crystalframes.precision` and benchmarks/mixed_precision.py."""
    import contextlib

    import torch

    device = next(model.parameters()).device.type
    context = torch.autocast(device, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    rng = np.random.default_rng(seed)
    with context:
        ref = predict(model, crystals).double()
        change = max(float((predict(model, [rotated(c, random_rotation(rng)) for c in crystals]).double() - ref).abs().max())
                     for _ in range(int(trials)))
    return change / float(ref.abs().max())


def random_crystals(n: int, seed: int = 0) -> list:
    """``n`` random crystals of 2..8 atoms in skewed cells (no data files needed): inputs for
    speed and device checks, never for accuracy."""
    from crystalframes.io import Crystal

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = int(rng.integers(2, 9))
        lattice = np.diag(rng.uniform(3.5, 6.0, 3)) + rng.uniform(-0.8, 0.8, (3, 3))
        out.append(Crystal(f"r{k}", lattice, rng.choice([3, 8, 11, 14, 17, 26, 29], atoms).tolist(), rng.uniform(0, 1, (atoms, 3))))
    return out


def by_crystal_system(crystals, per_kind: int, max_atoms: int) -> list:
    """The first ``per_kind`` cubic, hexagonal and lower-symmetry crystals of ``crystals`` with
    2..``max_atoms`` atoms (spglib, symprec 1e-3): symmetric crystals are where frames meet ties.
    Fewer when ``crystals`` hold fewer of a kind."""
    from crystalframes.analysis.symmetry import symmetry_dataset

    picked, want = [], {"cubic": per_kind, "hexagonal": per_kind, "other": per_kind}
    for c in crystals:
        if not any(want.values()):
            break
        if 2 <= c.num_atoms <= max_atoms:
            number = symmetry_dataset(c, 1e-3).number
            kind = "cubic" if number >= 195 else "hexagonal" if 168 <= number <= 194 else "other"
            if want[kind]:
                want[kind] -= 1
                picked.append(c)
    return picked


# --------------------------------------------------------------------------------------------------
# The model contract suite
# --------------------------------------------------------------------------------------------------

CONTRACT_CHECKS = ("rotation", "translation", "permutation", "supercell", "basis_change", "batch")
SHOWS = 100  # a declared dependence must exceed the model's own rounding noise this many times


def demo_crystals(per_kind: int = 2, max_atoms: int = 6) -> list:
    """Real crystals of the embedded demo set (Materials Project), ``per_kind`` cubic, hexagonal
    and lower-symmetry ones of at most ``max_atoms`` atoms: the contract suite's default."""
    from crystalframes.data.sources import load_dataset

    return by_crystal_system(load_dataset("mp_2018_demo").crystals, per_kind, max_atoms)


def check_invariance_contract(spec: str, crystals, tolerance: float | None = None) -> dict:
    """The float64 contract of one spec, with parameters drawn afresh
    (:func:`randomise_parameters`; at initialisation some models are nearly blind to their
    frames): every check of :data:`CONTRACT_CHECKS` the spec does not declare a dependence on
    within ``tolerance`` (:data:`DEFAULT_TOLERANCES` float64), every declared dependence showing
    (:data:`SHOWS` times above the rounding noise of the satisfied checks: a negative control, so
    a declaration cannot hide a bug), deterministic finite outputs. Returns the errors."""
    import torch

    from crystalframes.models import build_model, declared_dependences
    from crystalframes.models.specs import MAY_CANCEL

    tol = DEFAULT_TOLERANCES["float64"] if tolerance is None else tolerance
    torch.manual_seed(0)
    model = randomise_parameters(build_model(spec)).double().eval()
    errors = invariance_errors(model, crystals, trials=1, supercells=((2, 1, 1),))
    exceptions = declared_dependences(spec)
    for check in CONTRACT_CHECKS:
        if check not in exceptions:
            assert errors[check] <= tol, (spec, check, errors)
    noise = max([errors[c] for c in CONTRACT_CHECKS if c not in exceptions] + [1e-16])
    for check, reason in exceptions.items():
        if not reason.startswith(MAY_CANCEL):
            assert errors[check] > SHOWS * noise, (spec, check, reason, errors)
    first, second = predict(model, crystals), predict(model, crystals)
    assert torch.isfinite(first).all() and torch.equal(first, second), spec
    return errors


def check_gradients(spec: str, crystals) -> None:
    """Finite, non-zero gradients for every trainable parameter (frame parameters included) of
    a float64 training-mode forward on ``crystals``."""
    import torch

    from crystalframes.data.batch import collate
    from crystalframes.data.graph import build_graph
    from crystalframes.models import build_model

    torch.manual_seed(0)
    model = build_model(spec).double().train()
    batch = collate([build_graph(c, model.graph_settings) for c in crystals], dtype=torch.float64)
    model(batch).square().sum().backward()
    zero = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), (spec, name)
        if p.grad.abs().sum() == 0:
            zero.append(name)
    assert not zero, (spec, zero)


def check_model_file(spec: str, crystals, folder) -> None:
    """The spec saves to a portable model file and loads back (weights_only) to the same
    predictions, under its canonical name."""
    from pathlib import Path

    import torch

    from crystalframes.api import load_model, save_model_file
    from crystalframes.data.normalise import TargetNormaliser
    from crystalframes.models import build_model

    torch.manual_seed(0)
    model = build_model(spec).eval()
    path = save_model_file(Path(folder) / "model.pt", model, model.spec, {}, TargetNormaliser(-1.0, 2.0), ["y"], ["eV"])
    loaded = load_model(path)
    assert loaded.spec == model.spec == spec
    expected = TargetNormaliser(-1.0, 2.0).inverse(predict(model, crystals))
    got = torch.as_tensor(loaded.predict(crystals)).reshape(expected.shape)
    assert torch.allclose(got.to(expected.dtype), expected, rtol=0, atol=1e-6), spec


def check_backbone_contract(spec: str) -> None:
    """What the backbone declares (:class:`crystalframes.models.base.CrystalModel`) holds."""
    from crystalframes.frames import NEEDS
    from crystalframes.models import BACKBONES, build_model, parse_spec
    from crystalframes.models.base import CrystalModel

    model = build_model(spec)
    backbone = BACKBONES[parse_spec(spec).backbone]
    assert isinstance(model, CrystalModel) and isinstance(model, backbone.model), spec
    assert backbone.provides <= set(NEEDS), (spec, backbone.provides)
    assert model.frame.needs <= backbone.provides, spec
    assert model.supported_atomic_numbers and model.graph_settings is not None and hasattr(model.config, "as_dict"), spec
    assert model.output_layer.out_features == model.config.num_targets and model.embedding_dim >= 1, spec


class ModelContract:
    """The model contract suite as a pytest class (as nequip ships its model test mixin):

        from crystalframes.testing import ModelContract

        class TestMyModels(ModelContract):
            specs = ["mybackbone:none@small", "mybackbone:myframe@small"]

    runs, per spec, the float64 invariance contract with its negative controls
    (:func:`check_invariance_contract`), finite non-zero gradients (:func:`check_gradients`), the
    model-file round trip (:func:`check_model_file`) and the backbone's declarations
    (:func:`check_backbone_contract`). ``specs`` empty: every spec of ``crystalframes models`` at
    ``preset``. The crystals are the fixtures ``contract_crystals`` (default: cubic, hexagonal
    and lower-symmetry crystals of the embedded demo set) and ``gradient_crystals`` (default: 16
    ordinary demo crystals); a subclass may override either with its own fixture.
    """

    specs: tuple = ()
    preset: str = "cpu_small"

    def pytest_generate_tests(self, metafunc):
        if "spec" in metafunc.fixturenames:
            specs = list(self.specs)
            if not specs:
                from crystalframes.models import spec_grid

                specs = [str(s) for s in spec_grid(self.preset)]
            metafunc.parametrize("spec", specs)

    def _fixture(fn):  # pytest is a test dependency, not a dependency of the package
        try:
            import pytest
        except ImportError:  # the suite is only collected by pytest
            return fn
        return pytest.fixture(scope="class")(classmethod(fn))

    @_fixture
    def contract_crystals(cls):
        return demo_crystals(2, 6)

    @_fixture
    def gradient_crystals(cls):
        from crystalframes.data.sources import load_dataset

        return [c for c in load_dataset("mp_2018_demo").crystals if 4 <= c.num_atoms <= 12][:16]

    _fixture = staticmethod(_fixture)

    def test_backbone_contract(self, spec):
        check_backbone_contract(spec)

    def test_invariance_contract(self, spec, contract_crystals):
        check_invariance_contract(spec, contract_crystals)

    def test_every_parameter_gets_a_finite_gradient(self, spec, gradient_crystals):
        check_gradients(spec, gradient_crystals)

    def test_model_file_round_trip(self, spec, contract_crystals, tmp_path):
        check_model_file(spec, contract_crystals, tmp_path)
