"""Faults and bad inputs a hostile but realistic user tried, one test each.

Kills are simulated by an exception at a chosen iteration (the trainer's resume path is the same as
after kill -9) or by a real SIGKILL of a child process; disk full by monkeypatching the write.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import RUNTIME, constant_checkpoint, schema_defaults
from test_stages_training import AUGMENT, DATA, MODEL, RUNTIME_T, make_cityscapes, make_gta, train_cfg


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# 1. A resume ignores edits inside a data folder


def test_in_place_edit_of_a_source_label_refuses_the_resume(tmp_path, monkeypatch, capsys) -> None:
    import bismap.method.losses
    from bismap.engine.fingerprint import spec_signature
    from bismap.stages import warmup

    source = make_gta(tmp_path / "gta5")
    kw = dict(source=source, model=MODEL, train=train_cfg(3), augment=AUGMENT, data=DATA,
              runtime={**RUNTIME_T, "checkpoint_every": 1}, threads=1)
    real = bismap.method.losses.weighted_cross_entropy
    calls = {"n": 0}

    def dies_at_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    out = tmp_path / "warmup.pt"
    monkeypatch.setattr(bismap.method.losses, "weighted_cross_entropy", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        warmup.run(out_checkpoint=out, **kw)
    monkeypatch.setattr(bismap.method.losses, "weighted_cross_entropy", real)
    assert Path(str(out) + ".resume.pt").exists()

    # overwrite one label in place: same name, same size, same file count, folder mtime restored
    labels = Path(source["root"]) / "labels"
    folder_times = os.stat(labels)
    before = spec_signature(source)
    label = labels / "00001.png"
    ids = np.array(Image.open(label))
    ids[:, :] = ids[::-1, ::-1]
    size = label.stat().st_size
    Image.fromarray(ids).save(label)
    os.utime(labels, ns=(folder_times.st_atime_ns, folder_times.st_mtime_ns))
    assert spec_signature(source) != before, (size, label.stat().st_size)

    capsys.readouterr()
    warmup.run(out_checkpoint=out, **kw)
    text = capsys.readouterr().out
    assert "not resuming from" in text and "source changed" in text, text
    assert "resuming from" not in text.replace("not resuming from", "")
    clean = tmp_path / "clean.pt"
    warmup.run(out_checkpoint=clean, **kw)
    a, b = torch.load(clean, weights_only=True)["model"], torch.load(out, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# helpers: a stage run the way scripts/*.py run it, and a child process killed with SIGKILL


def _smk(tmp_path: Path, outputs: list[Path], rule: str = "demo"):
    from types import SimpleNamespace

    return SimpleNamespace(log=[str(tmp_path / "logs" / f"{rule}.log")], rule=rule, threads=1,
                           output=[str(p) for p in outputs])


def _console(monkeypatch):
    import io
    import sys

    buf = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", buf)
    return buf


KILLED_WRITER = r"""
import os, signal, sys
import numpy as np, torch
from bismap.io import atomic_dir, atomic_path, save_torch
kind, target = sys.argv[1], sys.argv[2]
if kind == "dir":
    with atomic_dir(target) as tmp:
        for i in range(5):
            (tmp / f"{i}.png").write_bytes(b"x")
        os.kill(os.getpid(), signal.SIGKILL)
elif kind == "h5":
    import h5py
    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as f:
            f["x"] = np.zeros(10)
        os.kill(os.getpid(), signal.SIGKILL)
else:
    real = torch.save
    def dying(obj, f, *a, **k):
        real(obj, f, *a, **k)
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = dying
    save_torch(target, {"w": torch.zeros(1000)})
"""


def _kill9_writer(kind: str, target: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, kind, str(target)], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr


# ---------------------------------------------------------------------------------------------
# 2. Temporary files are never cleaned


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_kill9_temporaries_are_removed_by_the_next_attempt(tmp_path, monkeypatch) -> None:
    from bismap.io import save_torch, stale_temporaries, write_json
    from bismap.workflow.stage_logging import stage_logging

    out = tmp_path / "results"
    out.mkdir()
    labels, h5, ckpt = out / "pseudo", out / "features.h5", out / "warmup.pt"
    _kill9_writer("dir", labels)
    _kill9_writer("h5", h5)
    _kill9_writer("torch", ckpt)
    _kill9_writer("torch", Path(str(ckpt) + ".resume.pt"))
    left = stale_temporaries(labels) + stale_temporaries(h5) + stale_temporaries(ckpt)
    assert len(left) == 4, sorted(p.name for p in out.iterdir())
    mine = [out / ".pseudo.notes", out / ".warmup.pt.bak", out / "warmup.pt.abcdefgh.tmp"]  # a user's files
    for p in mine:
        p.write_text("keep")
    _console(monkeypatch)
    with stage_logging(_smk(tmp_path, [labels, h5, ckpt])):
        labels.mkdir()
        write_json(labels / "x.json", {})
        save_torch(ckpt, {"w": torch.zeros(3)})
    assert stale_temporaries(labels) + stale_temporaries(h5) + stale_temporaries(ckpt) == []
    assert all(p.read_text() == "keep" for p in mine)
    assert sorted(p.name for p in out.iterdir()) == sorted([".pseudo.notes", ".warmup.pt.bak", "pseudo",
                                                            "warmup.pt", "warmup.pt.abcdefgh.tmp"])
    assert "left by a killed earlier attempt" in (tmp_path / "logs" / "demo.log").read_text()


# ---------------------------------------------------------------------------------------------
# 3. Disk full and other OS errors are unreadable


@pytest.mark.parametrize("err", ["ENOSPC", "EACCES", "EROFS", "EIO"])
def test_os_error_in_a_stage_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, err) -> None:
    import errno

    from bismap.io import save_torch
    from bismap.workflow.stage_logging import stage_logging

    code = getattr(errno, err)
    ckpt = tmp_path / "models" / "warmup.pt"

    def failing_save(obj, f, *a, **k):  # torch's zip writer on a full disk: a RuntimeError whose context
        f.write(b"partial")                # is the OSError the file's write raised (as torch 2.14 does)
        if code == errno.ENOSPC:
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                # torch chains implicitly (the OSError is the context, not the cause): keep it so
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 45")  # noqa: B904
        raise OSError(code, os.strerror(code), str(ckpt))

    monkeypatch.setattr(torch, "save", failing_save)
    console = _console(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        with stage_logging(_smk(tmp_path, [ckpt], rule="warmup")):
            save_torch(ckpt, {"w": torch.zeros(3)})
    assert exc.value.code == 1
    line = console.getvalue()
    assert line.count("\n") == 1 and line.startswith(f"bismap warmup: error: {ckpt}: {os.strerror(code)} ({err}); ")
    assert "rerun" in line
    log = (tmp_path / "logs" / "warmup.log").read_text()
    assert log.rstrip().splitlines()[-1].endswith(line.strip().split("error: ", 1)[1])
    assert list(ckpt.parent.iterdir()) == []  # no half-written file, no temporary


def test_checkpoint_needing_more_than_the_free_space_fails_before_writing(tmp_path, monkeypatch) -> None:
    import errno
    import shutil
    from collections import namedtuple

    from bismap.io import save_torch

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError) as exc:
        save_torch(tmp_path / "big.pt", {"w": torch.zeros(10_000)})
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(tmp_path / "big.pt")
    assert "MiB free" in exc.value.strerror and list(tmp_path.iterdir()) == []


def test_predict_on_a_full_disk_is_one_line_and_leaves_no_empty_folder(tmp_path, monkeypatch, capsys) -> None:
    import errno

    from bismap.cli import main
    from test_predict import constant_checkpoint

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(images / "a.png")
    ckpt = constant_checkpoint(tmp_path / "c.pt", 3, None)

    out = tmp_path / "out"
    real_replace = os.replace

    def full(src, dst):  # the write "fills the disk" once the folders exist and the temporary is written
        if str(dst).startswith(str(out)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    rc = main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
               "--device", "cpu", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "No space left on device (ENOSPC)" in err and "Traceback" not in err
    assert not out.exists()


def test_predict_stops_on_an_unreadable_image_or_skips_it_with_a_summary(tmp_path, capsys) -> None:
    from bismap.cli import main
    from test_predict import constant_checkpoint

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(images / "a.png")
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(images / "c.png")
    ckpt = constant_checkpoint(tmp_path / "c.pt", 3, None)
    args = ["predict", "--checkpoint", str(ckpt), "--images", str(images), "--device", "cpu", "--threads", "1"]
    assert main(args + ["--out", str(tmp_path / "stop")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "b.png" in err and "--skip-unreadable" in err
    assert main(args + ["--out", str(tmp_path / "skip"), "--skip-unreadable"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 3 unreadable image(s)" in err and "b.png" in err
    assert sorted(p.name for p in (tmp_path / "skip" / "labels").iterdir()) == ["a.png", "c.png"]


# ---------------------------------------------------------------------------------------------
# 8. Logs lost


def test_rule_log_keeps_earlier_attempts(tmp_path, monkeypatch) -> None:
    from bismap.workflow.stage_logging import stage_logging

    _console(monkeypatch)
    smk = _smk(tmp_path, [])
    log = Path(smk.log[0])
    with pytest.raises(SystemExit):
        with stage_logging(smk):
            print("first attempt got to iteration 224")
            raise RuntimeError("killed")
    log.unlink()  # Snakemake deletes the rule log before it reruns the job
    with stage_logging(smk):
        print("second attempt")
    text = log.read_text()
    assert "===== attempt 1 of demo" in text and "===== attempt 2 of demo" in text
    assert text.index("iteration 224") < text.index("===== attempt 2") < text.index("second attempt")


# ---------------------------------------------------------------------------------------------
# 6. `--config` and nested numbers; 7. data roots silently ignored (Snakemake dry runs, tiny config)

# The README keeps these two examples; any other `--config '...'` in README.md / docs/*.md is added below.
CONFIG_EXAMPLES = ['distillation={"kd": {"weight": 0.5}}', 'pseudo_labels={"percentile": 40}']


def _documented_config_examples() -> list[str]:
    import re

    repo = Path(__file__).resolve().parents[1]
    found = list(CONFIG_EXAMPLES)
    for doc in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        if doc.is_file():
            found += re.findall(r"--config '([^']+)'", doc.read_text())
    return list(dict.fromkeys(found))


@pytest.fixture(scope="module")
def wf(module_dir) -> Path:
    from test_workflow import make_copy

    return make_copy(module_dir)


@pytest.mark.slow  # over 5 s measured (pytest --durations)
@pytest.mark.parametrize("example", _documented_config_examples())
def test_every_documented_config_example_dry_runs(wf, example) -> None:
    from test_workflow import snakemake

    # examples that point at real dataset roots go with the paper config (whose roots are missing here)
    configfile = "configs/gta5.yaml" if '"root"' in example else "configs/tiny.yaml"
    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", configfile, "--config", example)
    text = proc.stdout + proc.stderr
    assert "Invalid config" not in text and "is not of type" not in text, text[-2000:]
    if configfile.endswith("tiny.yaml"):
        assert proc.returncode == 0, text[-2000:]
    else:
        assert proc.returncode == 0 or "MissingInputException" in text, text[-2000:]


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_yaml11_exponent_is_a_number(wf) -> None:
    from test_workflow import snakemake

    (wf / "lr.yaml").write_text("train:\n  lr: 1e-3\n")
    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml", "lr.yaml")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_nested_booleans_and_nulls_from_the_command_line(wf) -> None:
    from test_workflow import snakemake

    # Snakemake hands nested --config values over as text: 'true' and 'null' must still validate
    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml", "--config",
                     "teacher_labels={scales: [1.0], flip: true, adabn: {enabled: false}}",
                     "pseudo_labels={threshold: null}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml", "--config",
                     "teacher_labels={flip: maybe}")
    assert proc.returncode != 0
    assert "teacher_labels.flip: 'maybe' is not of type 'boolean'" in proc.stdout + proc.stderr


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_values_that_do_not_scale_stop_the_workflow_before_any_job(wf) -> None:
    from test_workflow import snakemake

    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml", "--config",
                     "self_training={consistency: {ema_decay: 0.999}}")
    assert proc.returncode != 0
    assert "self_training.consistency: ema_decay 0.999 averages over ~1000 iterations but self-training runs 2" \
        in proc.stdout + proc.stderr
    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml", "--config", "stylize={beta: 0.01}")
    assert proc.returncode != 0
    assert "stylize.beta 0.01 gives an FDA band of 0 coefficients at 32x64" in proc.stdout + proc.stderr


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_a_bad_number_says_how_to_write_it(wf) -> None:
    from test_workflow import snakemake

    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml",
                     "--config", 'pseudo_labels={"percentile": "forty"}')
    assert proc.returncode != 0
    assert ("pseudo_labels.percentile: 'forty' is not of type 'number' (write a plain number"
            in proc.stdout + proc.stderr)


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_dataset_root_with_the_synthetic_benchmark_on_is_refused(wf) -> None:
    from test_workflow import snakemake

    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml",
                     "--config", 'data={"target": {"root": "/data/cityscapes"}}')
    assert proc.returncode != 0
    assert "data.target.root is set (/data/cityscapes) but synthetic.enabled is true" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# 4. Problems found hours late; 5. warnings nobody sees (the preflight stage)


def _datasets(tmp_path: Path) -> dict:
    source = make_gta(tmp_path / "gta5")
    make_cityscapes(tmp_path / "cityscapes", "train", seed=1)
    make_cityscapes(tmp_path / "cityscapes", "val", seed=2, n=2)
    root = str(tmp_path / "cityscapes")
    return {"source": source,
            "target train": {"dataset": "cityscapes", "root": root, "split": "train", "size": None},
            "target val": {"dataset": "cityscapes", "root": root, "split": "val", "size": None}}


PREFLIGHT_CFG = {"model": dict(MODEL), "student": {"student_backbone": None, "student_weights": None},
                 "stm": {"extractor": "warmup", "weights": None}}


def test_preflight_reports_every_problem_at_once(tmp_path) -> None:
    from bismap.io import InputError
    from bismap.stages import preflight

    datasets = _datasets(tmp_path)
    val_gt = sorted((tmp_path / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))[0]
    val_gt.write_bytes(val_gt.read_bytes()[:60])                       # truncated val ground truth
    bad = Path(datasets["source"]["root"]) / "labels" / "00002.png"
    Image.fromarray(np.full((32, 64), 250, np.uint8)).save(bad)        # a label value no table knows
    datasets["missing"] = {**datasets["target val"], "split": "test"}  # a split that does not exist
    weights = tmp_path / "backbone.pth"
    torch.save({"state_dict": {"not.a.resnet.key": torch.zeros(1)}}, weights)
    cfg = {**PREFLIGHT_CFG, "model": {**MODEL, "weights": str(weights)}}
    out = tmp_path / "preflight.json"
    with pytest.raises(InputError) as exc:
        preflight.run(datasets=datasets, out_report=out, out_summary=tmp_path / "preflight.md", threads=2, **cfg)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("preflight found 4 problem(s) in the inputs: ")
    for culprit in (val_gt.name, "00002.png: unknown label value(s) 250", "split 'test' not found", str(weights)):
        assert culprit in msg, (culprit, msg)
    assert not out.exists()


def test_preflight_writes_its_report_when_all_is_well(tmp_path) -> None:
    import json

    from bismap.stages import preflight

    out = tmp_path / "preflight.json"
    preflight.run(datasets=_datasets(tmp_path), out_report=out, out_summary=tmp_path / "preflight.md", threads=2,
                  **PREFLIGHT_CFG)
    report = json.loads(out.read_text())
    assert report["status"] == "ok" and report["totals"] == {"images": 10, "labels": 10}
    assert report["datasets"]["target val"]["images"] == 2
    assert "| target val |" in (tmp_path / "preflight.md").read_text()


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_every_training_rule_waits_for_the_preflight(wf) -> None:
    from test_workflow import snakemake

    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-2000:]
    reads = {"warmup": ("source",), "oracle": ("target",), "naive_self_training": ("source", "target"),
             "self_training": ("source", "target"), "distillation": ("source", "target"), "evaluate": ("val",)}
    for rule, parts in reads.items():
        block = text.split(f"rule {rule}:", 1)[1].split("\n\n", 1)[0]
        for part in parts:
            assert f"results/tiny/preflight/{part}.json" in block, (rule, part, block)
    # no ancient() edges: they hide reruns in Snakemake 9 (see preflight_parts in rules/common.smk)
    code = [line.split("#")[0] for p in (wf / "rules").glob("*.smk") for line in p.read_text().splitlines()]
    assert not [line for line in code if "=ancient(" in line.replace(" ", "")]


def test_preflight_warnings_reach_the_console(tmp_path, monkeypatch) -> None:
    from bismap.stages import preflight
    from bismap.workflow.stage_logging import stage_logging

    datasets = _datasets(tmp_path)
    gta = Path(datasets["source"]["root"])
    (gta / "labels" / "00003.png").unlink()                            # an image without a label
    Image.fromarray(np.zeros((16, 32), np.uint8) + 7).save(gta / "labels" / "00004.png")  # size mismatch
    console = _console(monkeypatch)
    out = tmp_path / "preflight.json"
    with stage_logging(_smk(tmp_path, [out], rule="preflight")):
        preflight.run(datasets=datasets, out_report=out, out_summary=tmp_path / "preflight.md", threads=1,
                      **PREFLIGHT_CFG)
    text = console.getvalue()
    assert "bismap preflight: warning:" in text
    assert "1 images without label skipped (first: 00003.png)" in text
    assert "1 pairs differ in size" in text


# ---------------------------------------------------------------------------------------------
# 9. Determinism across threads: the thread count is recorded with every label set


@pytest.mark.parametrize("threads", [1, 2])
def test_label_quality_records_the_thread_count(tmp_path, threads) -> None:
    import json

    from bismap.stages import naive_labels, teacher_labels

    tgt = make_cityscapes(tmp_path / "cityscapes", "train", seed=1, n=2)
    ckpt = constant_checkpoint(tmp_path / "c.pt", 0)
    q = tmp_path / "naive.quality.json"
    naive_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=tgt, out_dir=tmp_path / "naive",
                     out_quality=q, cfg=schema_defaults("naive", threshold=0.0), data=DATA, runtime=RUNTIME,
                     threads=threads)
    assert json.loads(q.read_text())["threads"] == threads
    tq = tmp_path / "teacher.quality.json"
    teacher_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=None, out_dir=tmp_path / "t",
                       out_quality=tq, cfg=schema_defaults("teacher_labels", scales=[1.0], flip=False,
                                                            adabn={"enabled": False}),
                       data=DATA, runtime=RUNTIME, threads=threads)
    assert json.loads(tq.read_text())["threads"] == threads


def test_evaluate_on_a_read_only_or_full_disk_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    import errno

    from bismap.cli import main
    from test_evaluation import write_gt

    gts = write_gt(tmp_path / "cs", np.random.default_rng(1), n=2)
    (tmp_path / "pred").mkdir()
    for prefix, gt in gts:
        Image.fromarray(gt).save(tmp_path / "pred" / f"{prefix}_leftImg8bit.png")
    out_dir = tmp_path / "metrics"
    real_replace = os.replace

    def read_only(src, dst):
        if str(dst).startswith(str(out_dir)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", read_only)
    rc = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "cs"), "--pred-format",
               "labelIds", "--out", str(out_dir / "m.json")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{out_dir}" in err and "Read-only file system (EROFS); the filesystem is mounted read-only" in err
    assert [p for p in out_dir.rglob("*") if p.is_file()] == []
