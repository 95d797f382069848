"""The folder-backed segmentation dataset the GTA5, SYNTHIA and Cityscapes readers share."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from torch.utils.data import Dataset

from bismap.data.image_io import image_size, read_rgb, resize_image, resize_label
from bismap.data.labels import IGNORE_INDEX
from bismap.io import InputError


@dataclass(frozen=True)
class Entry:
    """One item: the image file, and its label file (None = unlabelled)."""

    name: str
    file: str
    image: Path
    label: Path | None


class SegmentationFolder(Dataset):
    """Dataset over (image, label file) entries; label files are mapped to trainIds by `label_reader`.

    Items: {"image": uint8 [H,W,3], "label": uint8 [H,W] trainIds/255, "name": str, "file": str}.
    A label whose size differs from its image is resized nearest to the image (GTA5 has such pairs),
    then both go to `size` if given.
    """

    def __init__(self, entries: list[Entry], label_reader: Callable[[Path], np.ndarray] | None,
                 size: Sequence[int] | None = None, root: str | os.PathLike | None = None,
                 kind: str = "folder") -> None:
        entries = sorted(entries, key=lambda e: e.name)
        _refuse_repeated_names(entries, root)
        self.entries = entries
        self.label_reader = label_reader
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.root = None if root is None else Path(root)
        self.kind = kind
        self.names: list[str] = [e.name for e in entries]
        self.files: list[str] = [e.file for e in entries]
        self.has_labels: bool = label_reader is not None

    def __len__(self) -> int:
        return len(self.entries)

    def shard(self, index: int, count: int) -> "SegmentationFolder":
        """Images [n * index // count, n * (index + 1) // count) of the n: the `index`-th of `count`
        contiguous blocks that together hold every image once (a label stage's shard job)."""
        if not 0 <= int(index) < int(count):
            raise ValueError(f"shard {index} of {count}")
        n = len(self.entries)
        part = copy.copy(self)
        part.entries = self.entries[n * int(index) // int(count): n * (int(index) + 1) // int(count)]
        part.names = [e.name for e in part.entries]
        part.files = [e.file for e in part.entries]
        return part

    def image_shape(self, index: int) -> tuple[int, int]:
        """(H, W) of read_image(index), from the file's header when there is no fixed `size` (no decoding)."""
        if self.size is not None:
            return self.size
        return image_size(self.entries[index].image)

    def read_image(self, index: int) -> np.ndarray:
        image = read_rgb(self.entries[index].image)
        return image if self.size is None else resize_image(image, self.size)

    def read_label(self, index: int, image_hw: tuple[int, int]) -> np.ndarray:
        entry = self.entries[index]
        if self.label_reader is None or entry.label is None:
            return np.full(image_hw, IGNORE_INDEX, dtype=np.uint8)
        label = self.label_reader(entry.label)
        return resize_label(label, image_hw)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        entry = self.entries[index]
        image = read_rgb(entry.image)
        label = self.read_label(index, image.shape[:2])
        if self.size is not None:
            image = resize_image(image, self.size)
            label = resize_label(label, self.size)
        return {"image": image, "label": label, "name": entry.name, "file": entry.file}


def _refuse_repeated_names(entries: list[Entry], root: str | os.PathLike | None) -> None:
    """Label files, pseudo labels, STM maps and the ground-truth match are keyed by an image's file name,
    so two images of one split with the same name (in two city folders) would share one label file."""
    seen: dict[str, Path] = {}
    clashes: list[str] = []
    for e in entries:
        if e.name in seen:
            clashes.append(f"{_shown(seen[e.name], root)} and {_shown(e.image, root)}")
        else:
            seen[e.name] = e.image
    if clashes:
        where = root if root is not None else "dataset"
        raise InputError(f"{where}: {len(clashes)} image(s) share their file name with another image of the split "
                         f"(first: {clashes[0]}); labels and pseudo labels are keyed by file name, so rename them "
                         f"to unique names (Cityscapes names start with their city)")


def _shown(path: Path, root: str | os.PathLike | None) -> str:
    try:
        return str(Path(path).relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def list_pngs(folder: Path, what: str) -> list[Path]:
    """Sorted *.png in `folder`; a missing or empty folder is an InputError (names the folder)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no .png files in the {what} folder")
    return files


def missing_message(folder: Path, missing: list[str], what: str) -> str:
    shown = ", ".join(missing[:3])
    return f"{folder}: {len(missing)} {what} missing (first: {shown}{', ...' if len(missing) > 3 else ''})"
