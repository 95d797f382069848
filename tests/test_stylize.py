"""FDA stylization: beta=0 is the identity, the phase is kept, the stage writes same-named files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bismap.io import InputError
from bismap.stages.stylize import fda, fda_float, run


def test_beta_zero_returns_source():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    trg = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    assert np.array_equal(fda(src, trg, 0.0), src)


def test_phase_kept_amplitude_swapped():
    rng = np.random.default_rng(1)
    src = rng.uniform(60, 190, (16, 24, 3))
    trg = rng.uniform(0, 255, (16, 24, 3))
    out = fda_float(src, trg, 0.1)
    fs, fo, ft = (np.fft.fftshift(np.fft.fft2(a, axes=(0, 1)), axes=(0, 1)) for a in (src, out, trg))
    keep = np.abs(fs) > 1e-6
    assert np.allclose(np.exp(1j * np.angle(fo[keep])), np.exp(1j * np.angle(fs[keep])), atol=1e-6)
    # centre (2b+1)^2 square, b = floor(0.1*16) = 1, carries the target amplitude
    assert np.allclose(np.abs(fo[7:10, 11:14]), np.abs(ft[7:10, 11:14]))
    assert np.allclose(np.abs(fo[0:5]), np.abs(fs[0:5]))
    # mean colour comes from the target
    assert np.allclose(out.mean(axis=(0, 1)), trg.mean(axis=(0, 1)))


def test_stage_writes_same_names(tmp_path):
    for i in range(2):
        p = tmp_path / "src" / "images" / f"{i + 1:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 12, 3), 50, np.uint8)).save(p)
        q = tmp_path / "src" / "labels" / f"{i + 1:05d}.png"
        q.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 12), 7, np.uint8)).save(q)
    t = tmp_path / "tgt" / "leftImg8bit" / "train" / "x" / "x_000000_000019_leftImg8bit.png"
    t.parent.mkdir(parents=True)
    Image.fromarray(np.full((16, 24, 3), 200, np.uint8)).save(t)
    spec_s = {"dataset": "gta5", "root": str(tmp_path / "src")}
    spec_t = {"dataset": "cityscapes", "root": str(tmp_path / "tgt"), "split": "train"}
    run(source=spec_s, target=spec_t, out_dir=tmp_path / "out", cfg={"method": "fda", "beta": 0.125, "seed": 0})
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["00001.png", "00002.png"]
    out = np.asarray(Image.open(tmp_path / "out" / "00001.png"))
    assert out.shape == (8, 12, 3) and abs(float(out.mean()) - 200) < 1  # constant image: DC swap = target colour
    with pytest.raises(InputError, match="unknown key"):
        run(source=spec_s, target=spec_t, out_dir=tmp_path / "o2", cfg={"method": "fda", "betta": 0.1, "seed": 0})
    # 0.1 x 8 rows = a band of 0 coefficients: refused, naming the image and the smallest working beta
    with pytest.raises(InputError, match=r"src/images/00001\.png: stylize\.beta 0\.1 gives an FDA band of 0 "
                                         r"coefficients at 8x12 .* stylize\.beta >= 0\.125 for a band of 1"):
        run(source=spec_s, target=spec_t, out_dir=tmp_path / "o3", cfg={"method": "fda", "beta": 0.1, "seed": 0})
    assert not (tmp_path / "o3").exists()
