"""End-to-end SLURM tests on a throw-away localhost cluster (tests/cluster/slurm_up.sh).

WHY: `snakemake --profile profiles/slurm` is how the pipeline runs on a GPU cluster; these
tests submit every stage as a real sbatch job (fake GPUs via GRES) and check that GPU stages
ask for a GPU and CPU stages do not, that results equal a local run, that a cancelled
training job is retried and resumes from its checkpoint, and that a job killed for memory
names `mem_mb` and succeeds when mem_mb scales with `attempt`.

Needs root and Debian's slurm packages (installed with apt-get when missing); otherwise skipped.
Run:  .venv/bin/python -m pytest tests/test_slurm.py -m slurm -v
"""
from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "cluster"
TOY = CLUSTER / "toy" / "Snakefile"
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
# Absolute paths: profile values naming files in the profile dir (partitions.yaml) are then
# absolute too, so the runs may use their own working directory (-d).
PROFILES = ["--profile", str(REPO / "profiles" / "slurm"), "--profile", str(REPO / "profiles" / "slurm-local")]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: starts munged/slurmctld/slurmd and writes /etc/slurm"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "slurm is not installed and there is no apt-get to install it"
    return None


def _cluster_up(cgroup: bool, gpus: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "BISMAP_SLURM_GPUS": str(gpus), "BISMAP_SLURM_CGROUP": "1" if cgroup else "0"}
    return subprocess.run(["bash", str(CLUSTER / "slurm_up.sh")], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node cluster (2 fake GPUs, no cgroups); torn down whatever happens."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        p = _cluster_up(cgroup=False)
        if p.returncode == 3:
            pytest.skip(f"slurm packages unavailable: {p.stderr.strip()[-300:]}")
        assert p.returncode == 0, f"slurm_up.sh failed:\n{p.stdout}\n{p.stderr}"
        yield
    finally:
        subprocess.run(["bash", str(CLUSTER / "slurm_down.sh")], capture_output=True, text=True, timeout=120)


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    def jobs(self) -> dict[str, list[int]]:
        """rule -> SLURM job ids, in submission order, from snakemake's own output."""
        out: dict[str, list[int]] = {}
        for _, slurm_id, log in SUBMITTED.findall(self.output):
            rule = next(p for p in Path(log).parts if p.startswith("rule_"))[len("rule_"):]
            out.setdefault(rule, []).append(int(slurm_id))
        return out


def snakemake(workdir: Path, *args: str, timeout: float = 420) -> Run:
    """Run snakemake with the layered SLURM profiles in `workdir`; output = stdout+stderr."""
    t0 = time.monotonic()
    p = subprocess.run([*SNAKEMAKE, *PROFILES, "-d", str(workdir), *args], cwd=REPO,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return Run(p.returncode, p.stdout, time.monotonic() - t0)


def job_record(slurm_id: int) -> dict[str, str]:
    """`scontrol show job` as a dict (kept by slurmctld for MinJobAge=600 s after the end)."""
    text = subprocess.run(["scontrol", "-o", "show", "job", str(slurm_id)], capture_output=True,
                          text=True, check=True).stdout
    return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)


def gpu_request(record: dict[str, str]) -> str:
    """The job's GPU request as SLURM recorded it ('' when none)."""
    req = " ".join(record.get(k, "") for k in ("TresPerJob", "TresPerNode", "TresPerTask"))
    return req if "gpu" in req else ""


# ---------------------------------------------------------------------------------------------
# Toy workflow (a -> b[gpu] -> c): the harness itself


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_toy_workflow_each_rule_is_a_job_gpu_only_where_declared(slurm_cluster, tmp_path):
    run = snakemake(tmp_path, "-s", str(TOY))
    assert run.returncode == 0, run.output
    jobs = run.jobs()
    assert sorted(jobs) == ["a", "b", "c"], run.output
    rec = {rule: job_record(ids[-1]) for rule, ids in jobs.items()}
    assert gpu_request(rec["b"]) and rec["b"]["Partition"] == "gpu"
    for rule in ("a", "c"):
        assert gpu_request(rec[rule]) == "" and rec[rule]["Partition"] == "cpu", rec[rule]
    assert all(r["JobState"] == "COMPLETED" for r in rec.values())
    lines = (tmp_path / "results" / "c.txt").read_text().splitlines()
    assert lines[1].endswith("CUDA_VISIBLE_DEVICES=0")  # the fake GPU reached the GPU job
    assert lines[0].endswith("CUDA_VISIBLE_DEVICES=") and lines[2].endswith("CUDA_VISIBLE_DEVICES=")


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"snakemake exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _running_job(rule: str) -> int | None:
    out = subprocess.run(["squeue", "-h", "-t", "running", "-O", "JobID:20,Comment:200"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and (parts[1] == f"rule_{rule}" or parts[1].startswith(f"rule_{rule}_wildcards")):
            return int(parts[0])
    return None


def _cancel_once_checkpointed(workdir: Path, args: list[str], rule: str, log: Path,
                              checkpointed: re.Pattern, timeout: float = 300) -> tuple[Run, int]:
    """Run snakemake; once `log` shows a checkpoint was written, scancel the rule's job."""
    t0 = time.monotonic()
    with open(workdir.parent / f"{workdir.name}.out", "w+") as out:
        proc = subprocess.Popen([*SNAKEMAKE, *PROFILES, "-d", str(workdir), *args], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for(lambda: log.exists() and checkpointed.search(log.read_text()), timeout,
                      f"a checkpoint in {log}", proc)
            slurm_id = _wait_for(lambda: _running_job(rule), 30, f"running job of {rule}", proc)
            subprocess.run(["scancel", str(slurm_id)], check=True)
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        out.seek(0)
        return Run(proc.returncode, out.read(), time.monotonic() - t0), slurm_id


@pytest.mark.skipif((REPO / "Snakefile").exists() and TINY_CONFIG.exists(),
                    reason="covered on the real workflow by "
                           "test_tiny_warmup_scancel_is_retried_and_resumes_from_checkpoint")
def test_toy_scancel_is_retried_and_resumes(slurm_cluster, tmp_path):
    work = tmp_path / "w"
    log = work / "logs" / "train.log"
    run, cancelled = _cancel_once_checkpointed(
        work, ["-s", str(TOY), "--config", "targets=[results/train.txt]", "train_iters=8",
               "checkpoint_every=2", "iter_seconds=1.0"],
        "train", log, re.compile(r"^iteration [3-7] ", re.M))
    assert run.returncode == 0, run.output
    assert job_record(cancelled)["JobState"] == "CANCELLED"
    ids = run.jobs()["train"]
    assert len(ids) == 2 and ids[0] == cancelled, run.output  # profile `retries` resubmitted it
    assert job_record(ids[1])["JobState"] == "COMPLETED"
    text = log.read_text()
    m = re.search(r"resumed from iteration (\d+)", text)
    assert m and int(m.group(1)) >= 2, text
    assert f"started at {m.group(1)}" in (work / "results" / "train.txt").read_text()


# ---------------------------------------------------------------------------------------------
# Memory enforcement (cgroup mode): OOM names mem_mb; mem_mb scaling with attempt recovers


@pytest.fixture
def cgroup_cluster(slurm_cluster):
    """Restart the cluster with cgroup memory enforcement; back to the plain mode afterwards."""
    p = _cluster_up(cgroup=True)
    if p.returncode != 0:
        _cluster_up(cgroup=False)
        pytest.skip(f"cgroup mode does not come up in this container:\n{p.stderr[-1500:]}")
    try:
        yield
    finally:
        _cluster_up(cgroup=False)


@pytest.mark.slow  # over 5 s measured (pytest --durations)
def test_toy_out_of_memory_names_mem_mb_and_retry_with_more_memory_succeeds(cgroup_cluster, tmp_path):
    # hog allocates 300 MB; mem_mb = 400 * attempt; the two snakemakes in the job need ~250 MB.
    args = ["-s", str(TOY), "--config", "targets=[results/hog.txt]", "hog_mb=300", "hog_mem_mb=400"]
    failed = snakemake(tmp_path / "no_retry", *args, "--retries", "0")
    assert failed.returncode != 0, failed.output
    # The step's OOM kill makes the job FAILED (OUT_OF_MEMORY when the batch step itself is hit);
    # SLURM's own note is in the job log, and the workflow's onerror hint names the knob.
    assert job_record(failed.jobs()["hog"][0])["JobState"] in ("FAILED", "OUT_OF_MEMORY")
    assert re.search(r"rule 'hog'.*exceeding its memory limit.*raise the rule's `mem_mb`", failed.output), failed.output

    ok = snakemake(tmp_path / "retry", *args, "--retries", "1")
    assert ok.returncode == 0, ok.output
    first, second = (job_record(i) for i in ok.jobs()["hog"])
    assert first["JobState"] in ("FAILED", "OUT_OF_MEMORY") and second["JobState"] == "COMPLETED"
    assert (first["MinMemoryNode"], second["MinMemoryNode"]) == ("400M", "800M")


# ---------------------------------------------------------------------------------------------
# The real workflow, tiny config: every stage one sbatch job, results equal to a local run

needs_workflow = pytest.mark.skipif(not (REPO / "Snakefile").exists() or not TINY_CONFIG.exists(),
                                    reason="the workflow (Snakefile, configs/tiny.yaml) is not there yet")


LABEL_STAGES = ("pseudo_labels", "naive_labels", "teacher_labels", "evaluate")  # the stages with `shards`
FEATURE_RULES = {"source_features_counts": 2, "source_features_plan": 1, "source_features_shard": 2,
                 "source_features": 1}  # resources.source_features.shards: 2


def _gpu_overlay(tmp_path: Path, extra: str = "") -> Path:
    """Config overlay: GPU stages ask for gpu=1 (resources.use_gpu). Resources are not params,
    so the outputs must not change; on the fake GPU torch still runs on the CPU."""
    p = tmp_path / "overlay.yaml"
    p.write_text("resources:\n  use_gpu: true\n" + extra)
    return p


def _dry_run_jobs(workdir: Path, configfiles: list[str]) -> dict[str, int]:
    """rule -> job count of the DAG, from a local dry run's job stats table."""
    p = subprocess.run([*SNAKEMAKE, "-n", "--cores", "1", "-d", str(workdir), "--configfile", *configfiles],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    table = p.stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def _checkpoint_difference(a: Path, b: Path) -> str:
    """Where two checkpoint files differ (for the failure message), tensor by tensor."""
    import torch

    x, y = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    diffs = []

    def walk(u, v, key):
        if isinstance(u, dict) and isinstance(v, dict):
            for k in sorted(set(u) | set(v), key=str):
                walk(u.get(k), v.get(k), f"{key}/{k}")
        elif isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor):
            if u.shape != v.shape or not torch.equal(u, v):
                diffs.append(key)
        elif u != v:
            diffs.append(f"{key} ({u!r} != {v!r})"[:200])

    walk(x, y, "")
    return ", ".join(diffs[:20]) or "same tensors and values, different bytes (serialisation)"


@pytest.mark.slow  # over 5 s measured (pytest --durations)
@needs_workflow
def test_tiny_workflow_on_slurm_equals_local_run(slurm_cluster, tmp_path):
    """The whole tiny workflow as SLURM jobs gives the local run's files. The SLURM run also shards the
    label stages and the evaluations (2 shard jobs each, a statistics job where the selection reads every
    image first, a local gather) and the source features (2 counting and 2 row shards, a plan and a
    gather job), so sharded labels, metrics and feature banks are compared with one job's byte for byte
    (issue 25, test 4 b)."""
    overlay = _gpu_overlay(tmp_path)
    sharded = tmp_path / "sharded.yaml"
    sharded.write_text(overlay.read_text() + "".join(f"  {stage}: {{shards: 2}}\n"
                                                     for stage in (*LABEL_STAGES, "source_features")))
    configs = [str(TINY_CONFIG), str(overlay)]
    expected = _dry_run_jobs(tmp_path / "dry", [str(TINY_CONFIG), str(sharded)])
    for stage in LABEL_STAGES:
        assert expected[f"{stage}_shard"] == 2 * expected[stage] > 0, expected
    assert expected["teacher_labels_statistics"] == expected["teacher_labels"], expected  # balanced + aligned
    assert expected["pseudo_labels_statistics"] == 1, expected
    assert {r: expected[r] for r in FEATURE_RULES} == FEATURE_RULES, expected
    local_rules = {"all", *LABEL_STAGES}

    # The local reference runs at the same time as the SLURM run: wall time is what CI pays.
    local_dir = tmp_path / "local"
    local_log = open(tmp_path / "local.out", "w")
    local = subprocess.Popen([*SNAKEMAKE, "--cores", "1", "-d", str(local_dir), "--configfile", *configs],
                             cwd=REPO, stdout=local_log, stderr=subprocess.STDOUT)
    try:
        run = snakemake(tmp_path / "slurm", "--configfile", str(TINY_CONFIG), str(sharded), "--retries", "0",
                        timeout=600)
        local_rc = local.wait(timeout=600)
    finally:
        if local.poll() is None:
            local.kill()
        local_log.close()
    print(f"SLURM run: {run.seconds:.0f} s")
    assert run.returncode == 0, run.output[-6000:]
    assert local_rc == 0, (tmp_path / "local.out").read_text()[-6000:]

    # Every non-local job of the DAG was its own sbatch job; GPU stages asked for a GPU.
    jobs = run.jobs()
    assert {r: len(ids) for r, ids in jobs.items()} == {r: n for r, n in expected.items() if r not in local_rules}
    gpu_rules, cpu_rules = set(), set()
    for rule, ids in jobs.items():
        for slurm_id in ids:
            rec = job_record(slurm_id)
            assert rec["JobState"] == "COMPLETED", (rule, rec)
            (gpu_rules if gpu_request(rec) else cpu_rules).add(rule)
            assert rec["Partition"] == ("gpu" if gpu_request(rec) else "cpu"), (rule, rec)
    assert not gpu_rules & cpu_rules, gpu_rules & cpu_rules
    assert {"warmup", "self_training", "distillation"} <= gpu_rules, gpu_rules
    feature_shards = {"source_features_counts", "source_features_shard"}
    assert {f"{stage}_shard" for stage in LABEL_STAGES} | feature_shards <= gpu_rules, gpu_rules
    gather_log = (tmp_path / "slurm" / "logs" / "tiny" / "teacher_labels_r1.log").read_text()
    assert "teacher_labels: joined 2 shards" in gather_log, gather_log
    assert {"synthetic_data", "stylize", "fit_prototypes", "report", "source_features_plan",
            "source_features"} <= cpu_rules, cpu_rules

    # Same results as the local run: label PNGs and metrics/quality JSON byte for byte,
    # checkpoints bitwise (determinism: same config + seed -> same result on CPU).
    res_s, res_l = tmp_path / "slurm" / "results", local_dir / "results"
    pngs = sorted(p.relative_to(res_s) for p in res_s.rglob("labels/**/*.png"))
    jsons = sorted(p.relative_to(res_s) for p in res_s.rglob("*.json")
                   if p.parent.name in ("metrics", "labels"))
    ckpts = sorted(p.relative_to(res_s) for p in res_s.rglob("models/*.pt"))
    banks = sorted(p.relative_to(res_s) for p in res_s.rglob("prototypes/source_features.h5"))
    assert pngs and jsons and ckpts and banks, (pngs, jsons, ckpts, banks)
    for rel in pngs + jsons + banks:
        assert filecmp.cmp(res_s / rel, res_l / rel, shallow=False), f"{rel} differs between SLURM and local"
    problems = []
    for rel in ckpts:
        if not filecmp.cmp(res_s / rel, res_l / rel, shallow=False):
            problems.append(f"{rel}: {_checkpoint_difference(res_s / rel, res_l / rel)}")
    assert not problems, "checkpoints differ between SLURM and local: " + "; ".join(problems)


@pytest.mark.slow  # over 5 s measured (pytest --durations)
@needs_workflow
@pytest.mark.parametrize("gpus", [1, 2])
def test_tiny_warmup_scancel_is_retried_and_resumes_from_checkpoint(slurm_cluster, tmp_path, gpus):
    # Enough iterations to cancel mid-training; a resume file after every iteration. gpus 2: the job's
    # 2 ranks (one srun step) all stop on the cancel's SIGTERM, and the next job's 2 ranks resume.
    overlay = _gpu_overlay(tmp_path, f"  warmup: {{gpus: {gpus}}}\ntrain: {{batch_size: 4}}\n"
                                     "train_overrides:\n  warmup: {iterations: 12}\nruntime: {checkpoint_every: 1}\n")
    work = tmp_path / "w"
    log = work / "logs" / "tiny" / "warmup.log"
    run, cancelled = _cancel_once_checkpointed(
        work, ["--configfile", str(TINY_CONFIG), str(overlay), "--until", "warmup"], "warmup", log,
        re.compile(r"^\[[3-9]/12\]", re.M))
    assert run.returncode == 0, run.output[-6000:]
    assert job_record(cancelled)["JobState"] == "CANCELLED"
    ids = run.jobs()["warmup"]
    assert len(ids) == 2 and ids[0] == cancelled, run.output[-6000:]
    assert job_record(ids[1])["JobState"] == "COMPLETED"
    text = log.read_text()
    m = re.search(r"resuming from \S+\.resume\.pt at iteration (\d+)/12", text)
    assert m and int(m.group(1)) >= 2, text
    assert (work / "results" / "tiny" / "models" / "warmup.pt").exists()
    if gpus > 1:
        assert text.count("started 2 ranks (srun") == 2 and "[rank 1] rank 1/2" in text, text


@pytest.mark.slow  # minutes: a training stage of ~3 min in jobs of 1 min
@needs_workflow
def test_tiny_warmup_longer_than_its_time_limit_finishes_through_resubmission(slurm_cluster, tmp_path):
    """runtime 1 min, a warm-up of about 3 min: each job stops at SLURM's time limit (SIGTERM) with a
    resume file, the rule is resubmitted (`submissions`), and the checkpoint equals an uninterrupted
    local run's byte for byte."""
    iterations = int(os.environ.get("BISMAP_TEST_LONG_WARMUP_ITERATIONS", "1800"))  # ~3 min, ~10 it/s
    overlay = _gpu_overlay(tmp_path, "  warmup: {threads: 1, mem_mb: 1000, runtime: 1, submissions: 8}\n"
                                     f"train_overrides:\n  warmup: {{iterations: {iterations}}}\n"
                                     "runtime: {checkpoint_every: 300, log_every: 100}\n")
    configs = [str(TINY_CONFIG), str(overlay)]
    local_dir = tmp_path / "local"
    with open(tmp_path / "local.out", "w") as local_log:
        local = subprocess.Popen([*SNAKEMAKE, "--cores", "1", "-d", str(local_dir), "--configfile", *configs,
                                  "--until", "warmup"], cwd=REPO, stdout=local_log, stderr=subprocess.STDOUT)
        try:
            run = snakemake(tmp_path / "slurm", "--configfile", *configs, "--until", "warmup", "--retries", "0",
                            timeout=1200)
            local_rc = local.wait(timeout=1200)
        finally:
            if local.poll() is None:
                local.kill()
    assert run.returncode == 0, run.output[-6000:]
    assert local_rc == 0, (tmp_path / "local.out").read_text()[-6000:]
    ids = run.jobs()["warmup"]
    states = [job_record(i)["JobState"] for i in ids]
    assert len(ids) >= 2 and states[-1] == "COMPLETED" and set(states[:-1]) == {"TIMEOUT"}, (states, run.output[-4000:])
    log = (tmp_path / "slurm" / "logs" / "tiny" / "warmup.log.attempts").read_text()
    stops = [int(m) for m in re.findall(rf"stopped by SIGTERM after iteration (\d+)/{iterations}", log)]
    resumes = [int(m) for m in re.findall(rf"resuming from \S+ at iteration (\d+)/{iterations}", log)]
    # SLURM enforces the limit only every ~30 s, so a job may finish its last iteration and still be
    # killed (TIMEOUT) before it exits: the next submission then restores the finished checkpoint.
    restored = len(re.findall(r"restored from \S+\.finished\.pt without training", log))
    assert stops and resumes == stops, log[-4000:]  # each job continued where the last stopped
    assert len(ids) == len(stops) + 1 + restored and restored <= 1, (ids, stops, restored, log[-4000:])
    rel = Path("results") / "tiny" / "models" / "warmup.pt"
    a, b = tmp_path / "slurm" / rel, local_dir / rel
    assert filecmp.cmp(a, b, shallow=False), _checkpoint_difference(a, b)


@pytest.mark.slow  # a tiny warm-up on SLURM and locally, ~2 min
@needs_workflow
def test_tiny_warmup_on_two_slurm_tasks_equals_one_process(slurm_cluster, tmp_path):
    """`gpus: 2`: one sbatch job of 2 tasks (one per fake GPU) whose srun step trains 2 DDP ranks (gloo on
    the CPU); the checkpoint equals a local 1-process run's within tests/test_multi_rank.py's tolerance."""
    from test_multi_rank import EQUAL, TOLERANCE, max_difference

    extra = "  warmup: {threads: 1, mem_mb: 1500, gpus: GPUS}\n" + EQUAL
    two = _gpu_overlay(tmp_path, extra.replace("GPUS", "2"))
    one = tmp_path / "one.yaml"
    one.write_text(two.read_text().replace("gpus: 2", "gpus: 1"))
    local_dir = tmp_path / "local"
    local = subprocess.run([*SNAKEMAKE, "--cores", "1", "-d", str(local_dir), "--configfile", str(TINY_CONFIG),
                            str(one), "--until", "warmup"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-4000:]
    run = snakemake(tmp_path / "slurm", "--configfile", str(TINY_CONFIG), str(two), "--until", "warmup",
                    "--retries", "0", timeout=900)
    assert run.returncode == 0, run.output[-6000:]
    (job,) = run.jobs()["warmup"]
    rec = job_record(job)
    assert rec["JobState"] == "COMPLETED" and rec["NumTasks"] == "2" and rec["NumNodes"] == "1", rec
    assert "gpu:2" in gpu_request(rec) and rec["Partition"] == "gpu", rec
    log = (tmp_path / "slurm" / "logs" / "tiny" / "warmup.log").read_text()
    assert "started 2 ranks (srun" in log and "rank 0/2" in log and "[rank 1] rank 1/2" in log, log[-4000:]
    rel = Path("results") / "tiny" / "models" / "warmup.pt"
    assert max_difference(tmp_path / "slurm" / rel, local_dir / rel) < TOLERANCE
