"""`bismap benchmark`: overlays per (ablation, seed) and the mean/std aggregation of summary.json files."""
from __future__ import annotations

import json
import math
import os

import pytest
import yaml

from bismap import sweep as benchmark
from bismap.io import InputError
from bismap.sweep.copies import copied_from


def _spec(tmp_path, **extra):
    spec = {"prefix": "b", "out": str(tmp_path / "bench"), "seeds": [1, 2, 3], "seed_keys": ["train.seed"],
            "ablations": {"full": {}, "k1": {"prototypes.components": 1}}, "archive": str(tmp_path / "kept"),
            "base_config": str(tmp_path / "config.yaml")}
    (tmp_path / "config.yaml").write_text("prototypes: {components: 8}\n")
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
    assert f"--configfile {tmp_path / 'config.yaml'}" in capsys.readouterr().out


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
    assert (json.loads((tmp_path / "bench" / "table.json").read_text())
            ["ablations"]["full"]["models"]["oracle"]["n"] == 3)


def test_mean_std_edge_cases():
    assert benchmark.mean_std([]) == (None, None)
    assert benchmark.mean_std([None, 0.5]) == (0.5, 0.0)
    m, s = benchmark.mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(math.sqrt(5 / 3))


H = "output_file\tdate\trule\tlog-file(s)\tinput-file(s)\tshellcmd\tstatus\tplan\n"
D = "Tue Dec  1 02:11:27 2026"
# What `snakemake --detailed-summary` (Snakemake 9) prints for `prototypes.components: 1` against a finished run.
SUMMARY_K1 = ("Building DAG of jobs...\n" + H
              + f"results/x/summary.json\t{D}\treport\t-\ta.json\t\tok\tupdate pending\n"
              + f"results/x/pseudo/quality.json\t{D}\tpseudo_labels\tlogs/p.log\tm.pt,g.h5\t\tok\tupdate pending\n"
              + f"results/x/prototypes/gmm.h5\t{D}\tfit_prototypes\tlogs/f.log\tbank.h5\t\tparams changed\t"
                "update pending\n"
              + f"results/x/models/warmup.pt\t{D}\twarmup\tlogs/w.log\tsrc\t\tok\tno update\n")
# ... when outputs are missing.
SUMMARY_MISSING = (H + "results/x/models/warmup.pt\t-\twarmup\t-\t-\t-\tmissing\tupdate pending\n"
                   + "results/x/data/done\t-\tsynthetic_data\t-\t-\t-\tmissing\tupdate pending\n"
                   + f"results/x/models/st.pt\t{D}\tself_training\tlogs/s.log\ta\t\tok\tupdate pending\n")
# ... for a finished run Snakemake keeps no provenance records of (input-file(s) is "-").
SUMMARY_NO_RECORDS = (H + f"results/x/prototypes/gmm.h5\t{D}\tfit_prototypes\t-\t-\t-\tok\tno update\n")


def test_rerun_roots_reads_snakemake_summary():
    assert benchmark.rerun_roots(SUMMARY_K1) == (["fit_prototypes"], [], False)
    assert benchmark.rerun_roots(SUMMARY_MISSING) == (["synthetic_data", "warmup"], ["synthetic_data", "warmup"], False)
    assert benchmark.rerun_roots(SUMMARY_NO_RECORDS) == ([], [], True)
    assert benchmark.rerun_roots("Building DAG of jobs...\n") == ([], [], False)


FAKE_SNAKEMAKE = """#!/usr/bin/env python3
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if "--detailed-summary" in args:
    print(os.environ["FAKE_SUMMARY"])
    sys.exit(0)
sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""


def _fake_snakemake(tmp_path, monkeypatch, summary_text):
    """A `snakemake` that logs its arguments and answers --detailed-summary with summary_text."""
    exe = tmp_path / "snakemake"
    exe.write_text(FAKE_SNAKEMAKE)
    exe.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_SUMMARY", summary_text)
    return _spec(tmp_path), exe, log


def test_ablation_reuses_reference_run(tmp_path, monkeypatch):
    """An ablation starts from a copy of the finished `full` run and forces what the dry run names."""
    spec, exe, log = _fake_snakemake(tmp_path, monkeypatch, SUMMARY_K1)
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
    assert "--detailed-summary" in probe and probe[probe.index("--configfile") + 2].endswith("probe_b_k1_s1.yaml")
    probe_cfg = yaml.safe_load(open(probe[probe.index("--configfile") + 2]))
    assert probe_cfg["experiment"] == "b_full_s1" and probe_cfg["prototypes"] == {"components": 1}
    for call in (first, second):
        assert call[call.index("--forcerun") + 1:] == ["fit_prototypes"]
    copied = root / "b_k1_s1" / "models" / "warmup.pt"
    assert copied.read_bytes() == b"w" and copied.stat().st_mtime_ns == before  # times kept: no mtime reruns
    assert not (root / "b_k1_s1" / benchmark.FORCE_MARKER).exists()


def test_stale_copy_is_copied_again(tmp_path, monkeypatch):
    """A copy outlives neither a config change nor a rebuild of a stage it did not rerun itself."""
    spec, exe, log = _fake_snakemake(tmp_path, monkeypatch, SUMMARY_K1)
    root = tmp_path / "results"
    _summary(root, "b_full_s1", {"source-only": 0.2}, [0.1])
    (root / "b_full_s1" / "models").mkdir()
    warmup = root / "b_full_s1" / "models" / "warmup.pt"
    warmup.write_bytes(b"w")
    copy = root / "b_k1_s1"

    def run():
        benchmark.run_all(spec, ablations=["k1"], seeds=[1], snakemake=str(exe), results_root=root)
        return sum("--detailed-summary" in json.loads(line) for line in log.read_text().splitlines())

    assert run() == 1 and (copy / "models" / "warmup.pt").read_bytes() == b"w"
    (copy / "models" / "prototypes.pt").write_bytes(b"rerun by k1")   # what the ablation built itself
    assert run() == 1 and (copy / "models" / "prototypes.pt").exists()   # unchanged: the copy is kept

    warmup.write_bytes(b"w2")   # the reference rebuilt a stage the ablation only copied
    os.utime(warmup, ns=(warmup.stat().st_atime_ns, warmup.stat().st_mtime_ns + 10**9))
    assert run() == 2 and (copy / "models" / "warmup.pt").read_bytes() == b"w2"
    assert not (copy / "models" / "prototypes.pt").exists()
    assert not (copy / benchmark.FORCE_MARKER).exists()   # the fake run succeeded

    (tmp_path / "config.yaml").write_text("prototypes: {components: 4}\n")   # a default changed
    assert run() == 3 and copied_from(copy) == "b_full_s1"


def test_ablation_without_reference_runs_from_scratch(tmp_path, monkeypatch):
    spec, exe, log = _fake_snakemake(tmp_path, monkeypatch, SUMMARY_MISSING)
    root = tmp_path / "results"
    benchmark.run_all(spec, ablations=["k1"], seeds=[1], snakemake=str(exe), results_root=root)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 1 and "--forcerun" not in calls[0] and not (root / "b_k1_s1").exists()


def test_reference_without_provenance_is_not_reused(tmp_path, monkeypatch):
    """A reference run Snakemake has no records for cannot show a params change: run from scratch."""
    spec, exe, log = _fake_snakemake(tmp_path, monkeypatch, SUMMARY_NO_RECORDS)
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
    # 95 % t-interval: 2.667 ± t(0.975, 2) * 1.528 / sqrt(3) = 2.667 ± 4.303 * 0.882
    assert "+2.7 [-1.1, +6.5] (n=3)" in md and "| full | 25 | 32 |" in md
    text = benchmark.text_plot(benchmark.aggregate(spec, root), width=50)
    assert "full: oracle" in text and "|" + "#" * 30 + " 60.0 ± 0.0 (3)" in text
