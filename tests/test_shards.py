"""Sharded label stages and evaluation (resources.<stage>.shards): the statistics job, the shard jobs and
the gather write the folder and quality json (the metrics) of one job, byte for byte."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bismap.io import InputError
from conftest import RUNTIME, TINY_MODEL, schema_defaults, to_label_ids, write_cityscapes
from test_stages_labels import colour_model  # noqa: F401  (a fixture)

DATA = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
PAPER = {"scales": [0.75, 1.0, 1.5], "flip": True, "selection": "none", "align_prior": False}
EMBEDDED = {"scales": [1.0], "flip": True, "selection": "balanced", "percentile": 20.0, "align_prior": True,
            "adabn": {"enabled": True, "max_images": 3, "batch_size": 2}}


def random_checkpoint(path: Path) -> Path:
    """A randomly initialised TINY_MODEL: labels vary over the pixels, and BatchNorm gives AdaBN work."""
    import torch

    from bismap.engine.checkpoint import FORMAT, save_checkpoint
    from bismap.models import build_model

    torch.manual_seed(1)
    net = build_model(TINY_MODEL)
    save_checkpoint(path, {"format": FORMAT, "model_config": dict(TINY_MODEL), "model": net.state_dict(),
                           "ema": None, "iteration": 0})
    return path


@pytest.fixture(scope="module")
def target(module_dir):
    rng = np.random.default_rng(0)
    scenes = [(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8), to_label_ids(rng.integers(0, 19, (24, 40))
                                                                               .astype(np.uint8)))
              for _ in range(7)]
    spec = write_cityscapes(module_dir / "cs", scenes)
    prior = module_dir / "prior.json"
    prior.write_text(json.dumps({"format": "bismap-class-prior/1", "pixels": [1000 - 40 * c for c in range(19)]}))
    return module_dir, random_checkpoint(module_dir / "model.pt"), spec, prior


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def sharded(tmp: Path, shards: int, *, ckpt, tgt, cfg, alignment, prior, runtime=RUNTIME) -> tuple[Path, Path]:
    """The jobs rules/training.smk makes of shards > 1, in their order."""
    from bismap.method.sharding import needs_statistics
    from bismap.stages import teacher_labels

    stats = None
    if needs_statistics(cfg):
        stats = tmp / "statistics.json"
        teacher_labels.run_statistics(checkpoint=ckpt, target={**tgt, "labels": "none"}, cfg=cfg, data=DATA,
                                      runtime=runtime, out_statistics=stats, prior=prior, alignment=alignment)
    for k in range(shards):
        teacher_labels.run_shard(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=tgt, cfg=cfg,
                                 data=DATA, runtime=runtime, shard=k, shards=shards, out_dir=tmp / str(k),
                                 out_counts=tmp / f"{k}.counts.json", statistics=stats)
        (tmp / str(k) / ".snakemake_timestamp").touch()  # Snakemake marks each directory() output so
    out_dir, quality = tmp / "labels", tmp / "labels.json"
    teacher_labels.gather(shard_dirs=[tmp / str(k) for k in range(shards)],
                          shard_counts=[tmp / f"{k}.counts.json" for k in range(shards)], out_dir=out_dir,
                          out_quality=quality, cfg=cfg, runtime=runtime, statistics=stats)
    return out_dir, quality


@pytest.mark.parametrize("preset", ["paper", "embedded"])
def test_sharded_teacher_labels_equal_one_job_byte_for_byte(target, tmp_path, preset) -> None:
    from bismap.stages import teacher_labels

    _, ckpt, tgt, prior = target
    cfg = schema_defaults("teacher_labels", **(PAPER if preset == "paper" else EMBEDDED))
    alignment = schema_defaults("prior_alignment", sample_pixels=3000)
    teacher_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=tgt, out_dir=tmp_path / "one",
                       out_quality=tmp_path / "one.json", cfg=cfg, data=DATA, runtime=RUNTIME, prior=prior,
                       alignment=alignment)
    one = folder_bytes(tmp_path / "one")
    quality = json.loads((tmp_path / "one.json").read_text())
    assert len(one) == 7 and sum(v > 0 for v in quality["coverage_per_class"].values()) >= 3  # not a constant map
    if preset == "embedded":
        assert "prior_offset" in quality and "class_thresholds" in quality and quality["coverage"] < 1.0
    for shards in (3, 9):  # 9 > 7 images: two shards are empty
        (tmp_path / f"s{shards}").mkdir()
        out_dir, out_quality = sharded(tmp_path / f"s{shards}", shards, ckpt=ckpt, tgt=tgt, cfg=cfg,
                                       alignment=alignment, prior=prior)
        assert folder_bytes(out_dir) == one, shards
        assert out_quality.read_bytes() == (tmp_path / "one.json").read_bytes(), shards


def test_shards_are_contiguous_blocks_holding_every_image_once(target) -> None:
    from bismap.data import open_dataset

    _, _, tgt, _ = target
    ds = open_dataset(tgt)
    for count in (1, 2, 3, 7, 10):
        parts = [ds.shard(k, count).names for k in range(count)]
        assert [n for p in parts for n in p] == ds.names
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        ds.shard(3, 3)


def test_gather_refuses_shards_that_do_not_fit_together(target, tmp_path) -> None:
    from bismap.stages import teacher_labels

    _, ckpt, tgt, prior = target
    cfg = schema_defaults("teacher_labels", **EMBEDDED)
    alignment = schema_defaults("prior_alignment", sample_pixels=3000)
    with pytest.raises(InputError, match="statistics file"):
        teacher_labels.run_shard(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=None, cfg=cfg,
                                 data=DATA, runtime=RUNTIME, shard=0, shards=2, out_dir=tmp_path / "x",
                                 out_counts=tmp_path / "x.json")
    assert not (tmp_path / "x").exists()
    sharded(tmp_path, 2, ckpt=ckpt, tgt=tgt, cfg=cfg, alignment=alignment, prior=prior)
    args = dict(out_dir=tmp_path / "again", out_quality=tmp_path / "again.json", cfg=cfg, runtime=RUNTIME,
                statistics=tmp_path / "statistics.json")
    with pytest.raises(InputError, match="not shard 0 of 2"):  # shards given out of order
        teacher_labels.gather(shard_dirs=[tmp_path / "1", tmp_path / "0"],
                              shard_counts=[tmp_path / "1.counts.json", tmp_path / "0.counts.json"], **args)
    with pytest.raises(InputError, match="overlap"):
        teacher_labels.gather(shard_dirs=[tmp_path / "0", tmp_path / "0"],
                              shard_counts=[tmp_path / "0.counts.json", tmp_path / "1.counts.json"], **args)
    assert not (tmp_path / "again").exists() and not (tmp_path / "again.json").exists()
    with pytest.raises(InputError, match="not a bismap-label-statistics"):
        teacher_labels.gather(shard_dirs=[tmp_path / "0", tmp_path / "1"],
                              shard_counts=[tmp_path / "0.counts.json", tmp_path / "1.counts.json"],
                              **{**args, "statistics": tmp_path / "0.counts.json"})


@pytest.mark.parametrize("selection", ["balanced", "none"])
def test_shards_make_shard_jobs_and_a_local_gather(tmp_path, selection) -> None:
    """Teacher labels in 3 shards on the tiny config's 2 rounds, pseudo labels in 2, naive labels in 4: shard
    jobs and one gather each, and one statistics job where the selection reads every image first; the
    gather runs where Snakemake runs, the shards ask for a GPU each."""
    from test_rule_params import parsed
    from test_workflow import dry_run, make_copy

    wf = make_copy(tmp_path / "wf")
    align = "true" if selection == "balanced" else "false"
    naive = "percentile" if selection == "balanced" else "confidence"
    pseudo = "balanced" if selection == "balanced" else "confidence"
    (wf / "shards.yaml").write_text(
        f"teacher_labels: {{selection: {selection}, align_prior: {align}}}\n"
        f"pseudo_labels: {{align_prior: {align}, selection: {pseudo}}}\nnaive: {{selection: {naive}}}\n"
        "resources:\n  use_gpu: true\n  teacher_labels: {shards: 3, threads: 2}\n  pseudo_labels: {shards: 2}\n"
        "  naive_labels: {shards: 4}\n  evaluate: {shards: 2}\n")
    counts = dry_run(wf, "configs/tiny.yaml", "shards.yaml")
    statistics = 1 if selection == "balanced" else 0
    assert counts["teacher_labels_shard"] == 6 and counts["teacher_labels"] == 2 and counts["distillation"] == 2
    assert counts.get("teacher_labels_statistics", 0) == 2 * statistics
    assert counts["pseudo_labels_shard"] == 2 and counts.get("pseudo_labels_statistics", 0) == statistics
    assert counts["naive_labels_shard"] == 4 and counts.get("naive_labels_statistics", 0) == statistics
    assert counts["pseudo_labels"] == counts["naive_labels"] == counts["self_training"] == 1
    assert counts["evaluate_shard"] == 2 * counts["evaluate"] == 12
    with parsed(wf, "shards.yaml") as workflow:
        rules = {r.name: r for r in workflow.rules}
        for stage in ("teacher_labels", "pseudo_labels", "naive_labels", "evaluate"):
            assert stage in workflow._localrules and f"{stage}_shard" not in workflow._localrules
            assert "gpu" not in rules[stage].resources and rules[f"{stage}_shard"].resources["gpu"] == 1
        assert rules["teacher_labels_shard"].resources["_cores"] == 2
    (wf / "one.yaml").write_text("resources:\n  teacher_labels: {shards: 1}\n")
    counts = dry_run(wf, "configs/tiny.yaml", "one.yaml")
    assert counts["teacher_labels"] == 2 and not any(rule.endswith(("_shard", "_statistics")) for rule in counts)


@pytest.mark.usefixtures("colour_model")
def test_sharded_pseudo_and_naive_labels_equal_one_job_byte_for_byte(tmp_path) -> None:
    """The GMM pseudo labels (agree rule, balanced selection, prior alignment) and the naive labels (balanced)
    of 7 images, as one job and as a statistics job, 3 shard jobs and a gather."""
    from bismap.stages import fit_prototypes, naive_labels, pseudo_labels
    from test_stages_labels import NO_ADABN, _features, make_cityscapes, make_gta, proto_cfg

    ckpt = tmp_path / "warmup.pt"
    ckpt.write_bytes(b"placeholder")  # the colour model is patched in
    src = make_gta(tmp_path / "gta", 6)
    tgt, tgt_gt = make_cityscapes(tmp_path / "cs", 7)
    gmm = tmp_path / "gmm.pt"
    fit_prototypes.run(features_h5=_features(tmp_path, ckpt, src), out_path=gmm,
                       cfg=proto_cfg(components=2, seed=0, kmeans_n_init=2))
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"format": "bismap-class-prior/1", "pixels": [1000 - 40 * c for c in range(19)]}))
    alignment = schema_defaults("prior_alignment", sample_pixels=500)
    stages = {
        "pseudo": (pseudo_labels, dict(prototypes=gmm, cfg=schema_defaults(
            "pseudo_labels", rule="agree", selection="balanced", percentile=50.0, adabn=NO_ADABN, align_prior=True))),
        "naive": (naive_labels, dict(cfg=schema_defaults("naive", selection="balanced", percentile=50.0,
                                                         sample_pixels=None, adabn=NO_ADABN))),
    }
    for name, (stage, kw) in stages.items():
        extra = dict(prior=prior, alignment=alignment) if name == "pseudo" else {}
        stage.run(checkpoint=ckpt, target=tgt, target_gt=tgt_gt, out_dir=tmp_path / name,
                  out_quality=tmp_path / f"{name}.json", data=DATA, runtime=RUNTIME, **kw, **extra)
        one = folder_bytes(tmp_path / name)
        assert len(one) == 7
        parts = tmp_path / f"{name}.shards"
        stage.run_statistics(checkpoint=ckpt, target=tgt, data=DATA, runtime=RUNTIME,
                             out_statistics=parts / "statistics.json", **kw, **extra)
        for k in range(3):
            stage.run_shard(checkpoint=ckpt, target=tgt, target_gt=tgt_gt, data=DATA, runtime=RUNTIME, shard=k,
                            shards=3, out_dir=parts / str(k), out_counts=parts / f"{k}.json",
                            statistics=parts / "statistics.json", **kw)
        stage.gather(shard_dirs=[parts / str(k) for k in range(3)],
                     shard_counts=[parts / f"{k}.json" for k in range(3)], out_dir=tmp_path / f"{name}.joined",
                     out_quality=tmp_path / f"{name}.joined.json", runtime=RUNTIME,
                     statistics=parts / "statistics.json")
        assert folder_bytes(tmp_path / f"{name}.joined") == one, name
        assert (tmp_path / f"{name}.joined.json").read_bytes() == (tmp_path / f"{name}.json").read_bytes(), name
        assert "class_thresholds" in json.loads((tmp_path / f"{name}.json").read_text())


def test_sharded_evaluation_writes_the_metrics_of_one_job(target, tmp_path) -> None:
    from bismap.stages import evaluate

    _, ckpt, tgt, _ = target
    cfg = schema_defaults("evaluation", scales=[1.0, 0.5], flip=True, protocol="cityscapes19")
    evaluate.run(checkpoint=ckpt, target=tgt, out_json=tmp_path / "one.json", out_confusion_csv=tmp_path / "one.csv",
                 cfg=cfg, data=DATA, runtime=RUNTIME)
    for k in range(4):  # 7 images: blocks of 1, 2, 2, 2
        evaluate.run_shard(checkpoint=ckpt, target=tgt, out_counts=tmp_path / f"{k}.json", cfg=cfg, data=DATA,
                           runtime=RUNTIME, shard=k, shards=4)
    evaluate.gather(shard_counts=[tmp_path / f"{k}.json" for k in range(4)], target=tgt, out_json=tmp_path / "j.json",
                    out_confusion_csv=tmp_path / "j.csv", cfg=cfg)
    assert (tmp_path / "j.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "j.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert json.loads((tmp_path / "one.json").read_text())["images"] == 7
    with pytest.raises(InputError, match="not shard 0 of 2"):
        evaluate.gather(shard_counts=[tmp_path / "1.json", tmp_path / "0.json"], target=tgt,
                        out_json=tmp_path / "x.json", out_confusion_csv=tmp_path / "x.csv", cfg=cfg)
    assert not (tmp_path / "x.json").exists()
