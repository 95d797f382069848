"""`bismap benchmark`: overlays per (ablation, seed) and the mean/std aggregation of summary.json files."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from bismap import benchmark
from bismap.io import InputError


def _spec(tmp_path, **extra):
    spec = {"prefix": "b", "out": str(tmp_path / "bench"), "seeds": [1, 2, 3], "seed_keys": ["train.seed"],
            "ablations": {"full": {}, "k1": {"prototypes.components": 1}}}
    spec.update(extra)
    path = tmp_path / "benchmark.yaml"
    path.write_text(yaml.safe_dump(spec))
    return benchmark.load_spec(path)


def _summary(root, exp, values, car):
    models = [{"model": name, "headline": "miou", "miou_headline": v, "miou": v,
               "iou_per_class": {"road": 0.9, "car": c}} for (name, v), c in zip(values.items(), car)]
    (root / exp).mkdir(parents=True)
    (root / exp / "summary.json").write_text(json.dumps({"experiment": exp, "models": models}))


def test_overlay_sets_experiment_seed_and_overrides(tmp_path):
    spec = _spec(tmp_path, seed_keys=["train.seed", "synthetic.seed"])
    cfg = benchmark.overlay(spec, "k1", 2)
    assert cfg == {"experiment": "b_k1_s2", "train": {"seed": 2}, "synthetic": {"seed": 2},
                   "prototypes": {"components": 1}}
    assert benchmark.runs(spec) == [("full", 1), ("k1", 1), ("full", 2), ("k1", 2), ("full", 3), ("k1", 3)]
    with pytest.raises(InputError):
        benchmark.runs(spec, ablations=["nope"])


def test_dry_run_writes_overlays(tmp_path, capsys):
    spec = _spec(tmp_path)
    names = benchmark.run_all(spec, seeds=[1], dry_run=True, snakemake="snakemake")
    assert names == ["b_full_s1", "b_k1_s1"]
    overlay = yaml.safe_load((tmp_path / "bench" / "configs" / "b_k1_s1.yaml").read_text())
    assert overlay["prototypes"] == {"components": 1} and overlay["experiment"] == "b_k1_s1"
    assert "--configfile config.yaml" in capsys.readouterr().out


def test_aggregate_mean_std(tmp_path):
    spec = _spec(tmp_path)
    root = tmp_path / "results"
    _summary(root, "b_full_s1", {"source-only": 0.2, "oracle": 0.5}, [0.1, 0.4])
    _summary(root, "b_full_s2", {"source-only": 0.3, "oracle": 0.6}, [0.2, 0.5])
    _summary(root, "b_full_s3", {"source-only": 0.4, "oracle": 0.7}, [0.3, 0.6])
    _summary(root, "b_k1_s1", {"source-only": 0.25, "oracle": 0.5}, [0.1, 0.4])
    table = benchmark.aggregate(spec, root)
    full = table["ablations"]["full"]["models"]
    assert full["source-only"]["mean"] == pytest.approx(0.3)
    assert full["source-only"]["std"] == pytest.approx(0.1)  # sample std of 0.2, 0.3, 0.4
    assert full["oracle"]["mean"] == pytest.approx(0.6)
    assert full["source-only"]["classes"]["car"]["mean"] == pytest.approx(0.2)
    assert full["source-only"]["classes"]["road"]["std"] == pytest.approx(0.0)
    assert list(full) == ["source-only", "oracle"]
    k1 = table["ablations"]["k1"]
    assert k1["seeds"] == [1] and k1["models"]["source-only"]["std"] == 0.0
    assert table["missing"] == ["b_k1_s2", "b_k1_s3"]
    paths = benchmark.write_outputs(table, tmp_path / "bench")
    assert all(p.is_file() for p in paths)
    md = (tmp_path / "bench" / "table.md").read_text()
    assert "30.0 ± 10.0" in md and "b_k1_s2" in md
    assert json.loads((tmp_path / "bench" / "table.json").read_text())["ablations"]["full"]["models"]["oracle"]["n"] == 3


def test_mean_std_edge_cases():
    assert benchmark.mean_std([]) == (None, None)
    assert benchmark.mean_std([None, 0.5]) == (0.5, 0.0)
    m, s = benchmark.mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(math.sqrt(5 / 3))
