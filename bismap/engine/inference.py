"""Test-time prediction and target batch-norm adaptation.

predict_logits is the one place logits are computed for labels and metrics, so the teacher
labels, pseudo labels and evaluation agree: per scale, resize the input, forward, upsample
the stride-4 logits bilinearly (align_corners=True, as the original) to the input size, flip
back, and average the logits (the original averages logits, not probabilities).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bismap.engine.device import resolve_amp
from bismap.io import InputError


def _identity(item: Any) -> Any:
    return item


def _logits_of(output: Any) -> torch.Tensor:
    """Models return (feature, logits); plain tensors are accepted too."""
    if isinstance(output, (tuple, list)):
        return output[-1]
    return output


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False,
                   amp: str = "off") -> torch.Tensor:
    """Average logits over scales x {identity, horizontal flip}, at the input size; float32 [B,C,H,W].

    The caller sets the model's mode (eval for normal prediction).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B,3,H,W], got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    settings = resolve_amp(amp, images.device)
    total: torch.Tensor | None = None
    count = 0
    for scale in scales:
        scale = float(scale)
        size = (max(int(round(h * scale)), 1), max(int(round(w * scale)), 1))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        views = [False, True] if flip else [False]
        for flipped in views:
            xin = torch.flip(x, dims=[3]) if flipped else x
            with settings.autocast():
                logits = _logits_of(model(xin))
            logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=True)
            if flipped:
                logits = torch.flip(logits, dims=[3])
            total = logits if total is None else total + logits
            count += 1
    if total is None:
        raise ValueError("scales must not be empty")
    return total / count


def normalise_image(image: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float [3,H,W]: (pixel/255 - mean) / std. Float [3,H,W] tensors pass unchanged."""
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        return image
    x = torch.as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor([float(v) for v in mean]).view(3, 1, 1)
    s = torch.tensor([float(v) for v in std]).view(3, 1, 1)
    return (x - m) / s


def _image_batches(data: Any, max_images: int | None, batch_size: int, mean, std) -> Iterator[torch.Tensor]:
    """Float image batches from a dataset (items with "image"), a DataLoader, or an iterable of batches."""
    seen = 0
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, torch.utils.data.DataLoader):
        n = len(data) if max_images is None else min(len(data), int(max_images))
        pending: list[torch.Tensor] = []
        for i in range(n):
            item = data[i]
            image = item["image"] if isinstance(item, dict) else item
            if not (isinstance(image, torch.Tensor) and image.is_floating_point()) and (mean is None or std is None):
                raise ValueError("adapt_batchnorm: uint8 images need mean and std")
            x = normalise_image(image, mean, std)
            if pending and x.shape != pending[0].shape:  # images of another size: flush first
                yield torch.stack(pending)
                pending = []
            pending.append(x)
            if len(pending) == batch_size:
                yield torch.stack(pending)
                pending = []
        if pending:
            yield torch.stack(pending)
        return
    for batch in data:
        x = batch["image"] if isinstance(batch, dict) else batch
        if max_images is not None and seen + x.shape[0] > max_images:
            x = x[: max_images - seen]
        if x.shape[0] == 0:
            return
        seen += x.shape[0]
        yield x
        if max_images is not None and seen >= max_images:
            return


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, data: Any, max_images: int | None = None, batch_size: int = 1, *,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    device: torch.device | str | None = None) -> int:
    """AdaBN: replace every BatchNorm's running statistics by those of the target images.

    Running stats are reset and re-estimated as a cumulative average (momentum=None) over up
    to `max_images` images, BN layers in train mode, everything else in eval, under no_grad.
    The model is left in eval mode with the new statistics; the BN momentum values are put
    back. Frozen BN (not a _BatchNorm) is untouched. Returns the number of images used.
    """
    if device is None:
        device = next(model.parameters()).device
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    used = 0
    try:
        for x in _image_batches(data, max_images, batch_size, mean, std):
            if x.shape[0] < 2:
                # A BatchNorm after a global pooling (DeepLab's ASPP image branch) sees one value per
                # channel and refuses a 1-image batch in train mode: a last image left over by
                # max_images % batch_size (or one of another size) is not used.
                continue
            model(x.to(device))
            used += x.shape[0]
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    if used == 0:
        raise InputError(f"adabn: no batch of 2 or more images to estimate the statistics from (batch_size "
                         f"{batch_size}, max_images {max_images}); BatchNorm after global pooling needs 2")
    return used


def predict_dataset(model: nn.Module, dataset: Any, scales: Sequence[float] = (1.0,), flip: bool = False, *,
                    mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                    output: str = "logits", amp: str = "off", workers: int = 0,
                    indices: Iterable[int] | None = None) -> Iterator[tuple[str, str, torch.Tensor, np.ndarray | None]]:
    """Yield (name, file, logits or probabilities [C,H,W] float32 on CPU, label uint8 [H,W] or None).

    One image at a time (full-resolution multi-scale inference is memory bound); `workers`
    reads images in background processes. Labels are None when the dataset has none.
    """
    if output not in ("logits", "probs"):
        raise ValueError(f"output must be 'logits' or 'probs', got {output!r}")
    device = torch.device(device)
    has_labels = bool(getattr(dataset, "has_labels", True))
    subset: Any = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    loader = torch.utils.data.DataLoader(subset, batch_size=None, shuffle=False, num_workers=int(workers),
                                         collate_fn=_identity)
    model.eval()
    for item in loader:
        x = normalise_image(item["image"], mean, std).unsqueeze(0).to(device)
        logits = predict_logits(model, x, scales=scales, flip=flip, amp=amp)[0]
        out = torch.softmax(logits, dim=0) if output == "probs" else logits
        label = item.get("label") if has_labels else None
        if isinstance(label, torch.Tensor):
            label = label.numpy()
        yield item["name"], item.get("file", item["name"]), out.cpu(), label


def iter_batches(dataset, batch_size: int, max_images: int | None = None) -> Iterator[list[dict]]:
    """Items in dataset (sorted-name) order, grouped into batches of equal image size."""
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    batch: list[dict] = []
    for i in range(n):
        item = dataset[i]
        if batch and (len(batch) >= batch_size or batch[0]["image"].shape != item["image"].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def batch_bounds(shapes: Sequence[tuple[int, int]], batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each batch iter_batches makes of images with these (H, W), without reading them."""
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(shapes) + 1):
        if i == len(shapes) or i - start >= batch_size or tuple(shapes[i]) != tuple(shapes[start]):
            out.append((start, i))
            start = i
    return out


def to_input(items: Sequence[dict], mean: Sequence[float], std: Sequence[float], device: torch.device) -> torch.Tensor:
    """uint8 HxWx3 images -> normalised float [B,3,H,W] (mean/std in [0,1] units, as the training views)."""
    x = torch.from_numpy(np.stack([it["image"] for it in items])).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).to(device)


@torch.no_grad()
def forward(model: torch.nn.Module, x: torch.Tensor, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature, logits) at stride 4, optionally averaged with the horizontally flipped image's."""
    feat, logits = model(x)
    if flip:
        f2, l2 = model(torch.flip(x, dims=[3]))
        feat = (feat + torch.flip(f2, dims=[3])) / 2
        logits = (logits + torch.flip(l2, dims=[3])) / 2
    return feat.float(), logits.float()


def predict_labels(model: torch.nn.Module, image: np.ndarray, *, mean, std, scales=(1.0,), flip: bool = False,
                   device: torch.device | str = "cpu", size: tuple[int, int] | None = None) -> np.ndarray:
    """Hard labels (uint8 [H,W]) for one image: multi-scale x flip logit averaging, then argmax.

    `size` (H, W) resamples the averaged logits bilinearly before the argmax (label size).
    """
    from bismap.engine.inference import normalise_image, predict_logits

    x = normalise_image(image, mean, std).unsqueeze(0).to(device)
    with torch.no_grad():
        logits = predict_logits(model, x, scales=tuple(float(s) for s in scales), flip=bool(flip))
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = torch.nn.functional.interpolate(logits.float(), size=tuple(size), mode="bilinear",
                                                     align_corners=True)
        return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def item_logits(model: torch.nn.Module, dataset, *, scales, flip: bool, mean, std, device: torch.device | str,
                workers: int = 0) -> Iterator[tuple[dict, torch.Tensor]]:
    """Yield (item, logits [1,C,H,W] on the device) for every item: multi-scale x flip averaged."""
    from bismap.engine.inference import normalise_image, predict_logits

    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=int(workers),
                                         collate_fn=_identity)
    model.eval()
    with torch.no_grad():
        for item in loader:
            x = normalise_image(item["image"], mean, std).unsqueeze(0).to(device)
            yield item, predict_logits(model, x, scales=tuple(float(s) for s in scales), flip=bool(flip))


def label_maps(pairs: Iterable[tuple[dict, torch.Tensor]], *, has_labels: bool = True, confidence: bool = False,
               logit_offset: torch.Tensor | None = None):
    """(name, file, prediction uint8 [H,W], label uint8 [H,W] or None, confidence or None) per (item, logits).

    `logit_offset` [C] is added to the logits (prior alignment); the logits are resampled to the
    label's size when it differs. The argmax happens on the device: copying full-resolution
    19-channel logits to the host per image would dominate.
    """
    with torch.no_grad():
        for item, logits in pairs:
            if logit_offset is not None:
                logits = logits + logit_offset.to(device=logits.device, dtype=logits.dtype)[None, :, None, None]
            label = item.get("label") if has_labels else None
            if label is not None and tuple(logits.shape[-2:]) != tuple(label.shape):
                logits = torch.nn.functional.interpolate(logits, size=tuple(label.shape), mode="bilinear",
                                                         align_corners=True)
            if confidence:
                conf, pred_t = torch.softmax(logits.float(), 1).max(1)
                pred, conf = pred_t[0].to(torch.uint8).cpu().numpy(), conf[0].cpu().numpy()
            else:
                pred, conf = logits.argmax(1)[0].to(torch.uint8).cpu().numpy(), None
            yield item["name"], item.get("file", item["name"]), pred, label, conf


def predict_label_maps(model: torch.nn.Module, dataset, *, scales, flip: bool, mean, std,
                       device: torch.device | str, workers: int = 0, confidence: bool = False,
                       logit_offset: torch.Tensor | None = None):
    """Yield (name, file, prediction uint8 [H,W], label uint8 [H,W] or None, confidence) for every item
    (`confidence`: the softmax probability of the predicted class, float32 [H,W], else None)."""
    pairs = item_logits(model, dataset, scales=scales, flip=flip, mean=mean, std=std, device=device, workers=workers)
    yield from label_maps(pairs, has_labels=bool(getattr(dataset, "has_labels", True)), confidence=confidence,
                          logit_offset=logit_offset)
