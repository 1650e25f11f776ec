"""``crystalframes models``: what this installation can build, as a table or as JSON."""

from __future__ import annotations

import json

from crystalframes.models import BACKBONES, build_model, num_parameters


def test_models_json_lists_every_backbone_frame_and_global_frame_with_its_size(run):
    from crystalframes.frames import FRAMES, GLOBAL_FRAMES

    code, out, err = run("models", "--preset", "cpu_small", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert isinstance(rows, list) and all("spec" in r for r in rows)
    expected = {(b, f, g) for b in BACKBONES for f, cls in FRAMES.items() for g in (GLOBAL_FRAMES if cls.composes_with_global else [None])
                if cls.needs <= BACKBONES[b].provides}  # every frame whose needs the backbone provides
    assert {(r["backbone"], r["frame"], r["global_frame"]) for r in rows} == expected and len(rows) == len(expected) >= 16
    assert len(BACKBONES) >= 3 and {r["backbone"] for r in rows} == set(BACKBONES)
    assert not any(r["backbone"] == "schnet" and r["frame"] in ("max", "weighted_pca") for r in rows)  # no attention
    for r in rows:
        assert r["preset"] == "cpu_small" and r["spec"].endswith("@cpu_small")
        assert r["parameters"] == num_parameters(build_model(r["spec"]))
        assert r["parameters"] > 1000
    spframe = next(r for r in rows if r["spec"] == "ecomformer:spframe_quaternion+polar@cpu_small")
    assert spframe["needs"] == ["features"] and set(spframe["declared_dependences"]) == {"supercell", "basis_change"}


def test_models_table_and_mistakes(run):
    code, out, _ = run("models", "--backbone", "crystalformer", "--preset", "cpu_small")
    assert code == 0 and "crystalformer:max@cpu_small" in out and "ecomformer" not in out.split("presets")[0]
    code, _, err = run("models", "--backbone", "nonsense")
    assert code == 2 and "unknown backbone" in err
    code, _, err = run("models", "--preset", "no_such_preset")
    assert code == 2 and "no preset 'no_such_preset'" in err
