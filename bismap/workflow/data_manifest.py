"""Data manifests: edits of the user's datasets made visible to Snakemake.

Snakemake reruns a job when an input is newer than its outputs, but a dataset root is a folder
whose modification time does not change when a file deep inside it is replaced in place, and
an added image only touches its city folder. So the rules that read a dataset part (source,
target train, target val) also take its manifest: a JSON list of every file of the part (path
relative to the root, size, modification time in ns), which the Snakefile refreshes whenever it
builds the DAG and rewrites only when the list changed. A changed manifest is newer than every
output made from the old data, and exactly the jobs that read that part (and what follows them)
rerun; an unchanged one is left alone, so nothing reruns.

A manifest made for the first time (a new results folder, or results made before manifests
existed) gets the newest modification time of the files it lists instead of the current time:
results made after the data was last changed stay valid, results older than a data edit rerun.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from bismap.io import atomic_path

FORMAT = "bismap-data-manifest/1"


def dataset_folders(spec: dict[str, Any]) -> list[Path]:
    """The folders a dataset spec reads (as bismap.data opens it): images, labels, stylized images."""
    root = Path(spec["root"])
    kind = spec["dataset"]
    if kind == "cityscapes":
        folders = [root / "leftImg8bit" / spec["split"], root / "gtFine" / spec["split"]]
    elif kind == "gta5":
        folders = [root / "images", root / "labels"]
    elif kind == "synthia":
        folders = [root / "RGB", root / "GT" / "LABELS"]
    else:
        raise ValueError(f"dataset spec: unknown dataset {kind!r}")
    if spec.get("images"):
        folders.append(Path(spec["images"]))
    return folders


def _walk(folder: Path) -> Iterable[os.DirEntry]:
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=True):
            yield from _walk(Path(entry.path))
        else:
            yield entry


def file_list(folders: Iterable[Path]) -> list[list]:
    """[path, size, mtime_ns] of every file under `folders` (sorted; symlinks followed, so a dataset
    linked into place is listed by what it points to)."""
    out = []
    for folder in folders:
        for entry in _walk(folder):
            try:
                st = entry.stat(follow_symlinks=True)
            except FileNotFoundError:  # a dangling link: the reader reports it
                continue
            out.append([entry.path, st.st_size, st.st_mtime_ns])
    return sorted(out)


def manifest(specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest of one data part: its specs (dataset, root, split, stylized folder) and files."""
    folders = [f for spec in specs.values() for f in dataset_folders(spec)]
    keep = ("dataset", "root", "split", "images")
    return {"format": FORMAT, "specs": {name: {k: spec[k] for k in keep if spec.get(k) is not None}
                                        for name, spec in specs.items()},
            "files": file_list(folders)}


def update_manifest(path: str | os.PathLike, specs: dict[str, dict[str, Any]]) -> bool:
    """Write the manifest of `specs` to `path` unless the file already holds exactly it; True when written.

    A first manifest is dated to its newest file (see the module docstring), a changed one to now.
    """
    path = Path(path)
    new = manifest(specs)
    old = None
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
    if old == new:
        return False
    head = json.dumps({k: v for k, v in new.items() if k != "files"})[:-1]
    lines = ",\n".join(json.dumps(f) for f in new["files"])  # one file a line: diffable
    with atomic_path(path) as tmp:
        tmp.write_text(f'{head}, "files": [\n{lines}\n]}}\n')
    if old is None and new["files"]:
        newest = max(mtime for _, _, mtime in new["files"])
        os.utime(path, ns=(newest, newest))
    return True
