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
