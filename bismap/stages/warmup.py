"""Stage: supervised training on one labelled dataset spec.

Used twice in the DAG: the source-only warm-up (GTA5/SYNTHIA, whose decoder features feed the
prototypes and whose predictions are the source-only baseline) and the target-supervised oracle
(the same function on Cityscapes train with its ground truth). Plain cross entropy, no weights:
the original ships no warm-up config, so this is the simplest faithful choice.
"""
from __future__ import annotations

from pathlib import Path

from bismap.engine.launch import on_ranks
from bismap.engine.stage_setup import build_seeded_model, build_stream, build_view, derive_seed
from bismap.engine.stage_training import begin, train_stage


@on_ranks
def run(*, source: dict, out_checkpoint: str | Path, model: dict, train: dict,
        train_overrides: dict | None = None, augment: dict, data: dict, runtime: dict, threads: int = 1) -> None:
    """Train `model` on the labelled `source` spec and write the final-iteration checkpoint."""
    args = dict(locals())  # first: the arguments alone, from which the resume fingerprint derives
    from bismap.method.losses import weighted_cross_entropy

    device, train, seed = begin(args)
    view = build_view(source, augment, data, seed=derive_seed(seed, "source-view"))
    streams = {"source": build_stream(view, train, runtime, seed=derive_seed(seed, "source-stream"))}
    net = build_seeded_model(model, seed)

    def loss_fn(ctx):
        batch = ctx.batches["source"]
        with ctx.autocast():
            _, logits = ctx.model(batch["image"])
        return {"ce": weighted_cross_entropy(logits.float(), batch["label"])}

    train_stage("warmup", args, net=net, loss_fn=loss_fn, streams=streams, device=device)
