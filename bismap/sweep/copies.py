"""Ablation runs that start as a copy of their seed's reference run, and when such a copy is stale.

Copied outputs carry no Snakemake provenance records, so in the copy Snakemake can neither see a
config change nor a rebuild of the reference upstream of what the ablation reran: the copy would
keep stale stages forever. A manifest written at copy time (the config's fingerprint and each copied
file's mtime and size) lets a later `bismap benchmark` see both and copy the reference afresh.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import yaml

from bismap.io import InputError, read_json, write_json
from bismap.sweep.archive import FORCE_MARKER

MANIFEST = ".benchmark_copy.json"  # {"reference", "config", "files": {relpath: [mtime_ns, size]}}


def config_fingerprint(spec: dict, cfg: dict) -> str:
    """sha256 over the run's config files' contents and its overlay: what Snakemake would read."""
    h = hashlib.sha256()
    for name in [spec["base_config"], *spec.get("configfiles", [])]:
        h.update(Path(name).read_bytes())
    h.update(yaml.safe_dump(cfg, sort_keys=True).encode())
    return h.hexdigest()


def _stats(folder: Path) -> dict[str, list[int]]:
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name not in (FORCE_MARKER, MANIFEST):
            st = f.stat()
            out[f.relative_to(folder).as_posix()] = [st.st_mtime_ns, st.st_size]
    return out


def copy_reference(root: Path, ref_exp: str, exp: str, roots: list[str], fingerprint: str) -> None:
    """results/<exp> as a copy of results/<ref_exp> (file times kept), the rules to force in a marker."""
    tmp = root / f".{exp}.copying"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(root / ref_exp, tmp, copy_function=shutil.copy2)
    for name in ("summary.json", "summary.md", MANIFEST):  # the reference's results never pass as this run's
        (tmp / name).unlink(missing_ok=True)
    (tmp / FORCE_MARKER).write_text("\n".join(roots) + "\n")
    manifest = {"reference": ref_exp, "config": fingerprint, "files": _stats(tmp)}
    write_json(tmp / MANIFEST, manifest)
    tmp.rename(root / exp)


def copied_from(run_dir: Path) -> str | None:
    """The reference run `run_dir` was copied from (None: not a copy, or copied without a manifest)."""
    try:
        return read_json(run_dir / MANIFEST)["reference"] if (run_dir / MANIFEST).is_file() else None
    except (InputError, KeyError, TypeError):
        return None


def stale_reason(root: Path, exp: str, fingerprint: str) -> str | None:
    """Why the copy results/<exp> no longer matches its config or its reference run (None: it does)."""
    run_dir = root / exp
    if not (run_dir / MANIFEST).is_file():
        return None
    try:
        manifest = read_json(run_dir / MANIFEST)
        ref_dir, files, config = root / manifest["reference"], manifest["files"], manifest["config"]
    except (InputError, KeyError, TypeError) as e:
        return f"its {MANIFEST} is unreadable ({e})"
    if config != fingerprint:
        return "the config changed since it was copied"
    now, ref = _stats(run_dir), _stats(ref_dir)
    for rel, was in files.items():
        if now.get(rel) == was and ref.get(rel) != was:   # still the old copy; the reference rebuilt it
            return f"{manifest['reference']} rebuilt {rel} since the copy"
    return None


def discard(run_dir: Path) -> None:
    """Remove a stale copy (renamed first, so a kill mid-way never leaves a half-deleted run)."""
    trash = run_dir.with_name(f".{run_dir.name}.stale")
    shutil.rmtree(trash, ignore_errors=True)
    run_dir.rename(trash)
    shutil.rmtree(trash)
