"""Synthetic benchmark: determinism, parallel == serial, readable layouts, config validation."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from bismap.data import open_dataset
from bismap.data.synthetic import DEFAULTS, generate, resolve_config
from bismap.io import InputError

REPO = Path(__file__).resolve().parent.parent
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
    run(source_dir=tmp_path / "s3", target_dir=tmp_path / "t3", cfg={**TINY, "seed": 1},
        runtime={"synthetic_workers": 1})
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


def _arrays_digest(cfg: dict) -> str:
    h = hashlib.sha256()
    for dom in ("source", "train", "val"):
        for i in range(3):
            img, lab = generate(cfg, dom, i)
            h.update(img.tobytes())
            h.update(lab.tobytes())
    return h.hexdigest()


def test_default_preset_output_is_pinned():
    """The default preset's pixels are those of the generator before presets existed (hash taken from it)."""
    pinned = "a5671cc1f849500b4da7ac3095a5e330027f2baf9d129983766cb0c80a812ada"
    assert _arrays_digest({**TINY, "seed": 7}) == pinned
    assert _arrays_digest({**TINY, "seed": 7, "preset": "default"}) == pinned
    assert _arrays_digest({**TINY, "seed": 7, "preset": "suburb"}) != pinned


def _class_shares(preset: str, domain: str, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(pixel share per class, images containing each class) over n images at 48x96."""
    from bismap.data.synthetic import domain_style

    cfg = resolve_config({"preset": preset, "height": 48, "width": 96})
    style = domain_style(cfg)
    pixels, images = np.zeros(19), np.zeros(19)
    for i in range(n):
        lab = generate(cfg, domain, i, style)[1]
        pixels += np.bincount(lab[lab < 19], minlength=19)
        images += np.bincount(np.unique(lab[lab < 19]), minlength=19) > 0
    return pixels / pixels.sum(), images


def test_suburb_preset_is_another_kind_of_scene_with_every_class():
    from bismap.data.synthetic.config import BUILDING, SKY, TERRAIN, VEG

    shares = {}
    for preset in ("default", "suburb"):
        for dom in ("source", "train"):
            share, images = _class_shares(preset, dom)
            assert images.min() > 0, (preset, dom, images)   # all 19 classes in both domains
            shares[preset, dom] = share
    for dom in ("source", "train"):
        # lawns and gardens instead of facades: the class frequencies differ in kind, not by a few %
        assert shares["suburb", dom][[VEG, TERRAIN]].sum() > 2 * shares["default", dom][[VEG, TERRAIN]].sum()
        assert shares["suburb", dom][BUILDING] < 0.5 * shares["default", dom][BUILDING]
    # higher camera: the horizon (first ground row) sits higher in the image
    def horizon(preset: str) -> float:
        rows = [np.argmax((generate({"preset": preset, "height": 48, "width": 96}, "source", i)[1] != SKY)
                          .mean(axis=1) > 0.9) for i in range(20)]
        return float(np.mean(rows))
    assert horizon("suburb") < horizon("default")


def test_target_rate_factors_shift_the_target_labels_only():
    """All factors 1 is the generator without the key (pixel for pixel); the label_shift preset's factors
    change the target's class frequencies by about the documented amounts and leave the source alone."""
    from bismap.data.synthetic.config import CAR, PERSON, VEG

    pinned = "a5671cc1f849500b4da7ac3095a5e330027f2baf9d129983766cb0c80a812ada"
    ones = {k: 1.0 for k in DEFAULTS["target_rate_factors"]}
    assert _arrays_digest({**TINY, "seed": 7, "target_rate_factors": ones}) == pinned
    factors = yaml.safe_load((REPO / "configs" / "synthetic_label_shift.yaml").read_text())["synthetic"]
    cfg = resolve_config({"height": 48, "width": 96, **factors})
    base = resolve_config({"height": 48, "width": 96})

    def shares(c: dict, domain: str) -> np.ndarray:
        from bismap.data.synthetic import domain_style

        style, pixels = domain_style(c), np.zeros(19)
        for i in range(60):
            lab = generate(c, domain, i, style)[1]
            pixels += np.bincount(lab[lab < 19], minlength=19)
        return pixels / pixels.sum()

    assert np.array_equal(shares(cfg, "source"), shares(base, "source"))
    shifted, plain = shares(cfg, "train"), shares(base, "train")
    assert shifted[PERSON] > 1.8 * plain[PERSON] and shifted[CAR] < 0.5 * plain[CAR]
    assert shifted[VEG] > 1.3 * plain[VEG]


def test_preset_validation_and_cli(tmp_path):
    import argparse
    import json

    from bismap.cli import synth as cli_synth

    with pytest.raises(InputError, match="unknown preset 'highway'"):
        resolve_config({"preset": "highway"})
    parser = argparse.ArgumentParser()
    cli_synth.add_parser(parser.add_subparsers())
    args = parser.parse_args(["synth", "--out", str(tmp_path / "b"), "--preset", "suburb", "--height", "16",
                              "--width", "32", "--n-source", "1", "--n-target-train", "1", "--n-target-val", "1",
                              "--workers", "1"])
    assert args.func(args) == 0
    meta = json.loads((tmp_path / "b" / "target" / "synthetic.json").read_text())
    assert meta["config"]["preset"] == "suburb"
