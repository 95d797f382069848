"""Inputs and states that used to give wrong results without a word (issue 27), now one-line stops."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bismap.data import open_dataset
from bismap.io import InputError


def _two_cities_with_one_name(root: Path) -> dict:
    """Target train whose two city folders hold images of the same file names (a user's own data)."""
    for city, value in (("north", 60), ("south", 200)):
        folder = root / "leftImg8bit" / "train" / city
        folder.mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((8, 16, 3), value + k, np.uint8)).save(folder / f"img_{k}_leftImg8bit.png")
    return {"dataset": "cityscapes", "root": str(root), "split": "train", "labels": "none"}


def test_repeated_file_names_in_two_city_folders_are_refused(tmp_path):
    spec = _two_cities_with_one_name(tmp_path / "cs")
    with pytest.raises(InputError) as exc:
        open_dataset(spec)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "cs"))
    assert "2 image(s) share their file name" in msg
    assert "north/img_0_leftImg8bit.png and" in msg.replace("leftImg8bit/train/", "")


def test_preflight_reports_repeated_file_names(tmp_path):
    from bismap.stages.preflight import check_dataset

    spec = _two_cities_with_one_name(tmp_path / "cs")
    with ThreadPoolExecutor(1) as pool:
        result = check_dataset("target train", spec, pool)
    assert len(result["problems"]) == 1 and "share their file name" in result["problems"][0]


class _FailingFile:
    """A file whose write raises `exc` once more than `after` bytes went through (as a Ctrl-C, a full
    disk or a failing disk does in the middle of torch.save)."""

    def __init__(self, real, exc: BaseException, after: int = 1000) -> None:
        self.real, self.exc, self.after, self.written = real, exc, after, 0

    def write(self, data) -> int:
        self.written += len(data)
        if self.written > self.after:
            raise self.exc
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.real.close()


@pytest.mark.parametrize("exc, expected", [
    (KeyboardInterrupt(), KeyboardInterrupt),
    (OSError(5, "Input/output error"), OSError),
    (OSError(28, "No space left on device"), OSError),
])
def test_an_interrupted_checkpoint_write_reports_its_real_cause(tmp_path, monkeypatch, exc, expected):
    """Ctrl-C during torch.save was reported as 'No space left on device' (on a disk 31 % used):
    torch's zip writer turns whatever write raised into 'unexpected pos ...'."""
    import builtins

    import torch

    import bismap.io as bio

    real_open = builtins.open
    monkeypatch.setattr(bio, "open", lambda p, mode="r", *a, **k: _FailingFile(real_open(p, mode, *a, **k), exc),
                        raising=False)
    path = tmp_path / "models" / "warmup.pt"
    with pytest.raises(BaseException) as info:
        bio.save_torch(path, {"w": torch.zeros(10_000)})
    assert type(info.value) is expected
    if expected is OSError:
        assert info.value.errno == exc.errno and info.value.filename == str(path)
    assert "No space" not in str(info.value) or exc.errno == 28
    assert list(path.parent.iterdir()) == []   # no half-written file, no temporary


def test_checkpoint_every_0_is_accepted_and_writes_no_resume_file(tmp_path):
    """trainer.fit's 0 = never was refused by the schema (minimum 1)."""
    from snakemake.utils import validate

    from bismap.engine import checkpoint, trainer
    from test_engine import TRAIN, ce_loss, make_run

    config = {"runtime": {"checkpoint_every": 0}}
    validate(config, str(Path(__file__).resolve().parent.parent / "configs" / "schema.yaml"))
    assert config["runtime"]["checkpoint_every"] == 0
    out = tmp_path / "m.pt"
    model, streams = make_run()
    seen = []

    def watching(ctx):
        seen.append(checkpoint.resume_path(out).exists())
        return ce_loss(ctx)

    trainer.fit(model=model, loss_fn=watching, streams=streams, train_cfg=TRAIN, out_checkpoint=out, fingerprint="fp",
                ema_decay=0.9, device="cpu", tensorboard_dir=None, checkpoint_every=0, log_every=3)
    assert seen == [False] * TRAIN["iterations"] and out.is_file()


def test_bismap_version(capsys):
    import bismap
    from bismap.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"bismap {bismap.__version__}"


def test_cityscapes_reader_takes_upper_case_suffixes_and_skips_hidden_files(tmp_path):
    """Before: `.PNG` images were dropped without a word and macOS `._*` files were read as images."""
    root = tmp_path / "cs"
    img, gt = root / "leftImg8bit" / "train" / "bonn", root / "gtFine" / "train" / "bonn"
    img.mkdir(parents=True)
    gt.mkdir(parents=True)
    for k, suffix in enumerate((".png", ".PNG")):
        Image.fromarray(np.full((8, 16, 3), 50 * k, np.uint8)).save(img / f"bonn_000000_00000{k}_leftImg8bit{suffix}",
                                                                   format="PNG")
        Image.fromarray(np.full((8, 16), 7, np.uint8)).save(gt / f"bonn_000000_00000{k}_gtFine_labelIds{suffix}",
                                                           format="PNG")
    (img / "._bonn_000000_000000_leftImg8bit.png").write_bytes(b"\0\5\26\7 resource fork")
    (img / ".DS_Store").write_bytes(b"\0")
    ds = open_dataset({"dataset": "cityscapes", "root": str(root), "split": "train"})
    assert [Path(f).name for f in ds.names] == ["bonn_000000_000000_leftImg8bit", "bonn_000000_000001_leftImg8bit"]
    assert all(np.all(ds[i]["label"] == 0) for i in range(2))  # labelId 7 (road) -> trainId 0


def test_a_jpeg_saved_as_png_is_refused_as_a_label(tmp_path):
    """Before: read as a label, with about a fifth of the pixels in other classes (JPEG's edge ringing)."""
    from bismap.data.labels import read_label_png

    ids = np.zeros((32, 64), np.uint8)
    ids[:, 20:40] = 7
    ids[10:20, :] = 26
    Image.fromarray(ids).save(tmp_path / "ok.png")
    assert np.array_equal(read_label_png(tmp_path / "ok.png"), ids)
    Image.fromarray(ids).save(tmp_path / "00001.png", format="JPEG", quality=75)
    with pytest.raises(InputError, match=r"00001\.png: a label must be a \(lossless\) PNG file, this one is JPEG"):
        read_label_png(tmp_path / "00001.png")
