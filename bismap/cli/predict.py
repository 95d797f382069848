"""`bismap predict`: label any folder of images with a trained checkpoint.

Writes `<out>/labels/<relative path>.png` (single-channel palette PNG, Cityscapes trainIds) and
`<out>/overlays/<relative path>.png` (the image blended with the class colours) for every
.png/.jpg/.jpeg under `--images` (recursively, sub-folders kept). With --labelids, also
`<out>/labelIds/<city>_<seq>_<frame>_pred_labelIds.png`: Cityscapes labelIds at the image's full
size, the format the official evaluation script and the test server take. Normalisation comes from the
checkpoint (training stages store it) unless --mean/--std are given.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

from bismap.io import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="label a folder of images with a checkpoint (label PNGs + overlays)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="bismap checkpoint (.pt) written by a training stage")
    p.add_argument("--images", required=True, help="folder of images (.png/.jpg/.jpeg, searched recursively)")
    p.add_argument("--out", required=True, help="output folder (labels/ and overlays/ are created in it)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0],
                   help="inference scales; logits are averaged (default: 1.0)")
    p.add_argument("--flip", action="store_true", help="also average the horizontally flipped image")
    p.add_argument("--which", choices=("model", "ema"), default="model",
                   help="weights to use: the trained model or its EMA teacher (default: model)")
    p.add_argument("--mean", type=float, nargs=3, default=None,
                   help="normalisation mean (default: stored in the checkpoint, else ImageNet's)")
    p.add_argument("--std", type=float, nargs=3, default=None,
                   help="normalisation std (default: stored in the checkpoint, else ImageNet's)")
    p.add_argument("--labelids", action="store_true",
                   help="also write Cityscapes labelIds PNGs (for cityscapesScripts / the test server)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay (0..1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the CPU affinity)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="skip images that cannot be read (listed in a summary at the end) instead of stopping "
                        "at the first one (default: stop)")
    p.set_defaults(func=main)
    return p


# Fallback when neither the command line nor the checkpoint gives a normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: images folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no .png/.jpg/.jpeg images found")
    return files


def stored_normalisation(checkpoint: Path) -> tuple[list[float], list[float]] | None:
    """The `data` {mean, std} the training stage stored in the checkpoint, if any."""
    from bismap.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    norm = ckpt.get("data")
    if isinstance(norm, dict) and "mean" in norm and "std" in norm:
        return list(norm["mean"]), list(norm["std"])
    return None


def overlay(image: np.ndarray, label: np.ndarray, alpha: float) -> np.ndarray:
    """Image blended with the class colours; ignore (255) pixels keep the image."""
    from bismap.data.labels import colorize

    colours = colorize(label).astype(np.float32)
    out = image.astype(np.float32)
    mask = label != 255
    out[mask] = (1.0 - alpha) * out[mask] + alpha * colours[mask]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def predict_folder(*, checkpoint: str | Path, images: str | Path, out: str | Path, scales=(1.0,), flip: bool = False,
                   which: str = "model", mean=None, std=None, alpha: float = 0.5, device: str = "auto",
                   threads: int | None = None, labelids: bool = False, skip_unreadable: bool = False) -> int:
    """Label every image under `images`; returns the number of images written.

    An unreadable image stops the run (InputError naming it) unless `skip_unreadable`, which skips it and
    lists every skipped file at the end. On any failure, folders this call created and left empty are
    removed (completed label files stay: each is written atomically)."""
    from bismap.data.image_io import read_rgb
    from bismap.engine.checkpoint import load_model
    from bismap.engine.device import resolve_device, set_threads
    from bismap.engine.inference import predict_labels
    from bismap.evaluation.export import labelids_file_name

    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha: must be in [0, 1], got {alpha}")
    if not scales or any(s <= 0 for s in scales):
        raise InputError(f"--scales: need positive values, got {scales}")
    checkpoint, images, out = Path(checkpoint), Path(images), Path(out)
    files = find_images(images)
    if labelids:  # check every name before any work: a late failure would waste the whole run
        for path in files:
            labelids_file_name(path.name)
    set_threads(threads)
    dev = resolve_device(device)
    mean, std = _normalisation(checkpoint, mean, std)
    model = load_model(checkpoint, device=dev, which=which)
    existing = {out, *(p for p in out.rglob("*") if p.is_dir())} if out.is_dir() else set()
    skipped: list[str] = []
    written = 0
    try:
        for k, path in enumerate(files):
            rel = path.relative_to(images).with_suffix(".png")
            try:
                image = read_rgb(path)
            except InputError as e:
                if not skip_unreadable:
                    raise InputError(f"{e} (use --skip-unreadable to skip such images)") from None
                skipped.append(str(e))
                print(f"predict: {k + 1}/{len(files)} skipped {path}", flush=True)
                continue
            label = predict_labels(model, image, mean=mean, std=std, scales=scales, flip=flip, device=dev)
            _write_outputs(out, rel, image, label, alpha=alpha, labelids_name=labelids_file_name(path.name)
                           if labelids else None)
            written += 1
            print(f"predict: {k + 1}/{len(files)} {rel}", flush=True)
    except BaseException:
        _remove_empty_dirs(out, existing)
        raise
    if skipped:
        print(f"predict: skipped {len(skipped)} of {len(files)} unreadable image(s):", file=sys.stderr)
        for line in skipped:
            print(f"  {line}", file=sys.stderr)
    return written


def _normalisation(checkpoint: Path, mean, std) -> tuple:
    """The mean/std given, else the ones the checkpoint was trained with, else ImageNet's."""
    if mean is None or std is None:
        stored = stored_normalisation(checkpoint)
        s_mean, s_std = stored if stored is not None else (IMAGENET_MEAN, IMAGENET_STD)
        mean = s_mean if mean is None else mean
        std = s_std if std is None else std
    return mean, std


def _write_outputs(out: Path, rel: Path, image, label, *, alpha: float, labelids_name: str | None) -> None:
    """labels/<rel>, overlays/<rel> and, when asked, labelIds/<name>: each written atomically."""
    from PIL import Image

    from bismap.data.labels import save_label_png
    from bismap.evaluation.export import export_labelids
    from bismap.io import atomic_path

    save_label_png(out / "labels" / rel, label)
    with atomic_path(out / "overlays" / rel) as tmp:
        Image.fromarray(overlay(image, label, alpha)).save(tmp, format="PNG")
    if labelids_name is not None:
        export_labelids(label, out / "labelIds" / labelids_name, size=None)


def _remove_empty_dirs(out: Path, existing: set[Path]) -> None:
    """Remove the empty folders this run created under `out` (and `out` itself), deepest first; folders
    that existed before and anything holding files stay."""
    if not out.is_dir():
        return
    mine = [p for p in [out, *out.rglob("*")] if p.is_dir() and p not in existing]
    for d in sorted(mine, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()


def main(args: argparse.Namespace) -> None:
    predict_folder(checkpoint=args.checkpoint, images=args.images, out=args.out, scales=args.scales, flip=args.flip,
                   which=args.which, mean=args.mean, std=args.std, alpha=args.alpha, device=args.device,
                   threads=args.threads, labelids=args.labelids, skip_unreadable=args.skip_unreadable)
