"""Sharded source features (resources.source_features.shards): counting shards, the plan, the row shards and
the gather write the HDF5 file of one job, byte for byte, with the sampler's thinning, cap and floor."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from bismap.io import InputError
from conftest import RUNTIME, schema_defaults, write_gta
from test_stages_labels import DATA, _scenes, colour_model  # noqa: F401  (a fixture)

THINNED = {"class_fractions": [0.5, 1, 0.3] + [1] * 5 + [0.7] + [1] * 4 + [0.05] + [1] * 5, "max_per_class": 40,
           "min_per_class": 0}
FLOORED = {**THINNED, "min_per_class": 30}


@pytest.fixture(scope="module")
def source(module_dir):
    """9 GTA5 scenes, two of another size (as GTA5 has): one job's batches break at the size change."""
    scenes = []
    for k, (img, ids) in enumerate(_scenes(np.random.default_rng(5), 9)):
        scenes.append((img[:28], ids[:28]) if k in (3, 4) else (img, ids))
    ckpt = module_dir / "warmup.pt"
    ckpt.write_bytes(b"placeholder")  # the colour model is patched in; the stage only checks it exists
    return ckpt, write_gta(module_dir / "gta", scenes)


def cfg_of(**over) -> dict:
    return schema_defaults("source_features", **{"seed": 4, "batch_size": 2, **over})


def sharded(tmp: Path, shards: int, *, ckpt, src, cfg) -> Path:
    """The jobs rules/prototypes.smk makes of shards > 1, in their order."""
    from bismap.stages import source_features

    counts = [tmp / f"{k}.counts.json" for k in range(shards)]
    for k in range(shards):
        source_features.run_counts(checkpoint=ckpt, source=src, cfg=cfg, data=DATA, runtime=RUNTIME, shard=k,
                                   shards=shards, out_counts=counts[k])
    source_features.run_plan(counts=counts, cfg=cfg, out_plan=tmp / "plan.npz")
    rows = [tmp / f"{k}.h5" for k in range(shards)]
    for k in range(shards):
        source_features.run_shard(checkpoint=ckpt, source=src, cfg=cfg, data=DATA, runtime=RUNTIME,
                                  plan=tmp / "plan.npz", shard=k, shards=shards, out_rows=rows[k])
    out = tmp / "sharded.h5"
    source_features.gather(plan=tmp / "plan.npz", rows=rows, cfg=cfg, out_h5=out)
    return out


@pytest.mark.usefixtures("colour_model")
@pytest.mark.parametrize("settings", [THINNED, FLOORED], ids=["thinned", "floored"])
@pytest.mark.parametrize("shards", [3, 8])
def test_sharded_source_features_equal_one_job_byte_for_byte(source, tmp_path, settings, shards) -> None:
    from bismap.stages import source_features

    ckpt, src = source
    cfg = cfg_of(**settings)
    one = tmp_path / "one.h5"
    source_features.run(checkpoint=ckpt, source=src, out_h5=one, cfg=cfg, data=DATA, runtime=RUNTIME)
    out = sharded(tmp_path, shards, ckpt=ckpt, src=src, cfg=cfg)  # 8 shards of 6 batches: 2 are empty
    assert out.read_bytes() == one.read_bytes()
    with h5py.File(one, "r") as f:  # the settings do sample: capped, thinned and (floored) unthinned banks
        kept = [f[f"class_{c}"].shape[0] for c in range(19)]
        assert max(kept) == 40 and f["class_0"].attrs["seen"] > 40
        assert bool(f["class_13"].attrs["unthinned"]) == (settings["min_per_class"] > 0)


def test_batch_bounds_are_the_batches_one_job_makes(source) -> None:
    from bismap.data import open_dataset
    from bismap.engine.inference import batch_bounds, iter_batches

    ds = open_dataset(source[1])
    for size in (1, 2, 4, 20):
        starts = np.cumsum([0] + [len(b) for b in iter_batches(ds, size)])
        assert batch_bounds([ds.image_shape(i) for i in range(len(ds))], size) == list(zip(starts[:-1], starts[1:]))
    assert batch_bounds([ds.image_shape(i) for i in range(len(ds))], 2) == [(0, 2), (2, 3), (3, 5), (5, 7),
                                                                            (7, 9)]


@pytest.mark.usefixtures("colour_model")
def test_shards_that_do_not_fit_the_plan_are_refused(source, tmp_path) -> None:
    from bismap.method import feature_shards
    from bismap.stages import source_features

    ckpt, src = source
    cfg = cfg_of(**THINNED)
    sharded(tmp_path, 3, ckpt=ckpt, src=src, cfg=cfg)
    counts = [tmp_path / f"{k}.counts.json" for k in range(3)]
    with pytest.raises(InputError, match="not shard 0 of 3"):
        source_features.run_plan(counts=counts[::-1], cfg=cfg, out_plan=tmp_path / "x.npz")
    with pytest.raises(InputError, match="not shard 0 of 2"):
        source_features.run_plan(counts=counts[:2], cfg=cfg, out_plan=tmp_path / "x.npz")
    rows = [tmp_path / f"{k}.h5" for k in range(3)]
    with pytest.raises(InputError, match="not shard 1 of 3"):
        source_features.gather(plan=tmp_path / "plan.npz", rows=[rows[0], rows[0], rows[2]], cfg=cfg,
                               out_h5=tmp_path / "x.h5")
    # a plan of other settings names other rows than the shards hold
    source_features.run_plan(counts=counts, cfg={**cfg, "seed": 9}, out_plan=tmp_path / "other.npz")
    with pytest.raises(InputError, match="the plan names"):
        source_features.gather(plan=tmp_path / "other.npz", rows=rows, cfg=cfg, out_h5=tmp_path / "x.h5")
    # the second pass sees other numbers than the first (another device type): refused, not mixed
    plan = feature_shards.read_plan(tmp_path / "plan.npz")
    plan["counts"] = plan["counts"] + 1
    with pytest.raises(InputError, match="the counting pass saw"):
        feature_shards.select(plan, 0, {}, where="shard 0")
    assert not (tmp_path / "x.h5").exists()


def test_replay_keeps_what_the_sampler_keeps_of_the_rows() -> None:
    """The sampler's draws depend on row counts only: fed ids, it names the rows it keeps of the features."""
    import torch

    from bismap.method.feature_banks import BankSampler
    from bismap.method.feature_shards import replay

    rng = np.random.default_rng(0)
    counts = rng.integers(0, 30, size=(12, 19)) * (rng.random((12, 19)) < 0.6)
    fractions = rng.choice([0.2, 0.5, 1.0], size=19).tolist()
    rows_sampler = BankSampler(fractions, cap=25, min_per_class=15, seed=2, dim=3)
    stream: list[list[torch.Tensor]] = [[] for _ in range(19)]
    for row in counts:
        batch = {c: torch.randn(int(n), 3) for c, n in enumerate(row) if n}
        rows_sampler.add(batch)
        for c, x in batch.items():
            stream[c].append(x)
    ids, _ = replay(counts, fractions=fractions, cap=25, min_per_class=15, seed=2)
    for c, bank in enumerate(rows_sampler.banks()):
        every = torch.cat(stream[c]) if stream[c] else torch.empty(0, 3)
        assert torch.equal(every[ids[c].rows[:, 0]], bank.rows)
        assert (ids[c].seen, ids[c].unthinned) == (bank.seen, bank.unthinned)


def test_feature_shards_make_counting_and_row_shard_jobs(tmp_path) -> None:
    """shards 3 on the tiny config: 3 counting and 3 row shards (a GPU each), a plan and a gather that
    ask for none, and the rules downstream unchanged; shards 1 is the one job."""
    from test_rule_params import parsed
    from test_workflow import dry_run, make_copy

    wf = make_copy(tmp_path / "wf")
    (wf / "shards.yaml").write_text("resources:\n  use_gpu: true\n  source_features: {shards: 3}\n")
    counts = dry_run(wf, "configs/tiny.yaml", "shards.yaml")
    assert {r: counts.get(r) for r in ("source_features_counts", "source_features_plan", "source_features_shard",
                                       "source_features", "fit_prototypes")} == {
        "source_features_counts": 3, "source_features_plan": 1, "source_features_shard": 3, "source_features": 1,
        "fit_prototypes": 1}
    with parsed(wf, "shards.yaml") as workflow:
        rules = {r.name: r for r in workflow.rules}
        assert rules["source_features_counts"].resources["gpu"] == rules["source_features_shard"].resources["gpu"] == 1
        assert "gpu" not in rules["source_features_plan"].resources and "gpu" not in rules["source_features"].resources
    counts = dry_run(wf, "configs/tiny.yaml")
    assert counts["source_features"] == 1 and not any(r.startswith("source_features_") for r in counts)
