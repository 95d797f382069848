"""Shared test helpers: config slices from the schema's defaults, and tiny datasets on disk in the
real GTA5 / Cityscapes layouts.

- `schema_defaults(section, **overrides)`: a section of the config exactly as the workflow gives
  it to a stage (configs/schema.yaml's defaults), with overrides merged in (nested dicts merge).
  Stage code reads `cfg["key"]` with no fallbacks, so tests pass full slices built this way and
  the schema stays the one place defaults are written.
- `RUNTIME`: the `runtime` section for tests (CPU, workers in the main process).
- `write_gta` / `write_cityscapes`: a dataset folder from (rgb, label ids) scenes; each test
  module keeps its own scene generator (what the images show is what it tests).
- `to_label_ids`: trainId map -> Cityscapes label-id map (what the files store).
- `module_dir`: a folder shared by one module's tests, deleted when they all passed.

Disk: one tiny workflow run writes ~0.5 GB (ResNet-18 checkpoints), and CI machines have little
disk beside the 6 GB virtual environment, so passing tests' folders are deleted as the suite goes
(`tmp_path_retention_policy = "failed"` in pyproject.toml, `module_dir` here); failing ones stay.
"""
from __future__ import annotations

import copy
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def _schema() -> dict:
    return yaml.safe_load((REPO / "configs" / "schema.yaml").read_text())


def _resolve(node: dict) -> dict:
    ref = node.get("$ref")
    if ref is None:
        return node
    target = _schema()
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _filled(node: dict, given: Any) -> Any:
    """`given` (the node's default, or an explicit value) with the defaults of its properties filled in."""
    node = _resolve(node)
    if "properties" not in node or not isinstance(given, dict):
        return copy.deepcopy(given)
    out = copy.deepcopy(given)
    for key, sub in node["properties"].items():
        sub_r = _resolve(sub)
        if key in out:
            out[key] = _filled(sub_r, out[key])
        elif "default" in sub:
            out[key] = _filled(sub_r, sub["default"])
    return out


def _merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def schema_defaults(section: str, **overrides: Any) -> dict:
    """configs/schema.yaml's defaults of `section` (e.g. "pseudo_labels") with `overrides` merged in.

    An override of a key the schema does not have is an error: a test must not pass a key no
    stage reads.
    """
    entry = {"properties": _schema()["properties"]}
    for part in section.split("/"):  # a sub-section such as "stm/features"
        props = _resolve(entry).get("properties", {})
        if part not in props:
            raise KeyError(f"no section {section!r} in configs/schema.yaml")
        entry = props[part]
    node = _resolve(entry)
    unknown = set(overrides) - set(node.get("properties", {}))
    if unknown:
        raise KeyError(f"{section}: keys {sorted(unknown)} are not in configs/schema.yaml")
    return _merge(_filled(node, entry.get("default", {})), overrides)


RUNTIME = schema_defaults("runtime", device="cpu", workers=0)


# ----------------------------------------------------------------------------- tiny datasets
def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """A trainId map as the Cityscapes label ids the dataset files store (255 -> 0, unlabelled)."""
    from bismap.data.labels import TRAINID_TO_ID

    lut = np.zeros(256, np.uint8)
    for t, i in TRAINID_TO_ID.items():
        lut[t] = i
    return lut[train_ids]


def write_gta(root: Path, scenes: Iterable[tuple[np.ndarray, np.ndarray]], *, first: int = 0) -> dict:
    """GTA5 layout: images/<k>.png and labels/<k>.png (label ids), k = first, first+1, ...

    scenes: (rgb uint8 [H, W, 3], label ids uint8 [H, W]) per image. Returns the dataset spec.
    """
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k, (rgb, ids) in enumerate(scenes, start=first):
        Image.fromarray(rgb).save(root / "images" / f"{k:05d}.png")
        Image.fromarray(ids).save(root / "labels" / f"{k:05d}.png")
    return {"dataset": "gta5", "root": str(root)}


def write_cityscapes(root: Path, scenes: Iterable[tuple[np.ndarray, np.ndarray | None]], *, split: str = "train",
                     city: str = "aachen") -> dict:
    """Cityscapes layout: leftImg8bit/<split>/<city>/<city>_000000_<k>_leftImg8bit.png, and
    gtFine/..._gtFine_labelIds.png for scenes whose label ids are not None. Returns the spec."""
    from PIL import Image

    img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    img_dir.mkdir(parents=True)
    for k, (rgb, ids) in enumerate(scenes):
        Image.fromarray(rgb).save(img_dir / f"{city}_000000_{k:06d}_leftImg8bit.png")
        if ids is not None:
            gt_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids).save(gt_dir / f"{city}_000000_{k:06d}_gtFine_labelIds.png")
    return {"dataset": "cityscapes", "root": str(root), "split": split}


# ----------------------------------------------------------------------------- tiny models
# The embedded DeepLabV3+ (resnet18) with 16-channel heads: small enough to train a few
# iterations on 32x64 images in a test.
TINY_MODEL = schema_defaults("model", aspp_channels=16, decoder_channels=16, low_level_channels=8)


def constant_checkpoint(path: Path, cls: int, data: dict | None = None) -> Path:
    """A TINY_MODEL checkpoint whose logits are class `cls` everywhere (classifier weights 0, bias
    one-hot); `data` (normalisation) is stored when given, as the training stages do."""
    import torch

    from bismap.engine.checkpoint import FORMAT, save_checkpoint
    from bismap.models import build_model

    torch.manual_seed(0)
    net = build_model(TINY_MODEL)
    with torch.no_grad():
        net.decoder.classifier.weight.zero_()
        net.decoder.classifier.bias.zero_()
        net.decoder.classifier.bias[cls] = 10.0
    state = {"format": FORMAT, "model_config": dict(TINY_MODEL), "model": net.state_dict(), "ema": None,
             "iteration": 0}
    if data is not None:
        state["data"] = data
    save_checkpoint(path, state)
    return path


@pytest.fixture(scope="module")
def module_dir(request, tmp_path_factory) -> Iterable[Path]:
    """A folder for one module's shared fixtures, removed after its last test unless one failed."""
    path = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)
