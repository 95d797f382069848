"""Datasets: `open_dataset(spec)` is the one way stages open GTA5, SYNTHIA or Cityscapes folders.

Spec keys: dataset ("gta5"|"synthia"|"cityscapes"), root, split (cityscapes only), images (folder of
stylized images replacing the RGB images, matched by file name), labels (folder of trainId PNGs
replacing the GT, matched by image file name, or "none" for unlabelled), size ([H, W] or null).
Unknown keys are an error: a typo such as 'lables' would otherwise silently train on GT.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bismap.io import InputError

if TYPE_CHECKING:  # torch is imported only when a dataset is opened (keeps `bismap synth` light)
    from bismap.data.readers import Entry, SegmentationFolder

SPEC_KEYS = {"dataset", "root", "split", "images", "labels", "size"}
DATASETS = ("gta5", "synthia", "cityscapes")


def _check_spec(spec: dict[str, Any]) -> None:
    if not isinstance(spec, dict):
        raise InputError(f"dataset spec: expected a mapping, got {type(spec).__name__}")
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise InputError(f"dataset spec: unknown key(s) {unknown}; allowed: {sorted(SPEC_KEYS)}")
    if spec.get("dataset") not in DATASETS:
        raise InputError(f"dataset spec: 'dataset' must be one of {DATASETS}, got {spec.get('dataset')!r}")
    if not spec.get("root"):
        raise InputError(f"dataset spec: 'root' is required ({spec.get('dataset')})")
    if spec["dataset"] == "cityscapes" and not spec.get("split"):
        raise InputError(f"dataset spec: 'split' is required for cityscapes ({spec['root']})")
    if spec["dataset"] != "cityscapes" and spec.get("split") is not None:
        raise InputError(f"dataset spec: 'split' is only for cityscapes, "
                         f"got split={spec['split']!r} for {spec['dataset']}")
    size = spec.get("size")
    if size is not None and (len(size) != 2 or any(int(s) <= 0 for s in size)):
        raise InputError(f"dataset spec: 'size' must be [H, W] of positive ints or null, got {size!r}")


def _override_images(entries: list[Entry], folder: Path) -> list[Entry]:
    """Stylized source: same file names in another folder; every labelled image needs one."""
    from bismap.data.readers import Entry, missing_message

    if not folder.is_dir():
        raise InputError(f"{folder}: stylized images folder not found")
    missing = [e.file for e in entries if not (folder / e.file).is_file()]
    if missing:
        raise InputError(missing_message(folder, missing, "stylized images for labelled source images"))
    return [Entry(e.name, e.file, folder / e.file, e.label) for e in entries]


def _override_labels(entries: list[Entry], folder: Path) -> list[Entry]:
    """Pseudo labels: `<folder>/<image file name>`, trainIds; every image needs one."""
    from bismap.data.readers import Entry, missing_message

    if not folder.is_dir():
        raise InputError(f"{folder}: labels folder not found")
    missing = [e.file for e in entries if not (folder / e.file).is_file()]
    if missing:
        raise InputError(missing_message(folder, missing, "label files for images"))
    return [Entry(e.name, e.file, e.image, folder / e.file) for e in entries]


def open_dataset(spec: dict[str, Any]) -> SegmentationFolder:
    """Open a dataset folder described by `spec` (see module docstring); items are dicts of numpy arrays."""
    from bismap.data.cityscapes import cityscapes_entries, read_cityscapes_label
    from bismap.data.gta5 import gta5_entries, read_gta5_label
    from bismap.data.labels import read_trainid_png
    from bismap.data.readers import SegmentationFolder
    from bismap.data.synthia import read_synthia_label, synthia_entries

    _check_spec(spec)
    kind, root = spec["dataset"], Path(spec["root"])
    labels = spec.get("labels")
    unlabelled = isinstance(labels, str) and labels.lower() == "none"
    own_labels = labels is None
    if kind == "gta5":
        entries = gta5_entries(root, with_labels=own_labels)
        reader = read_gta5_label
    elif kind == "synthia":
        entries = synthia_entries(root, with_labels=own_labels)
        reader = read_synthia_label
    else:
        entries = cityscapes_entries(root, spec["split"], with_labels=own_labels)
        reader = read_cityscapes_label
    if spec.get("images"):
        entries = _override_images(entries, Path(spec["images"]))
    if unlabelled:
        reader = None
    elif not own_labels:
        entries = _override_labels(entries, Path(labels))
        reader = read_trainid_png
    return SegmentationFolder(entries, reader, size=spec.get("size"), root=root, kind=kind)


__all__ = ["open_dataset"]
