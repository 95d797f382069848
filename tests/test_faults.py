"""Issue 12: faults and bad inputs a hostile but realistic user tried, one test each.

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

from test_stages_training import AUGMENT, DATA, MODEL, make_cityscapes, make_gta, train_cfg


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# 1. A resume ignores edits inside a data folder


def test_fault1_in_place_edit_of_a_source_label_refuses_the_resume(tmp_path, monkeypatch, capsys) -> None:
    import bismap.losses
    from bismap.engine.fingerprint import spec_signature
    from bismap.stages import warmup

    source = make_gta(tmp_path / "gta5")
    kw = dict(source=source, model=MODEL, train=train_cfg(3, checkpoint_every=1), augment=AUGMENT, data=DATA,
              threads=1)
    real = bismap.losses.weighted_cross_entropy
    calls = {"n": 0}

    def dies_at_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    out = tmp_path / "warmup.pt"
    monkeypatch.setattr(bismap.losses, "weighted_cross_entropy", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        warmup.run(out_checkpoint=out, **kw)
    monkeypatch.setattr(bismap.losses, "weighted_cross_entropy", real)
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
