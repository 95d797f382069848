"""`bismap benchmark`: overlays per (ablation, seed) and the mean/std aggregation of summary.json files."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from bismap import sweep as benchmark
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
    # paired with full's seed-1 run only (0.25 - 0.2), not with full's 3-seed mean
    assert k1["over_reference"]["source-only"]["mean"] == pytest.approx(0.05)
    assert k1["over_reference"]["source-only"]["n"] == 1
    assert table["missing"] == ["b_k1_s2", "b_k1_s3"]
    assert full == table["ablations"]["full"]["models"]
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


# What Snakemake 9 prints for a dry run of `prototypes.components: 1` against a finished run.
DRY_RUN_K1 = """Job stats:
job               count
--------------  -------
fit_prototypes        1
pseudo_labels         1
total                 2

Reasons:
    (check individual jobs above for details)
    input files updated by another job:
        all, distillation, evaluate, pseudo_labels, report, self_training, teacher_labels
    params have changed since last execution:
        fit_prototypes
Some jobs were triggered by provenance information, see 'reason' section in the rule displays above.
"""

DRY_RUN_MISSING = """Reasons:
    (check individual jobs above for details)
    input files updated by another job:
        all, warmup
    output files have to be generated:
        synthetic_data, warmup
This was a dry-run (flag -n).
"""


def test_rerun_roots_reads_snakemake_reasons():
    assert benchmark.rerun_roots(DRY_RUN_K1) == (["fit_prototypes"], False)
    assert benchmark.rerun_roots(DRY_RUN_MISSING) == (["synthetic_data", "warmup"], True)
    assert benchmark.rerun_roots("Nothing to be done (all requested files are present and up to date).") == ([], False)


FAKE_SNAKEMAKE = """#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if "--dry-run" in args:
    print(os.environ["FAKE_DRY_RUN"])
    sys.exit(0)
sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""


def _fake_snakemake(tmp_path, monkeypatch, dry_run_text):
    """A `snakemake` that logs its arguments and answers dry runs with dry_run_text."""
    exe = tmp_path / "snakemake"
    exe.write_text(FAKE_SNAKEMAKE)
    exe.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_DRY_RUN", dry_run_text)
    return _spec(tmp_path), exe, log


def test_ablation_reuses_reference_run(tmp_path, monkeypatch):
    """An ablation starts from a copy of the finished `full` run and forces what the dry run names."""
    spec, exe, log = _fake_snakemake(tmp_path, monkeypatch, DRY_RUN_K1)
    root = tmp_path / "results"
    _summary(root, "b_full_s1", {"source-only": 0.2}, [0.1])
    (root / "b_full_s1" / "models").mkdir()
    (root / "b_full_s1" / "models" / "warmup.pt").write_bytes(b"w")
    before = (root / "b_full_s1" / "models" / "warmup.pt").stat().st_mtime_ns

    # a failed run keeps the copy and the marker: the next attempt still forces fit_prototypes
    monkeypatch.setenv("FAKE_RC", "1")
    with pytest.raises(InputError, match="b_k1_s1 failed"):
        benchmark.run_all(spec, ablations=["k1"], seeds=[1], snakemake=str(exe), results_root=root)
    assert (root / "b_k1_s1" / benchmark.FORCE_MARKER).read_text().split() == ["fit_prototypes"]
    assert not (root / "b_k1_s1" / "summary.json").exists()  # the reference's table is not copied
    (root / "b_k1_s1" / "summary.json").write_text((root / "b_full_s1" / "summary.json").read_text())
    assert "b_k1_s1" in benchmark.aggregate(spec, root)["missing"]  # unfinished (marker): not tabulated
    monkeypatch.setenv("FAKE_RC", "0")
    assert benchmark.run_all(spec, ablations=["k1"], seeds=[1], snakemake=str(exe), results_root=root) == ["b_k1_s1"]

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    probe, first, second = calls
    assert "--dry-run" in probe and probe[probe.index("--configfile") + 2].endswith("probe_b_k1_s1.yaml")
    probe_cfg = yaml.safe_load(open(probe[probe.index("--configfile") + 2]))
    assert probe_cfg["experiment"] == "b_full_s1" and probe_cfg["prototypes"] == {"components": 1}
    for call in (first, second):
        assert call[call.index("--forcerun") + 1:] == ["fit_prototypes"]
    copied = root / "b_k1_s1" / "models" / "warmup.pt"
    assert copied.read_bytes() == b"w" and copied.stat().st_mtime_ns == before  # times kept: no mtime reruns
    assert not (root / "b_k1_s1" / benchmark.FORCE_MARKER).exists()


def test_ablation_without_reference_runs_from_scratch(tmp_path, monkeypatch):
    spec, exe, log = _fake_snakemake(tmp_path, monkeypatch, DRY_RUN_MISSING)
    root = tmp_path / "results"
    benchmark.run_all(spec, ablations=["k1"], seeds=[1], snakemake=str(exe), results_root=root)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 1 and "--forcerun" not in calls[0] and not (root / "b_k1_s1").exists()


def test_reference_without_provenance_is_not_reused(tmp_path, monkeypatch):
    """A reference run Snakemake has no records for cannot show a params change: run from scratch."""
    spec, exe, log = _fake_snakemake(tmp_path, monkeypatch, "Nothing to be done.\n"
                                     "16 jobs have missing provenance/metadata so that it in part cannot be used")
    root = tmp_path / "results"
    _summary(root, "b_full_s1", {"source-only": 0.2}, [0.1])
    benchmark.run_all(spec, ablations=["k1"], seeds=[1], snakemake=str(exe), results_root=root)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 2 and "--forcerun" not in calls[1] and not (root / "b_k1_s1").exists()


def test_gap_and_paired_difference_to_naive(tmp_path):
    spec = _spec(tmp_path)
    root = tmp_path / "results"
    for seed, (naive, st) in zip((1, 2, 3), ((0.30, 0.33), (0.32, 0.36), (0.28, 0.29))):
        _summary(root, f"b_full_s{seed}", {"source-only": 0.2, "naive self-training": naive,
                                           "BiSMAP self-training": st, "oracle": 0.6}, [0.1] * 4)
    full = benchmark.aggregate(spec, root)["ablations"]["full"]
    diff = full["over_naive"]["BiSMAP self-training"]
    assert diff["mean"] == pytest.approx(0.0266667, abs=1e-6)  # mean of 0.03, 0.04, 0.01
    assert diff["std"] == pytest.approx(math.sqrt(((0.03 - 0.02667) ** 2 + (0.04 - 0.02667) ** 2
                                                   + (0.01 - 0.02667) ** 2) / 2), abs=1e-4)
    # gap recovered from the means: (0.3267 - 0.2) / (0.6 - 0.2)
    assert full["gap_recovered"]["BiSMAP self-training"] == pytest.approx((0.98 / 3 - 0.2) / 0.4)
    md = benchmark.table_markdown(benchmark.aggregate(spec, root))
    assert "+2.7 ± 1.5" in md and "| full | 25 | 32 |" in md
    text = benchmark.text_plot(benchmark.aggregate(spec, root), width=50)
    assert "full: oracle" in text and "|" + "#" * 30 + " 60.0 ± 0.0 (3)" in text
