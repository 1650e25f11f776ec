"""Mixed precision (trainer.precision=bf16-mixed) on the contract crystals: for every spec of the
contract grid (``crystalframes models`` at cpu_small), with parameters drawn afresh
(crystalframes.testing.randomise_parameters, as the contract suite does), the relative rotation
error max |f(Qx) - f(x)| / max |f(x)| of the float32 model and of the same model under
torch.autocast("cpu", bfloat16), and how far the bf16-mixed output is from the float32 one.

    python benchmarks/mixed_precision.py [--shared ../shared/data] [--trials 3]

Needs ../shared/data (the contract crystals: 2 cubic, 2 hexagonal, 2 lower-symmetry crystals of
2..6 atoms from the JARVIS, then MP samples, as tests/models/conftest.py picks them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from crystalframes.cli.models import model_rows
from crystalframes.io import read_dataset
from crystalframes.models import build_model
from crystalframes.testing import predict, randomise_parameters, relative_rotation_error


def contract_crystals(shared: Path, per_kind: int = 2, max_atoms: int = 6) -> list:
    from crystalframes.testing import by_crystal_system

    samples = [c for name in ("jarvis_dft_3d_sample.jsonl.gz", "mp_2018_sample.jsonl.gz") for c in read_dataset(shared / name).crystals]
    return by_crystal_system(samples, per_kind, max_atoms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    crystals = contract_crystals(args.shared)
    rows = []
    for spec in [r["spec"] for r in model_rows("cpu_small")]:
        torch.manual_seed(0)
        model = randomise_parameters(build_model(spec)).float().eval()
        f32 = predict(model, crystals).double()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = predict(model, crystals).double()
        rows.append({
            "spec": spec,
            "rotation_float32": relative_rotation_error(model, crystals, trials=args.trials),
            "rotation_bf16_mixed": relative_rotation_error(model, crystals, torch.bfloat16, trials=args.trials),
            "bf16_vs_float32": float((bf16 - f32).abs().max() / f32.abs().max()),
        })
        r = rows[-1]
        print(f"{spec:52s} rotation float32 {r['rotation_float32']:.1e}  bf16-mixed {r['rotation_bf16_mixed']:.1e}  "
              f"bf16 vs float32 {r['bf16_vs_float32']:.1e}", flush=True)
    summary = {}
    for backbone in sorted({r["spec"].split(":")[0] for r in rows}):
        mine = [r for r in rows if r["spec"].startswith(backbone + ":")]
        summary[backbone] = {k: max(r[k] for r in mine) for k in ("rotation_float32", "rotation_bf16_mixed", "bf16_vs_float32")}
    print(json.dumps({"crystals": [c.id for c in crystals], "trials": args.trials, "worst_per_backbone": summary}, indent=1))


if __name__ == "__main__":
    main()
