"""Prior alignment: the offset maths, the source_prior stage, the teacher labels it changes, the DAG."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bismap.data.labels import TRAINID_TO_ID
from bismap.io import InputError
from bismap.method.prior_alignment import PRIOR_FORMAT, alignment_offset, em_target_prior, read_prior, sample_logits
from conftest import RUNTIME, constant_checkpoint, schema_defaults, write_cityscapes, write_gta

ROAD, POLE = 0, 5
DATA = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _prior(road: float, pole: float) -> np.ndarray:
    p = np.zeros(19)
    p[ROAD], p[POLE] = road, pole
    return p


def test_one_iteration_is_distribution_alignment() -> None:
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(500, 19, generator=g, dtype=torch.float64) * 2
    prior = np.random.default_rng(0).dirichlet(np.ones(19))
    offset = alignment_offset(sample, prior, strength=1.0, iterations=1)
    p = torch.softmax(sample, 1)
    expected = p * torch.as_tensor(prior) / p.mean(0)  # ReMixMatch: p * prior / running mean, renormalised
    expected = expected / expected.sum(1, keepdim=True)
    assert torch.allclose(torch.softmax(sample + offset, 1), expected, atol=1e-12)


def test_iterations_reach_the_prior_and_leave_inactive_classes_alone() -> None:
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2000, 19, generator=g, dtype=torch.float64)
    sample[:, POLE] += 3.0  # the network over-predicts pole
    prior = np.full(19, 1 / 18)
    prior[7] = 0.0  # a class the source never shows: no offset
    offset = alignment_offset(sample, prior, strength=1.0, iterations=50)
    mean = torch.softmax(sample + offset, 1).mean(0)
    active = [c for c in range(19) if c != 7]
    spread = mean[active].max() / mean[active].min()
    assert float(spread) < 1.05  # all active classes end near the same mean
    assert offset[7] == 0 and offset[POLE] - offset[ROAD] < -2.0  # pole pushed down against the rest
    assert torch.equal(alignment_offset(sample, prior, strength=0.0, iterations=3),
                       torch.zeros(19, dtype=torch.float64))
    only = alignment_offset(sample, prior, strength=1.0, iterations=3, classes=[ROAD, POLE])
    assert set(torch.nonzero(only).flatten().tolist()) == {ROAD, POLE}


def test_sample_logits_spreads_the_budget_over_images() -> None:
    maps = [torch.arange(19 * 6, dtype=torch.float32).reshape(19, 2, 3) + 1000 * k for k in range(4)]
    sample = sample_logits(iter(maps), 4, sample_pixels=10, seed=0)
    assert sample.shape == (4 * 3, 19) and sample.dtype == torch.float64
    assert torch.equal(sample, sample_logits(iter(maps), 4, sample_pixels=10, seed=0))  # seeded
    # each row is one pixel's 19 logits: channel c of pixel j is j + 6c (+ 1000 k)
    assert torch.equal(sample[:, 1:] - sample[:, :-1], torch.full((12, 18), 6.0, dtype=torch.float64))


def test_read_prior_names_a_bad_file(tmp_path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"format": PRIOR_FORMAT, "pixels": [1, 2]}))
    with pytest.raises(InputError, match=str(bad)):
        read_prior(bad)
    bad.write_text("{")
    with pytest.raises(InputError, match=str(bad)):
        read_prior(bad)


def _gta_scene(road_rows: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.zeros((8, 10), np.uint8)  # id 0: unlabelled, ignored
    ids[:road_rows] = TRAINID_TO_ID[ROAD]
    ids[road_rows:road_rows + 2] = TRAINID_TO_ID[POLE]
    return np.zeros((8, 10, 3), np.uint8), ids


def test_source_prior_counts_labelled_pixels(tmp_path) -> None:
    from bismap.stages import source_prior

    spec = write_gta(tmp_path / "gta", [_gta_scene(4), _gta_scene(2), _gta_scene(6)])
    out = tmp_path / "prior.json"
    source_prior.run(source=spec, out_json=out, cfg={"images": None})
    obj = json.loads(out.read_text())
    assert obj["images"] == 3 and obj["pixels"][ROAD] == 120 and obj["pixels"][POLE] == 60
    assert sum(obj["pixels"]) == 180 and read_prior(out)[ROAD] == pytest.approx(2 / 3)
    source_prior.run(source=spec, out_json=out, cfg={"images": 2})  # first and last image
    assert json.loads(out.read_text())["pixels"][ROAD] == 100


def test_aligned_teacher_labels_follow_the_source_prior(tmp_path) -> None:
    """A teacher that says pole everywhere (logit 10) relabels road when the source is 90 % road."""
    from bismap.stages import teacher_labels

    rng = np.random.default_rng(0)
    tgt = write_cityscapes(tmp_path / "cs", [(rng.integers(0, 255, (16, 32, 3), dtype=np.uint8), None)
                                             for _ in range(2)])
    ckpt = constant_checkpoint(tmp_path / "pole.pt", POLE)
    prior = tmp_path / "prior.json"
    prior.write_text(json.dumps({"format": PRIOR_FORMAT, "pixels": (1000 * _prior(0.9, 0.1)).tolist()}))
    cfg = schema_defaults("teacher_labels", selection="none", adabn={"enabled": False})
    cfg["align_prior"] = False
    runtime = {**RUNTIME, "workers": 0}
    out_dir, quality = tmp_path / "tl", tmp_path / "tl.json"
    teacher_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=None, out_dir=out_dir,
                       out_quality=quality, cfg=cfg, data=DATA, runtime=runtime)
    assert json.loads(quality.read_text())["coverage_per_class"]["pole"] == 1.0
    settings = schema_defaults("prior_alignment", strength=1.0, iterations=20, sample_pixels=1000, seed=0)
    aligned = {**cfg, "align_prior": True}
    teacher_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=None, out_dir=out_dir,
                       out_quality=quality, cfg=aligned, data=DATA, runtime=runtime, prior=prior, alignment=settings)
    q = json.loads(quality.read_text())
    assert q["coverage_per_class"]["road"] == 1.0 and len(q["prior_offset"]) == 19
    assert q["prior_alignment"]["aimed_prior"]["road"] == pytest.approx(0.9)
    assert "total_variation_to_truth" not in q["prior_alignment"]  # no target-train labels
    teacher_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=None, out_dir=out_dir,
                       out_quality=quality, cfg=aligned, data=DATA, runtime=runtime, prior=prior,
                       alignment={**settings, "target": "estimated"})
    report = json.loads(quality.read_text())["prior_alignment"]
    assert report["target"] == "estimated" and report["em_iterations"] >= 1
    assert report["aimed_prior"]["pole"] > 0.1  # the network says pole everywhere: the EM moves towards it
    with pytest.raises(InputError, match="no source class prior"):
        teacher_labels.run(checkpoint=ckpt, target={**tgt, "labels": "none"}, target_gt=None, out_dir=out_dir,
                           out_quality=quality, cfg=aligned, data=DATA, runtime=runtime, alignment=settings)


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_the_source_prior_job_exists_only_when_a_stage_aligns(module_dir) -> None:
    from test_workflow import job_counts, make_copy, snakemake

    wf = make_copy(module_dir / "wf")
    on = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml")  # the default aligns
    assert on.returncode == 0, on.stderr[-2000:]
    assert job_counts(on.stdout)["source_prior"] == 1
    off = snakemake(wf, "-n", "--cores", "2", "--configfile", "configs/tiny.yaml", "--config",
                    "pseudo_labels={align_prior: false}", "teacher_labels={align_prior: false}")
    assert off.returncode == 0, off.stderr[-2000:]
    assert "source_prior" not in job_counts(off.stdout) and "pseudo_labels" in job_counts(off.stdout)


@pytest.mark.parametrize("paper", ["gta5", "synthia"])
def test_the_paper_configs_do_not_align(paper) -> None:
    import yaml

    from conftest import REPO

    cfg = yaml.safe_load((REPO / "configs" / f"{paper}.yaml").read_text())
    assert cfg["pseudo_labels"]["align_prior"] is False and cfg["teacher_labels"]["align_prior"] is False


def _calibrated_logits(source_prior: np.ndarray, target_prior: np.ndarray, n: int, seed: int = 0) -> torch.Tensor:
    """Log-posteriors of a classifier that is Bayes-optimal under `source_prior` (1-d Gaussian classes at
    0, 2, 4, ...), for n pixels drawn under `target_prior`: the setting Saerens et al.'s EM is exact in."""
    rng = np.random.default_rng(seed)
    k = len(source_prior)
    cls = rng.choice(k, size=n, p=target_prior)
    x = rng.normal(2.0 * cls, 1.0)
    loglik = -0.5 * (x[:, None] - 2.0 * np.arange(k)[None, :]) ** 2
    return torch.as_tensor(loglik + np.log(source_prior)[None, :])


def test_em_recovers_a_shifted_target_prior():
    source = np.array([0.6, 0.3, 0.1])
    target = np.array([0.2, 0.3, 0.5])
    sample = _calibrated_logits(source, target, 200_000)
    est, steps = em_target_prior(sample, source, max_iterations=500, tolerance=1e-7, floor=1e-4,
                                  max_ratio=10.0)
    assert np.abs(est - target).max() < 0.01, est
    assert abs(est.sum() - 1) < 1e-9 and 1 < steps < 500
    # the mean softmax alone (what source-prior alignment compares against) is far off
    naive = torch.softmax(sample, 1).mean(0).numpy()
    assert np.abs(naive - target).max() > 0.05
    # without a label shift the estimate stays at the source prior
    same, _ = em_target_prior(_calibrated_logits(source, source, 200_000, seed=1), source, max_iterations=500,
                              tolerance=1e-7, floor=1e-4, max_ratio=10.0)
    assert np.abs(same - source).max() < 0.01


def test_em_is_bounded_and_floored():
    source = np.array([0.5, 0.3, 0.2, 0.0])
    target = np.array([0.7, 0.3, 0.0, 0.0])           # class 2 vanishes from the target; 3 never in source
    sample = _calibrated_logits(source[:3] / source[:3].sum(), target[:3], 50_000)
    sample = torch.cat([sample, torch.full((sample.shape[0], 1), -5.0, dtype=sample.dtype)], dim=1)
    est, steps = em_target_prior(sample, source, max_iterations=3, tolerance=0.0, floor=0.01, max_ratio=10.0)
    assert steps == 3
    assert est[3] == 0.0 and est[2] >= 0.01 * 0.99 and abs(est.sum() - 1) < 1e-9


def test_em_with_flat_posteriors_stays_within_the_ratio_bound():
    """Nearly flat posteriors (an untrained network): without a bound the EM drifts to one class."""
    source = np.full(5, 0.2)
    sample = torch.randn(4_000, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.05
    sample[:, 0] += 0.02                                   # one class slightly favoured everywhere
    free, _ = em_target_prior(sample, source, max_iterations=2000, tolerance=1e-9, floor=1e-4, max_ratio=1e9)
    assert free.max() > 0.5                                # the runaway the bound exists for
    bounded, _ = em_target_prior(sample, source, max_iterations=2000, tolerance=1e-9, floor=1e-4, max_ratio=2.0)
    assert bounded.max() <= 0.4 * 1.05 and bounded.min() >= 0.1 * 0.95


def test_prior_report_measures_each_prior_against_the_true_frequencies() -> None:
    from bismap.data.labels import CLASS_NAMES
    from bismap.method.prior_alignment import prior_report

    truth = _prior(0.6, 0.4)
    source = _prior(0.9, 0.1)
    record = {"target": "estimated", "em_iterations": 7, "sampled_pixels": 100, "aimed_prior": truth.tolist(),
              "source_prior": source.tolist(), "mean_prediction_before": _prior(0.5, 0.5).tolist(),
              "mean_prediction_after": truth.tolist()}
    report = prior_report(record, dict(zip(CLASS_NAMES, truth.tolist())))
    tv = report["total_variation_to_truth"]
    assert tv["aimed_prior"] == pytest.approx(0.0) and tv["mean_prediction_after"] == pytest.approx(0.0)
    assert tv["source_prior"] == pytest.approx(0.5 * np.abs(source - truth).sum())
    assert tv["source_prior"] > 0.2 and tv["mean_prediction_before"] > 0.05
    assert report["aimed_prior"]["road"] == pytest.approx(truth[0]) and report["em_iterations"] == 7
    assert "total_variation_to_truth" not in prior_report(record, None)


def test_label_quality_counts_the_true_class_frequencies() -> None:
    from bismap.evaluation.quality import label_quality

    pred = np.full((2, 4), 255, np.uint8)
    gt = np.array([[0, 0, 0, 1], [1, 255, 255, 255]], np.uint8)
    q = label_quality([(pred, gt)])
    assert q["gt_class_frequency"]["road"] == pytest.approx(0.6) and q["gt_class_frequency"]["sidewalk"] == 0.4
    assert label_quality([(pred, None)])["gt_class_frequency"] is None
