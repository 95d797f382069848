"""Synthetic benchmark: determinism, parallel == serial, readable layouts, config validation."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from bismap.data import open_dataset
from bismap.data.synthetic import DEFAULTS, generate, resolve_config
from bismap.io import InputError

TINY = {"height": 32, "width": 64, "n_source": 3, "n_target_train": 3, "n_target_val": 2, "workers": 1}


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_generate_deterministic_and_seeded():
    cfg = {**TINY, "seed": 5}
    a, la = generate(cfg, "source", 1)
    b, lb = generate(cfg, "source", 1)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    c, _ = generate({**cfg, "seed": 6}, "source", 1)
    d, _ = generate(cfg, "source", 2)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert a.dtype == np.uint8 and a.shape == (32, 64, 3) and la.shape == (32, 64)


def test_scenes_cover_many_classes():
    present = set()
    for i in range(8):
        for dom in ("source", "train"):
            present |= set(np.unique(generate({"height": 64, "width": 128}, dom, i)[1]).tolist())
    assert len(present - {255}) >= 15


def test_write_parallel_equals_serial_and_layouts(tmp_path):
    from bismap.stages.synthetic_data import run

    run(source_dir=tmp_path / "s1", target_dir=tmp_path / "t1", cfg=TINY, runtime={"synthetic_workers": 1})
    run(source_dir=tmp_path / "s2", target_dir=tmp_path / "t2", cfg=TINY, runtime={"synthetic_workers": 2}, threads=2)
    assert digest(tmp_path / "s1") == digest(tmp_path / "s2")
    assert digest(tmp_path / "t1") == digest(tmp_path / "t2")
    run(source_dir=tmp_path / "s3", target_dir=tmp_path / "t3", cfg={**TINY, "seed": 1}, runtime={"synthetic_workers": 1})
    assert digest(tmp_path / "s1") != digest(tmp_path / "s3")
    src = open_dataset({"dataset": "gta5", "root": str(tmp_path / "s1")})
    assert src.names == ["00001", "00002", "00003"]
    item = src[0]
    expected = generate(TINY, "source", 0)
    assert np.array_equal(item["image"], expected[0]) and np.array_equal(item["label"], expected[1])
    val = open_dataset({"dataset": "cityscapes", "root": str(tmp_path / "t1"), "split": "val"})
    assert len(val) == 2 and val.names[0].endswith("_000000_000019_leftImg8bit")
    assert np.array_equal(val[0]["label"], generate(TINY, "val", 0)[1]) or np.array_equal(
        val[1]["label"], generate(TINY, "val", 0)[1])
    assert len(open_dataset({"dataset": "cityscapes", "root": str(tmp_path / "t1"), "split": "train"})) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_config_validation():
    assert resolve_config({})["shift"] == DEFAULTS["shift"]
    with pytest.raises(InputError, match="unknown key 'colour'"):
        resolve_config({"colour": 1})
    with pytest.raises(InputError, match="shift.hue"):
        resolve_config({"shift": {"hue": 3}})


def test_cli_synth(tmp_path):
    import argparse

    from bismap.cli import synth as cli_synth

    cfg = tmp_path / "c.yaml"
    cfg.write_text("synthetic:\n  height: 16\n  width: 32\n  n_source: 2\n  n_target_train: 1\n  n_target_val: 1\n")
    parser = argparse.ArgumentParser()
    cli_synth.add_parser(parser.add_subparsers())
    args = parser.parse_args(["synth", "--config", str(cfg), "--out", str(tmp_path / "b"), "--seed", "3",
                              "--workers", "1", "--set", "shift.noise=0"])
    assert args.func(args) == 0
    assert len(list((tmp_path / "b" / "source" / "images").glob("*.png"))) == 2
    assert (tmp_path / "b" / "target" / "synthetic.json").is_file()
