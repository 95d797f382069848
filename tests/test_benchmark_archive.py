"""Benchmark runs spread over days and machines: kept run records, presets, paired 95 % intervals."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import pytest
import yaml

from bismap import sweep as benchmark
from bismap.io import InputError

REPO = Path(__file__).resolve().parents[1]


def _spec(tmp_path, **extra):
    """test_benchmark's spec (archive under tmp_path), flattened to its one preset."""
    from test_benchmark import _spec as flat_file_spec

    return benchmark.preset_spec(flat_file_spec(tmp_path, **extra), "default")


def _run_dir(root: Path, exp: str, naive: float, st: float) -> Path:
    """A finished results/<exp>/ with summary.json and one label-quality json."""
    models = [{"model": name, "headline": "miou", "miou_headline": v, "iou_per_class": {"road": v}}
              for name, v in (("source-only", 0.2), ("naive self-training", naive), ("BiSMAP self-training", st),
                              ("oracle", 0.6))]
    (root / exp / "labels").mkdir(parents=True)
    (root / exp / "summary.json").write_text(json.dumps({"experiment": exp, "models": models, "label_sets": []}))
    (root / exp / "labels" / "pseudo.quality.json").write_text(json.dumps({"coverage": 0.5, "accuracy": 0.9}))
    return root / exp


def test_t_quantiles_and_paired_interval():
    assert benchmark.t975(1) == 12.706 and benchmark.t975(2) == 4.303 and benchmark.t975(4) == 2.776
    assert benchmark.t975(30) == 2.042
    assert benchmark.t975(40) == pytest.approx(2.021, abs=1e-3)      # expansion beyond the table
    assert benchmark.t975(120) == pytest.approx(1.980, abs=1e-3)
    with pytest.raises(ValueError):
        benchmark.t975(0)
    d = benchmark.paired([0.01, 0.02, 0.03])                          # mean 0.02, sd 0.01, n 3
    half = 4.303 * 0.01 / math.sqrt(3)
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.02) and d["std"] == pytest.approx(0.01)
    assert (d["lo"], d["hi"]) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))
    five = benchmark.paired([1.0, 2.0, 3.0, 4.0, 5.0])               # sd sqrt(2.5), t(4) = 2.776
    assert five["hi"] - 3.0 == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert benchmark.paired([0.5])["lo"] is None and benchmark.paired([])["mean"] is None


def test_record_is_kept_atomically_with_provenance(tmp_path):
    spec = _spec(tmp_path)
    root = tmp_path / "results"
    _run_dir(root, "b_full_s1", 0.30, 0.33)
    path = benchmark.archive_run(spec, "full", 1, root, 812.34)
    assert path == tmp_path / "kept" / "default" / "b_full_s1.json"
    rec = json.loads(path.read_text())
    assert rec["experiment"] == "b_full_s1" and rec["seed"] == 1 and rec["wall_s"] == 812.3
    assert rec["cpu"] == benchmark.cpu_model() and rec["cpu"] and rec["commit"] and rec["date"].endswith("Z")
    assert rec["cpu_type"] == benchmark.cpu_type() and rec["cpu_type"].startswith(platform.machine())
    assert rec["quality"] == {"pseudo.quality.json": {"coverage": 0.5, "accuracy": 0.9}}
    assert rec["summary"]["models"][1]["model"] == "naive self-training"
    assert [p.name for p in path.parent.iterdir()] == ["b_full_s1.json"]   # no temporaries left
    # a rerun that changed nothing (snakemake had nothing to do) keeps the first record and its wall time
    benchmark.archive_run(spec, "full", 1, root, 3.0)
    assert json.loads(path.read_text())["wall_s"] == 812.3


def test_replacing_another_cpu_types_record_warns(tmp_path, capsys):
    spec = _spec(tmp_path)
    root = tmp_path / "results"
    _run_dir(root, "b_full_s1", 0.30, 0.33)
    path = benchmark.archive_run(spec, "full", 1, root, 5.0)
    path.write_text(json.dumps({**json.loads(path.read_text()), "cpu": "Other CPU", "summary": {}}))
    benchmark.archive_run(spec, "full", 1, root, 6.0)
    assert "held a run on Other CPU" in capsys.readouterr().out
    assert json.loads(path.read_text())["cpu"] == benchmark.cpu_model()


def test_aggregate_combines_records_from_two_folders_and_results(tmp_path):
    """Seed 1 kept here, seed 2 kept on another machine (a second folder), seed 3 only in results/."""
    spec = _spec(tmp_path)
    root = tmp_path / "results"
    for seed, (naive, st) in zip((1, 2, 3), ((0.30, 0.33), (0.32, 0.36), (0.28, 0.29))):
        _run_dir(root, f"b_full_s{seed}", naive, st)
    benchmark.archive_run(spec, "full", 1, root, 100.0)
    other = tmp_path / "other_machine"
    rec2 = benchmark.make_record(root / "b_full_s2", preset="default", ablation="full", seed=2, wall_s=200.0)
    rec2["cpu"] = "Other CPU @ 3.0GHz"
    (other / "default").mkdir(parents=True)
    (other / "default" / "b_full_s2.json").write_text(json.dumps(rec2))
    import shutil
    shutil.rmtree(root / "b_full_s1")
    shutil.rmtree(root / "b_full_s2")                  # results/ of seeds 1 and 2 are gone: only the records remain
    table = benchmark.aggregate(spec, root, [spec["archive"], other])
    full = table["ablations"]["full"]
    assert full["seeds"] == [1, 2, 3]
    diff = full["over_naive"]["BiSMAP self-training"]  # 0.03, 0.04, 0.01
    assert diff["n"] == 3 and diff["mean"] == pytest.approx(0.08 / 3)
    assert diff["hi"] - diff["mean"] == pytest.approx(4.303 * diff["std"] / math.sqrt(3))
    assert f"Other CPU @ 3.0GHz ({benchmark.cpu_type()})" in table["cpus"]
    assert f"{benchmark.cpu_model()} ({benchmark.cpu_type()})" in table["cpus"]
    assert any("results/ without a record" in c for c in table["cpus"])
    assert table["missing"] == ["b_k1_s1", "b_k1_s2", "b_k1_s3"]
    md = benchmark.table_markdown(table)
    assert "+2.7 [-1.1, +6.5] (n=3)" in md and "Other CPU @ 3.0GHz" in md and "3 runs (2 from kept records" in md


def test_cpu_type_reads_family_model_and_vector_extension(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw\n\n"
                    "processor\t: 1\ncpu family\t: 6\nmodel\t\t: 85\nflags\t\t: avx\n")
    real_path = benchmark.archive.Path
    monkeypatch.setattr(benchmark.archive, "Path", lambda p: info if p == "/proc/cpuinfo" else real_path(p))
    assert benchmark.cpu_type() == f"{platform.machine()} family 25 model 17 avx512"
    info.write_text(info.read_text().replace(" avx512f avx512bw", ""))
    assert benchmark.cpu_type() == f"{platform.machine()} family 25 model 17 avx2"
    assert benchmark.cpu_model() == "AMD EPYC"


def test_pairs_across_cpu_types_are_left_out(tmp_path):
    """Two machines rented under one name: seed 2's ablation ran on another CPU type than its reference."""
    spec = _spec(tmp_path)
    root = tmp_path / "results"
    for exp, naive, st in (("b_full_s1", 0.30, 0.33), ("b_full_s2", 0.32, 0.36), ("b_full_s3", 0.28, 0.29),
                           ("b_k1_s1", 0.30, 0.35), ("b_k1_s2", 0.32, 0.20), ("b_k1_s3", 0.28, 0.32)):
        _run_dir(root, exp, naive, st)
        ablation, seed = exp.split("_")[1], int(exp[-1])
        path = benchmark.archive_run(spec, ablation, seed, root, 1.0)
        rec = json.loads(path.read_text())
        rec.update(cpu="AMD EPYC", cpu_type="x86_64 family 25 model 1 avx2" if exp == "b_k1_s2"
                   else "x86_64 family 25 model 17 avx512")
        path.write_text(json.dumps(rec))
    table = benchmark.aggregate(spec, root)
    diff = table["ablations"]["k1"]["over_reference"]["BiSMAP self-training"]
    assert diff["n"] == 2 and diff["other_cpu"] == [2] and diff["mean"] == pytest.approx(0.025)
    assert table["ablations"]["k1"]["over_naive"]["BiSMAP self-training"]["n"] == 3  # within one run: always
    md = benchmark.table_markdown(table)
    assert "(n=2, 1 left out: other CPU)" in md and "differences pair only runs on one type" in md
    # a record older than cpu_type (name only) pairs with any type of that name, not with another name
    assert benchmark.archive.same_cpu(("AMD EPYC", None), ("AMD EPYC", "x86_64 family 25 model 1 avx2"))
    assert not benchmark.archive.same_cpu(("AMD EPYC", None), ("Intel Xeon", None))
    assert benchmark.archive.same_cpu(None, ("Intel Xeon", "x86_64 family 6 model 85 avx512"))


def test_missing_and_unfinished_runs_are_not_tabulated(tmp_path):
    spec = _spec(tmp_path)
    root = tmp_path / "results"
    _run_dir(root, "b_full_s1", 0.30, 0.33)
    _run_dir(root, "b_full_s2", 0.30, 0.33)
    (root / "b_full_s2" / benchmark.FORCE_MARKER).write_text("fit_prototypes\n")   # copied, not finished
    (root / "b_full_s3").mkdir()                                                     # started, no summary
    table = benchmark.aggregate(spec, root)
    assert table["ablations"]["full"]["seeds"] == [1]
    assert table["missing"][:2] == ["b_full_s2", "b_full_s3"]
    assert table["ablations"]["full"]["over_naive"]["BiSMAP self-training"]["lo"] is None   # n = 1: no interval


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"),
                                              (json.dumps({"experiment": "b_full_s1", "summary": {}}),
                                               "not a run summary"),
                                              (json.dumps({"experiment": "b_full_s9", "summary": {"models": []}}),
                                               "not the benchmark record of b_full_s1")])
def test_corrupt_record_is_a_one_line_error_naming_the_file(tmp_path, content, message):
    spec = _spec(tmp_path)
    path = tmp_path / "kept" / "default" / "b_full_s1.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(InputError) as err:
        benchmark.aggregate(spec, tmp_path / "results")
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_corrupt_results_summary_names_the_file(tmp_path):
    spec = _spec(tmp_path)
    (tmp_path / "results" / "b_full_s1").mkdir(parents=True)
    (tmp_path / "results" / "b_full_s1" / "summary.json").write_text("[1, 2")
    with pytest.raises(InputError, match="b_full_s1/summary.json: not valid JSON"):
        benchmark.aggregate(spec, tmp_path / "results")


def test_shipped_benchmark_file_presets_and_ablation_seeds():
    spec = benchmark.load_spec(REPO / "configs" / "benchmark.yaml")
    assert list(spec["presets"]) == ["default", "suburb", "label_shift"]
    default, suburb = benchmark.preset_spec(spec, "default"), benchmark.preset_spec(spec, "suburb")
    runs = benchmark.runs(default)
    assert [s for a, s in runs if a == "full"] == [100, 101, 102, 103, 104]
    for ablation in ("no_maps", "no_stm", "no_consistency", "no_distillation"):
        assert [s for a, s in runs if a == ablation] == [100, 101, 102]
    assert spec["ablations"]["no_distillation"] == {"distillation.rounds": 0}
    assert benchmark.runs(suburb) == [("full", 100), ("full", 101), ("full", 102)]
    assert suburb["configfiles"] == ["configs/synthetic_suburb.yaml"] and suburb["out"].endswith("suburb")
    assert yaml.safe_load((REPO / "configs" / "synthetic_suburb.yaml").read_text())["synthetic"]["preset"] == "suburb"
    assert benchmark.experiment_name(suburb["prefix"], "full", 100) == "bench_suburb_full_s100"
    shifted = benchmark.preset_spec(spec, "label_shift")
    assert benchmark.runs(shifted) == [("full", 100), ("full", 101), ("full", 102)]
    assert shifted["configfiles"] == ["configs/synthetic_label_shift.yaml"]
    # any defined ablation still runs when named
    assert benchmark.runs(default, ablations=["gmm_k1"]) == [("gmm_k1", s) for s in (100, 101, 102)]


def test_bad_preset_entries_are_errors_naming_the_file(tmp_path):
    with pytest.raises(InputError, match="benchmark.yaml: preset 'x': ablations \\['nope'\\]"):
        _spec(tmp_path, presets={"x": {"ablations": ["nope"]}})
    with pytest.raises(InputError, match="unknown keys \\['seed'\\]"):
        _spec(tmp_path, presets={"x": {"seed": [1]}})


def test_cli_aggregate_only_and_archive_existing(tmp_path, monkeypatch, capsys):
    import argparse

    from bismap.cli import benchmark as cli

    spec_file = tmp_path / "benchmark.yaml"
    spec_file.write_text(yaml.safe_dump({
        "prefix": "b", "out": str(tmp_path / "bench"), "seeds": [1, 2], "archive": str(tmp_path / "kept"),
        "ablations": {"full": {}}, "presets": {"default": {}, "second": {"prefix": "c", "seeds": [1]}}}))
    root = tmp_path / "results"
    _run_dir(root, "b_full_s1", 0.30, 0.33)
    _run_dir(root, "c_full_s1", 0.20, 0.25)
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["benchmark", "--spec", str(spec_file), "--results", str(root), "--archive-existing"])
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "kept").rglob("*.json")) == ["b_full_s1.json", "c_full_s1.json"]
    import shutil
    shutil.rmtree(root)
    args = parser.parse_args(["benchmark", "--spec", str(spec_file), "--results", str(root), "--aggregate-only"])
    assert args.func(args) == 0
    table = json.loads((tmp_path / "bench" / "second" / "table.json").read_text())
    assert table["ablations"]["full"]["seeds"] == [1] and table["preset"] == "second"
    default = json.loads((tmp_path / "bench" / "default" / "table.json").read_text())
    assert default["missing"] == ["b_full_s2"]
    # --archive: another CPU type's records in their own folder, tabulated without the file's archive
    _run_dir(root, "b_full_s2", 0.40, 0.44)
    args = parser.parse_args(["benchmark", "--spec", str(spec_file), "--results", str(root), "--archive",
                              str(tmp_path / "other_cpu"), "--preset", "default", "--archive-existing"])
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "other_cpu").rglob("*.json")) == ["b_full_s2.json"]
    shutil.rmtree(root)
    args = parser.parse_args(["benchmark", "--spec", str(spec_file), "--results", str(root), "--archive",
                              str(tmp_path / "other_cpu"), "--preset", "default", "--aggregate-only"])
    assert args.func(args) == 0
    default = json.loads((tmp_path / "bench" / "default" / "table.json").read_text())
    assert default["ablations"]["full"]["seeds"] == [2] and default["missing"] == ["b_full_s1"]


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_preset_runs_dry_run_with_their_config_files(tmp_path):
    """The suburb preset's files and the no_distillation overlay pass the schema and plan the expected stages."""
    from bismap.sweep.plan import snakemake_cmd
    from test_workflow import dry_run, make_copy

    spec = benchmark.load_spec(REPO / "configs" / "benchmark.yaml")
    suburb = benchmark.preset_spec(spec, "suburb")
    cmd = snakemake_cmd("snakemake", suburb, Path("o.yaml"), [])
    assert cmd[cmd.index("--configfile"):] == ["--configfile", "config.yaml", "configs/synthetic_suburb.yaml", "o.yaml"]
    wf = make_copy(tmp_path / "wf")
    counts = dry_run(wf, "configs/tiny.yaml", "configs/synthetic_suburb.yaml")
    assert counts["synthetic_data"] == 1 and counts["distillation"] >= 1
    overlay = benchmark.overlay(benchmark.preset_spec(spec, "default"), "no_distillation", 100)
    path = benchmark.write_overlay(overlay, tmp_path / "o.yaml")
    counts = dry_run(wf, "configs/tiny.yaml", str(path))
    assert "distillation" not in counts and "teacher_labels" not in counts and counts["self_training"] == 1
