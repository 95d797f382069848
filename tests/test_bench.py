"""The benchmark suite runs end to end at its smallest sizes (no timing is asserted)."""
from __future__ import annotations

import math
import re

import pytest


@pytest.mark.slow
def test_bench_all_tiny_writes_every_section(tmp_path) -> None:
    from bismap.bench.__main__ import main

    out = tmp_path / "perf.md"
    assert main(["all", "--tiny", "--no-bf16", "--out", str(out)]) == 0
    text = out.read_text()
    for title in ("GMM fit against scikit-learn", "GMM scoring against the network forward", "Training step",
                  "Data loading", "Workflow", "Preflight", "Training memory at the paper settings"):
        assert f"## {title}" in text
    assert "Measured by `python -m bismap.bench all --tiny" in text and "Machine:" in text
    rows = [line for line in text.splitlines() if line.startswith("| 2000 |")]
    assert len(rows) == 1
    speedup, rel = float(rows[0].split("|")[7]), float(rows[0].split("|")[10])
    assert math.isfinite(speedup) and speedup > 0 and rel < 1e-4
    overheads = re.findall(r"^\| (?:bare|self_training) \| off \| [^|]+\| [^|]+\| ([^|]+)\|", text, re.M)
    assert len(overheads) == 2 and all(math.isfinite(float(v)) for v in overheads)
    assert re.search(r"^\| 32x64 \| 4 \| 1 \| [^|]+\| [^|]+\| 0 \|$", text, re.M), text  # preflight row
    assert "| 32x64 | 16 |" in text and text.count("| 0 |") >= 1  # scoring row, no label outside tolerance
    assert re.search(r"^\| self_training \| resnet101 \| 3 \|", text, re.M), text  # memory row


def test_critical_path_and_stage_times(tmp_path) -> None:
    from bismap.bench.workflow import critical_path, rule_graph, stage_times

    dot = 'digraph {\n\t0[label = "warmup", color = "0.1 0.6 0.85"];\n\t1[label = "teacher_labels"];\n' \
          '\t2[label = "evaluate"];\n\t0 -> 1\n\t1 -> 2\n\t0 -> 2\n}'
    nodes, edges = rule_graph(dot)
    assert sorted(nodes.values()) == ["evaluate", "teacher_labels", "warmup"] and ("warmup", "teacher_labels") in edges
    for name, s in (("warmup", 10.0), ("teacher_labels_r1", 4.0), ("teacher_labels_r2", 5.0), ("evaluate_final", 1.0)):
        (tmp_path / f"{name}.tsv").write_text(f"s\th:m:s\n{s}\t0:00:01\n")
    times = stage_times(tmp_path, list(nodes.values()))
    assert times == {"warmup": 10.0, "teacher_labels": 9.0, "evaluate": 1.0}
    total, path = critical_path(times, edges)
    assert total == 20.0 and path == ["warmup", "teacher_labels", "evaluate"]


def test_job_graph_names_jobs_by_their_benchmark_files(tmp_path) -> None:
    from bismap.bench.workflow import critical_path, job_graph

    dot = ('\t0[label = "self_training"];\n\t1[label = "teacher_labels\\nr: 1"];\n\t2[label = "distillation"];\n'
           '\t3[label = "preflight\\npart: val"];\n\t4[label = "evaluate\\nmodel: distillation_r1"];\n'
           '\t0 -> 1\n\t1 -> 2\n\t0 -> 2\n\t2 -> 4\n\t3 -> 4\n')
    for name, s in (("self_training", 5.0), ("teacher_labels_r1", 2.0), ("distillation_r1", 3.0),
                    ("preflight_val", 1.0), ("evaluate_distillation_r1", 0.5)):
        (tmp_path / f"{name}.tsv").write_text(f"s\th:m:s\n{s}\t0:00:01\n")
    times, edges = job_graph(dot, tmp_path)
    assert times == {"self_training": 5.0, "teacher_labels_r1": 2.0, "distillation_r1": 3.0, "preflight_val": 1.0,
                     "evaluate_distillation_r1": 0.5}
    assert critical_path(times, edges) == (10.5, ["self_training", "teacher_labels_r1", "distillation_r1",
                                                   "evaluate_distillation_r1"])


def test_memory_counts_what_training_keeps() -> None:
    """Saved activations from the autograd graph: checkpointing keeps a fraction, bf16 half of fp32, and
    the self-training row counts its three training forwards and the EMA copy."""
    import torch

    from bismap.bench import memory
    from conftest import TINY_MODEL

    full = memory.saved_bytes(TINY_MODEL, 2, (64, 64), torch.float32, False)
    ckpt = memory.saved_bytes(TINY_MODEL, 2, (64, 64), torch.float32, True)
    half = memory.saved_bytes(TINY_MODEL, 2, (64, 64), torch.bfloat16, False)
    assert 0 < ckpt < 0.7 * full and 0.4 * full < half < 0.75 * full
    # one 2x3x64x64 fp32 input and its upsampled 19-class logits alone are more than this
    assert full > 2 * 19 * 64 * 64 * 4
    cfg = {"model": TINY_MODEL, "train": {"batch_size": 2}, "augment": {"crop": [32, 32]},
           "self_training": {"consistency": {"weight": 1.0}},
           "distillation": {"student_backbone": None, "kd": {"weight": 0.0}}}
    rows = {r["stage"]: r for r in memory.measure(cfg)}
    params = memory.parameter_bytes(TINY_MODEL) / memory.GIB
    assert rows["self_training"]["forwards"] == 3 and rows["self_training"]["state_gib"] == pytest.approx(4 * params)
    assert rows["distillation"]["state_gib"] == pytest.approx(3 * params)  # no kd: no teacher in memory
    assert rows["self_training"]["fp32_gib"] > rows["warmup"]["fp32_gib"] > rows["warmup"]["fp32_ckpt_gib"]


@pytest.mark.slow  # about 20 s
def test_bench_paper_tiny_replaces_its_section_in_place(tmp_path) -> None:
    """The paper part at its smallest sizes: every training stage, the label stages run by the stage
    functions, loader workers; written into an existing file it replaces only its own section."""
    from bismap.bench.__main__ import main

    out = tmp_path / "perf.md"
    head = "# Performance\n\n## Training step\n\nkept\n\n"
    out.write_text(head + "## What a GPU node needs at the paper settings\n\nold\n")
    assert main(["paper", "--tiny", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(head + "## What a GPU node needs") and "old" not in text
    assert "Measured by `python -m bismap.bench paper --tiny" in text
    for stage in ("warmup", "oracle", "self_training", "distillation"):
        m = re.search(rf"^\| {stage} \| \w+ \| (\d) \+ (\d) \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
        assert m and float(m.group(3)) > 0 and float(m.group(4)) > 0, text
    assert re.search(r"^\| self_training \| \w+ \| 3 \+ 1 \|", text, re.M), text  # consistency: EMA teacher
    for stage, size in (("source_features", "40x72"), ("pseudo_labels", "32x64"), ("teacher_labels", "32x64"),
                        ("evaluate", "32x64")):
        assert re.search(rf"^\| {stage} \| {size} \| [\d.]+ \| [\d.]+ \|", text, re.M), text
    assert re.search(r"^\| [\d.]+ s \(this machine, measured\) \| \d+ \|$", text, re.M), text
