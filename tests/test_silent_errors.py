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
