"""Edits of a user's dataset rerun exactly the stages that read it (bismap.workflow.data_manifest).

A real run of the stages that evaluate the warm-up on user data in the GTA5 / Cityscapes layouts,
then edits of the data and dry runs: an in-place edit of a val label or an added val image plans the
evaluation again (not the training), an edited source label plans the warm-up, and nothing else does.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bismap.workflow.data_manifest import update_manifest
from test_workflow import job_counts, make_copy, snakemake

H, W = 32, 64
TARGET = "results/own_data/metrics/warmup.json"


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _scene(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Road below, sky (id 23) above, a building (id 11) block: a colour per class plus noise."""
    rng = np.random.default_rng(seed)
    ids = np.full((H, W), 23, np.uint8)
    ids[H // 2:] = 7
    x = rng.integers(0, W - 16)
    ids[H // 4: H // 2, x: x + 16] = 11
    colours = {7: (90, 90, 90), 11: (150, 80, 60), 23: (70, 130, 200)}
    rgb = np.zeros((H, W, 3), np.int64)
    for cid, col in colours.items():
        rgb[ids == cid] = col
    rgb += rng.integers(-10, 10, size=rgb.shape)
    return np.clip(rgb, 0, 255), ids


def write_data(root: Path) -> tuple[Path, Path]:
    src, tgt = root / "gta5", root / "cityscapes"
    for i in range(4):
        rgb, ids = _scene(i)
        _png(src / "images" / f"{i:05d}.png", rgb)
        _png(src / "labels" / f"{i:05d}.png", ids)
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            rgb, ids = _scene(100 + i + (10 if split == "val" else 0))
            stem = f"aachen_{i:06d}_000019"
            _png(tgt / "leftImg8bit" / split / "aachen" / f"{stem}_leftImg8bit.png", rgb)
            if split == "val":
                _png(tgt / "gtFine" / split / "aachen" / f"{stem}_gtFine_labelIds.png", ids)
    return src, tgt


@pytest.fixture(scope="module")
def run(module_dir):
    wf = make_copy(module_dir / "wf")
    src, tgt = write_data(module_dir / "data")
    cfg = module_dir / "own.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"source": {"root": str(src), "size": None}, "target": {"root": str(tgt), "size": None}},
        "stylize": {"method": "none"}, "augment": {"crop": [H, W]}}))
    args = ("--cores", "2", "--configfile", "configs/tiny.yaml", "configs/own_data.example.yaml", str(cfg))
    proc = snakemake(wf, *args, "--", TARGET)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return wf, src, tgt, args


def planned(run) -> dict[str, int]:
    wf, _, _, args = run
    proc = snakemake(wf, "-n", *args, "--", TARGET)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return job_counts(proc.stdout + proc.stderr)


def _rewrite(path: Path, arr: np.ndarray) -> None:
    """Replace a file in place, keeping its folder's mtime (as an editor or `cp` over it does)."""
    time.sleep(0.01)
    _png(path, arr)


@pytest.mark.slow
def test_finished_run_plans_nothing(run):
    assert planned(run) == {}


@pytest.mark.slow
def test_val_label_edited_in_place_reruns_the_evaluation(run):
    _, _, tgt, _ = run
    label = next((tgt / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    folder_mtime = label.parent.stat().st_mtime_ns
    _rewrite(label, np.full((H, W), 7, np.uint8))
    os.utime(label.parent, ns=(folder_mtime, folder_mtime))
    assert planned(run) == {"preflight": 1, "evaluate": 1}


@pytest.mark.slow
def test_val_image_added_reruns_the_evaluation(run):
    _, _, tgt, _ = run
    rgb, ids = _scene(999)
    _png(tgt / "leftImg8bit" / "val" / "bonn" / "bonn_000000_000019_leftImg8bit.png", rgb)
    _png(tgt / "gtFine" / "val" / "bonn" / "bonn_000000_000019_gtFine_labelIds.png", ids)
    assert planned(run) == {"preflight": 1, "evaluate": 1}


@pytest.mark.slow
def test_source_label_edit_reruns_the_warmup(run):
    wf, src, _, args = run
    proc = snakemake(wf, *args, "--", TARGET)  # bring the val edits of the tests above up to date
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert planned(run) == {}
    label = src / "labels" / "00000.png"
    _rewrite(label, np.full((H, W), 7, np.uint8))
    assert planned(run) == {"preflight": 1, "warmup": 1, "evaluate": 1}


def test_unchanged_data_leaves_the_manifest_alone(tmp_path):
    _, tgt = write_data(tmp_path)
    spec = {"target val": {"dataset": "cityscapes", "root": str(tgt), "split": "val"}}
    path = tmp_path / "m.json"
    assert update_manifest(path, spec)
    files = json.loads(path.read_text())["files"]
    assert len(files) == 4 and all(str(tgt) in f[0] for f in files)
    # A first manifest is dated to its newest file: results made after it stay valid.
    assert path.stat().st_mtime_ns == max(f[2] for f in files)
    before = path.stat().st_mtime_ns
    assert not update_manifest(path, spec)
    assert path.stat().st_mtime_ns == before
    _rewrite(next((tgt / "gtFine" / "val").rglob("*.png")), np.zeros((H, W), np.uint8))
    assert update_manifest(path, spec)
    assert path.stat().st_mtime_ns > before


def _add_key(wf: Path, section: str, key: str, node: dict) -> str:
    schema = wf / "configs" / "schema.yaml"
    before = schema.read_text()
    root = yaml.safe_load(before)
    root["properties"][section]["properties"][key] = node
    schema.write_text(yaml.safe_dump(root, sort_keys=False))
    return before


@pytest.mark.slow
@pytest.mark.parametrize("neutral, expected", [(True, {}), (False, {"warmup": 1, "evaluate": 1})])
def test_a_new_key_reruns_only_when_its_default_may_change_results(run, neutral, expected):
    """A later release adds `train.new_knob` (and `evaluation.new_knob`): marked x-neutral-default, the
    finished stages stay finished; unmarked, the stages whose params hold the section rerun."""
    wf, _, _, args = run
    proc = snakemake(wf, *args, "--", TARGET)  # up to date after the data edits of the tests above
    assert proc.returncode == 0, proc.stdout + proc.stderr
    node = {"type": "boolean", "default": False, "description": "A knob a later release adds."}
    if neutral:
        node["x-neutral-default"] = True
    schema = wf / "configs" / "schema.yaml"
    before = _add_key(wf, "train", "new_knob", node)
    try:
        _add_key(wf, "evaluation", "new_knob", node)
        assert planned(run) == expected
        if neutral:  # set to a non-default value, the key does count
            changed = wf / "knob.yaml"
            changed.write_text("train: {new_knob: true}\n")
            proc = snakemake(wf, "-n", *args, str(changed), "--", TARGET)
            assert job_counts(proc.stdout + proc.stderr) == {"warmup": 1, "evaluate": 1}, proc.stdout + proc.stderr
    finally:
        schema.write_text(before)


def _synthia_label(path: Path, trainids: np.ndarray) -> None:
    """A SYNTHIA label: 16-bit PNG, class id in channel 0 (road 3, sky 1, building 2)."""
    from test_data_readers import write_png16

    lab = np.zeros((*trainids.shape, 3), np.int64)
    lab[..., 0] = np.select([trainids == 7, trainids == 11], [3, 2], default=1)
    write_png16(path, lab)


@pytest.mark.slow
def test_synthia_source_reports_miou16_as_headline(module_dir):
    """Only the data roots name a SYNTHIA-layout source: evaluation.protocol auto gives the SYNTHIA
    protocol, whose headline is mIoU-16 (terrain, truck and train cannot be learnt from SYNTHIA)."""
    wf = make_copy(module_dir / "wf_synthia")
    root = module_dir / "synthia_data"
    _, tgt = write_data(root)
    src = root / "synthia"
    for i in range(4):
        rgb, ids = _scene(i)
        _png(src / "RGB" / f"{i:07d}.png", rgb)
        (src / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
        _synthia_label(src / "GT" / "LABELS" / f"{i:07d}.png", ids)
    cfg = module_dir / "synthia.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"source": {"root": str(src), "dataset": "synthia", "size": None},
                 "target": {"root": str(tgt), "size": None}},
        "stylize": {"method": "none"}, "augment": {"crop": [H, W]}}))
    proc = snakemake(wf, "--cores", "2", "--configfile", "configs/tiny.yaml", "configs/own_data.example.yaml", str(cfg),
                     "--", TARGET)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((wf / TARGET).read_text())
    assert metrics["protocol"] == "synthia" and metrics["headline"] == "miou16"


def test_protocol_auto_resolves_from_the_source_dataset():
    from bismap.workflow.config_resolve import evaluation_protocol
    from conftest import schema_defaults

    def config(protocol, dataset, synthetic):
        return {"evaluation": schema_defaults("evaluation", protocol=protocol),
                "synthetic": {"enabled": synthetic}, "data": {"source": {"dataset": dataset}}}

    assert schema_defaults("evaluation")["protocol"] == "auto"
    assert evaluation_protocol(config("auto", "synthia", False)) == "synthia"
    assert evaluation_protocol(config("auto", "gta5", False)) == "cityscapes19"
    assert evaluation_protocol(config("auto", "synthia", True)) == "cityscapes19"   # the benchmark's GTA5 layout
    assert evaluation_protocol(config("cityscapes19", "synthia", False)) == "cityscapes19"


@pytest.mark.slow
def test_a_finished_training_job_whose_output_was_deleted_is_not_trained_again(run):
    """What `--rerun-incomplete` does after a Ctrl-C in the second between the final checkpoint and the
    job's exit: the output is deleted and the job reruns. It restores the same bytes without training."""
    wf, _, _, args = run
    proc = snakemake(wf, *args, "--", TARGET)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = wf / "results" / "own_data" / "models" / "warmup.pt"
    original = ckpt.read_bytes()
    ckpt.unlink()
    proc = snakemake(wf, *args, "--", "results/own_data/models/warmup.pt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (wf / "logs" / "own_data" / "warmup.log").read_text().split("===== attempt")[-1]  # this run's part
    assert "restored from" in log and "it/s ETA" not in log, log
    assert ckpt.read_bytes() == original
