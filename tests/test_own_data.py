"""configs/own_data.example.yaml (the README's "Use your own data") against tiny fake data in the layouts \
it documents."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bismap.data import open_dataset
from test_data_readers import write_png16

try:
    from test_workflow import dry_run, job_counts, make_copy, snakemake
except ImportError:  # the workflow helpers may live in conftest.py
    from conftest import dry_run, job_counts, make_copy, snakemake

EXAMPLE = "configs/own_data.example.yaml"


def png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def fake_gta5(root: Path) -> None:
    for i in range(2):
        png(root / "images" / f"{i + 1:05d}.png", np.full((8, 16, 3), 50 * i))
        png(root / "labels" / f"{i + 1:05d}.png", np.full((8, 16), 7))      # Cityscapes id 7 = road


def fake_synthia(root: Path) -> None:
    png(root / "RGB" / "0000001.png", np.full((8, 16, 3), 50))
    lab = np.zeros((8, 16, 3), np.int64)
    lab[..., 0] = 3                                                             # SYNTHIA id 3 = road
    write_png16(root / "GT" / "LABELS" / "0000001.png", lab)


def fake_cityscapes(root: Path, splits: tuple[str, ...] = ("train", "val"),
                    labelled: tuple[str, ...] = ("val",)) -> None:
    for split in splits:
        for city in ("aachen", "bonn"):
            stem = f"{city}_000000_000019"
            png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", np.full((8, 16, 3), 90))
            if split in labelled:
                png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", np.full((8, 16), 7))


@pytest.fixture(scope="module")
def wf(module_dir) -> Path:
    return make_copy(module_dir)


def _roots(tmp_path: Path, src: Path, tgt: Path, **source) -> Path:
    cfg = tmp_path / "roots.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": {"root": str(src), **source}, "target": {"root": str(tgt)}}}))
    return cfg


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_example_config_dry_runs_on_the_documented_layouts(wf, tmp_path):
    src, tgt = tmp_path / "my_source", tmp_path / "my_target"
    fake_gta5(src)
    fake_cityscapes(tgt)
    counts = dry_run(wf, EXAMPLE, str(_roots(tmp_path, src, tgt)))
    assert "synthetic_data" not in counts and "oracle" not in counts       # own data; no train labels
    for rule in ("stylize", "warmup", "pseudo_labels", "self_training", "distillation", "report"):
        assert counts.get(rule), rule
    proc = snakemake(wf, "-n", "-p", "--cores", "2", "--configfile", EXAMPLE, str(_roots(tmp_path, src, tgt)))
    assert str(src) in proc.stdout and str(tgt) in proc.stdout and "results/own_data/" in proc.stdout


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_example_config_with_synthia_source(wf, tmp_path):
    src, tgt = tmp_path / "synthia", tmp_path / "cs"
    fake_synthia(src)
    fake_cityscapes(tgt)
    counts = dry_run(wf, EXAMPLE, str(_roots(tmp_path, src, tgt, dataset="synthia")))
    assert counts.get("warmup") == 1 and "synthetic_data" not in counts


def test_readers_accept_the_documented_layouts(tmp_path):
    fake_gta5(tmp_path / "gta5")
    fake_synthia(tmp_path / "synthia")
    fake_cityscapes(tmp_path / "cs")
    assert len(open_dataset({"dataset": "gta5", "root": str(tmp_path / "gta5")})) == 2
    assert open_dataset({"dataset": "synthia", "root": str(tmp_path / "synthia")})[0]["label"].max() == 0
    val = open_dataset({"dataset": "cityscapes", "root": str(tmp_path / "cs"), "split": "val"})
    assert len(val) == 2 and val[0]["label"].max() == 0                       # id 7 -> trainId 0 (road)
    train = open_dataset({"dataset": "cityscapes", "root": str(tmp_path / "cs"), "split": "train", "labels": "none"})
    assert len(train) == 2 and (train[0]["label"] == 255).all()


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_missing_root_stops_before_any_job(wf, tmp_path):
    tgt = tmp_path / "cs"
    fake_cityscapes(tgt)
    proc = snakemake(wf, "-n", "--cores", "2", "--configfile", EXAMPLE, str(_roots(tmp_path, tmp_path / "nope", tgt)))
    assert proc.returncode != 0 and not job_counts(proc.stdout)

