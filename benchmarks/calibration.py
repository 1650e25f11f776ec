"""How far to trust an ensemble's standard deviation: calibration on a validation split.

    python benchmarks/calibration.py RUN_A RUN_B RUN_C [--split val] [--plot calibration.png] [--json out.json]
    python benchmarks/calibration.py mp_e_form --split heldout --plot docs/img/calibration_mp_e_form_heldout.png

The runs (or model files) must predict the same target; the data and split are read from the
first run's config.yaml (or given with --data). One name of a pretrained model (an ensemble)
takes the data it was trained on. ``--split heldout``: the part of train a default training
holds out as test. For every structure: the ensemble mean, its
standard deviation over members (ddof = 1) and the absolute error. Printed: the fraction of
errors within 1 and 2 standard deviations (a calibrated Gaussian: 68 % and 95 %), the Spearman
correlation between std and error, and per std-quantile bin the RMSE against the mean std
(a calibrated ensemble lies on the diagonal; --plot draws it), and the factor by which the std
would have to be scaled to hold 68 % of the errors (``--scale`` applies one, e.g. fitted on val
and checked on the held-out part). A pretrained model reports its spread times the factor it
ships (fitted on its validation split); ``--raw`` measures the spread without it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from crystalframes.analysis.uncertainty import calibration  # noqa: F401 (also this script's API)


def main(argv=None) -> None:
    import yaml

    from crystalframes.api import load_ensemble
    from crystalframes.data.sources import load_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="run folders or model files (at least two), or one pretrained model's name")
    p.add_argument("--data", help="dataset (default: the first run's data.source)")
    p.add_argument("--split", default="val")
    p.add_argument("--plot", type=Path)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the std by this factor first (check on one split a scale_for_68 fitted on another)")
    p.add_argument("--raw", action="store_true", help="a pretrained model: the members' spread, without the std scale it ships")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from crystalframes import zoo
    from crystalframes.api import load_model

    if len(args.models) == 1 and args.models[0] in zoo.pretrained():
        ensemble, source = load_model(args.models[0]), args.data or zoo.pretrained()[args.models[0]]["data"]
    else:
        ensemble = load_ensemble(args.models)
        source = args.data or yaml.safe_load((Path(args.models[0]) / "config.yaml").read_text())["data"]["source"]
    shipped_scale = ensemble.std_scale
    if args.raw:
        ensemble.std_scale = 1.0
    target = ensemble.targets[0]
    data = load_dataset(source, target=target).crystals
    if args.split == "heldout":
        from crystalframes.train.data import heldout_part

        crystals = heldout_part(data, source, target)
    else:
        crystals = [c for c in data if c.split == args.split]
    kept, mean, std, errors = ensemble.predict_each_with_std(crystals)
    true = np.array([c.target(target) for c in kept])
    result = {"models": args.models, "data": source, "split": args.split, "target": target, "units": ensemble.units[0],
              "std_scale": args.scale * ensemble.std_scale, "shipped_std_scale": shipped_scale, **calibration(args.scale * std[:, 0], np.abs(mean[:, 0] - true)), "failed": len(errors)}
    print(json.dumps({k: v for k, v in result.items() if k != "bins"}, indent=1))
    for b in result["bins"]:
        print(f"  mean std {b['mean_std']:.4f}  rmse {b['rmse']:.4f}  (n={b['n']})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        units = result["units"]
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
        # every structure: absolute error against predicted std, with the 1 and 2 std lines
        s, e = args.scale * std[:, 0], np.abs(mean[:, 0] - true)
        left.scatter(s, e, s=6, alpha=0.5)
        top = max(s.max(), 1e-12) * 1.05
        left.plot([0, top], [0, top], "k--", lw=0.8, label="1 std")
        left.plot([0, top], [0, 2 * top], "k:", lw=0.8, label="2 std")
        left.set(xlabel=f"predicted std ({units})", ylabel=f"|error| ({units})",
                 title=f"{result['within_1_std']:.0%} within 1 std, {result['within_2_std']:.0%} within 2")
        left.legend()
        # binned by std: RMSE against mean std (a calibrated Gaussian lies on the diagonal)
        x = [b["mean_std"] for b in result["bins"]]
        y = [b["rmse"] for b in result["bins"]]
        right.plot(x, y, "o-", label="ensemble")
        top = max(x + y) * 1.1
        right.plot([0, top], [0, top], "k--", lw=0.8, label="calibrated")
        right.set(xlabel=f"predicted std, bin mean ({units})", ylabel=f"RMSE ({units})", title=f"{target}, {args.split} (n = {result['n']})")
        right.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
