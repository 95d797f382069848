"""A training stage stopped by the scheduler (SIGTERM at the time limit, SIGUSR1 from sbatch
--signal) writes its resume file at the current iteration and the next run finishes with the
same result as an uninterrupted one; and the workflow resubmits such stages."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from bismap.engine import checkpoint, preemption
from test_engine import RUNTIME, TRAIN, assert_same_state, ce_loss, run_fit


def signalling_at(iteration: int, signum: int):
    def loss_fn(ctx):
        if ctx.iteration == iteration:
            os.kill(os.getpid(), signum)  # delivered while the step runs, as the scheduler's would be
        return ce_loss(ctx)
    return loss_fn


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_writes_resume_at_that_iteration_and_resume_equals_uninterrupted(tmp_path, capsys, signum):
    full = run_fit(tmp_path / "full.pt")
    out = tmp_path / "stopped.pt"
    with pytest.raises(preemption.Preempted, match=f"stopped by {signal.Signals(signum).name} at iteration 6/8"):
        run_fit(out, loss_fn=signalling_at(5, signum))
    assert not out.exists()
    state = torch.load(checkpoint.resume_path(out), weights_only=False)
    assert state["iteration"] == 6  # not the periodic checkpoint's 4 (RUNTIME checkpoint_every)
    assert RUNTIME["checkpoint_every"] == 4
    assert "stopped by" in capsys.readouterr().out
    resumed = run_fit(out)
    assert "at iteration 6/8" in capsys.readouterr().out  # the resume line
    assert_same_state(full["model"], resumed["model"])
    assert_same_state(full["ema"], resumed["ema"])


def test_handlers_are_restored_after_training(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    run_fit(tmp_path / "a.pt", train={**TRAIN, "iterations": 2})
    assert signal.getsignal(signal.SIGTERM) is before


def test_signal_in_last_iteration_finishes_the_stage(tmp_path):
    full = run_fit(tmp_path / "full.pt")
    out = run_fit(tmp_path / "last.pt", loss_fn=signalling_at(7, signal.SIGTERM))
    assert_same_state(full["model"], out["model"])
    assert not checkpoint.resume_path(tmp_path / "last.pt").exists()


@pytest.mark.parametrize("text, seconds", [("1-02:03:04", 93784), ("2:03:04", 7384), ("03:04", 184),
                                           ("90", 5400), ("1-02", 93600), ("1-02:03", 93780)])
def test_parse_slurm_duration(text, seconds):
    assert preemption.parse_slurm_duration(text) == seconds


@pytest.mark.parametrize("text", ["UNLIMITED", "NOT_SET", "", "INVALID"])
def test_parse_slurm_duration_unlimited(text):
    assert preemption.parse_slurm_duration(text) is None


def test_submissions_note_counts_more_jobs():
    # 1 it/s, 10,000 iterations (2.8 h) left, 1 h left in this job of 1 h: 1.8 h more -> 2 more jobs
    note = preemption.submissions_note(1.0, 10_000, (3600.0, 3600.0))
    assert note is not None and "about 2 more submission(s) of 1.0 h" in note
    # 30 s left in a 2 h job, 3 h needed: 2 more jobs
    assert "about 2 more" in preemption.submissions_note(1.0, 3 * 3600, (30.0, 7200.0))
    assert preemption.submissions_note(1.0, 100, (3600.0, 3600.0)) is None  # fits in this job
    assert preemption.submissions_note(1.0, 10_000, None) is None  # not under SLURM


def test_submissions_set_the_rule_retries(tmp_path):
    """`resources.<stage>.submissions: 4` -> the rule is submitted up to 4 times (retries 3); stages
    without it keep the profile's retries (None)."""
    from test_rule_params import make_copy, parsed

    wf = make_copy(tmp_path / "wf")
    (wf / "long.yaml").write_text("resources:\n  self_training: {runtime: 30, submissions: 4}\n")
    with parsed(wf, "long.yaml") as workflow:
        rules = {r.name: r for r in workflow.rules}
        assert rules["self_training"]._restart_times == 3
        assert rules["warmup"]._restart_times is None and rules["distillation"]._restart_times is None


def test_gpus_and_nodes_make_a_multi_rank_slurm_job(tmp_path):
    """`gpus: 4, nodes: 2` -> 8 ranks: an mpi job (no srun -n1 around it) of 8 tasks, one per GPU, threads
    per task; the job reserves threads x ranks cores locally. Stages without it stay one process."""
    from test_rule_params import make_copy, parsed

    wf = make_copy(tmp_path / "wf")
    (wf / "multi.yaml").write_text("resources:\n  use_gpu: true\n"
                                   "  self_training: {threads: 3, gpus: 4, nodes: 2}\n")
    with parsed(wf, "multi.yaml") as workflow:
        rules = {r.name: r for r in workflow.rules}
        res = rules["self_training"].resources
        assert (res["gpu"], res["ranks"], res["tasks"], res["tasks_per_gpu"], res["nodes"]) == (8, 8, 8, 1, 2)
        assert res["mpi"] == "srun" and res["cpus_per_task"] == 3
        assert res["_cores"] == 24  # 3 per rank x 8 ranks
        single = rules["warmup"].resources
        assert single["gpu"] == 1 and single["ranks"] == 1 and "mpi" not in single and "tasks" not in single
