"""Training memory at a config's setting, counted from the autograd graph on the meta device.

No GPU and no compute: the networks are built on PyTorch's meta device (shapes only) and every
tensor autograd saves for the backward is counted once per storage, for each forward that trains
(with its loss). Per training stage: the weights, gradients and SGD momentum of the trained
network, the frozen copies it runs (EMA or distillation teacher), and the saved activations of
all its training forwards, which are alive together because one backward follows them (GPU).
AMP is approximated by a bf16 network and input (what autocast stores for convolutions); cuDNN
workspaces, the allocator's cache and the CUDA context are not counted, so a GPU's
`max_memory_reserved` is higher (scripts/gpu_check.sh measures it when a GPU is there).
"""
from __future__ import annotations

from typing import Any

import torch

from bismap.bench.common import table

GIB = 2 ** 30


def saved_bytes(model_cfg: dict, batch: int, crop: tuple[int, int], dtype: torch.dtype, checkpointing: bool) -> int:
    """Bytes autograd keeps from one training forward of `batch` crops plus its cross-entropy."""
    from bismap.method.losses import upsample_to
    from bismap.models import build_model
    from bismap.models.checkpointing import set_activation_checkpointing

    with torch.device("meta"):
        model = build_model({**model_cfg, "weights": "none"}).to(dtype)
        x = torch.empty(batch, 3, *crop, dtype=dtype)
        label = torch.zeros(batch, *crop, dtype=torch.long)
    model.train()
    set_activation_checkpointing(model, checkpointing)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s._cdata] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, logits = model(x)
        # the stages' losses: logits upsampled to the crop, per-pixel CE (no data-dependent branch here)
        torch.nn.functional.cross_entropy(upsample_to(logits, crop).float(), label, ignore_index=255)
    return sum(storages.values())


def merged_config(config_file: str) -> dict:
    """config.yaml with a config file of the repository merged over it, as `--configfile` does."""
    import yaml

    from bismap.bench.common import REPO, default_config

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return merge(default_config(), yaml.safe_load((REPO / config_file).read_text()))


def parameter_bytes(model_cfg: dict) -> int:
    from bismap.models import build_model

    with torch.device("meta"):
        model = build_model({**model_cfg, "weights": "none"})
    return sum(p.numel() * 4 for p in model.parameters())  # fp32 master weights, also under AMP


def stages(cfg: dict) -> list[tuple[str, dict, int, list[dict]]]:
    """(stage, trained model slice, training forwards per step, frozen model slices) of a config."""
    model = dict(cfg["model"])
    student = {**model, **({"backbone": cfg["distillation"]["student_backbone"]}
                           if cfg["distillation"].get("student_backbone") else {})}
    consistency = float(cfg["self_training"]["consistency"]["weight"]) > 0
    kd = float(cfg["distillation"]["kd"]["weight"]) > 0
    return [("warmup", model, 1, []), ("oracle", model, 1, []),
            ("self_training", model, 3 if consistency else 2, [model] if consistency else []),
            ("distillation", student, 2, [model] if kd else [])]


def measure(cfg: dict) -> list[dict[str, Any]]:
    batch = int(cfg["train"]["batch_size"])
    crop = tuple(int(v) for v in cfg["augment"]["crop"])
    rows = []
    for stage, model, forwards, frozen in stages(cfg):
        state = 3 * parameter_bytes(model) + sum(parameter_bytes(m) for m in frozen)
        row: dict[str, Any] = {"stage": stage, "backbone": model["backbone"], "forwards": forwards,
                               "state_gib": state / GIB}
        for name, dtype in (("fp32", torch.float32), ("amp", torch.bfloat16)):
            for ckpt in (False, True):
                act = forwards * saved_bytes(model, batch, crop, dtype, ckpt)
                row[f"{name}{'_ckpt' if ckpt else ''}_gib"] = (state + act) / GIB
        rows.append(row)
    return rows


def run(config_files: list[str]) -> dict[str, Any]:
    """Rows of every training stage for each config file (merged over config.yaml)."""
    out = {}
    for name in config_files:
        cfg = merged_config(name)
        out[name] = {"batch": int(cfg["train"]["batch_size"]), "crop": list(cfg["augment"]["crop"]),
                     "rows": measure(cfg)}
    return {"configs": out}


def markdown(result: dict[str, Any]) -> str:
    return "\n\n".join(_table(name, r) for name, r in result["configs"].items())


def _table(cfg_name: str, cfg: dict) -> str:
    rows = cfg["rows"]
    crop = cfg["crop"]
    head = (f"`{cfg_name}`: {cfg['batch']} + {cfg['batch']} crops of "
            f"{crop[0]}x{crop[1]} (HxW); GiB of weights, gradients, momentum, frozen copies and saved "
            "activations, counted on the meta device (no workspaces, cache or CUDA context).")
    shown = [{**r, **{k: f"{r[k]:.2f}" if k == "state_gib" else f"{r[k]:.1f}" for k in r if k.endswith("_gib")}}
             for r in rows]
    body = table(shown, [("stage", "stage"), ("backbone", "backbone"), ("forwards", "training forwards"),
                         ("state_gib", "weights and state"), ("fp32_gib", "fp32"),
                         ("fp32_ckpt_gib", "fp32 + checkpointing"), ("amp_gib", "AMP"),
                         ("amp_ckpt_gib", "AMP + checkpointing")])
    return head + "\n\n" + body
