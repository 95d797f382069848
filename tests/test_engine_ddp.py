"""Two-process DDP (gloo, CPU) through torchrun: fit runs unchanged and the ranks stay identical."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_engine import TinyNet, ToyData, ce_loss, TRAIN, RUNTIME
    from bismap.engine import distributed, stream, trainer

    # built before any process group exists, as the stages do: fit joins it (torchrun env)
    torch.manual_seed(0)
    model = TinyNet()
    streams = {{"a": stream.InfiniteStream(ToyData(12), 2, seed=1), "b": stream.InfiniteStream(ToyData(8), 2, seed=2)}}
    out = Path({out!r})
    trainer.fit(model=model, loss_fn=ce_loss, streams=streams, train_cfg={{**TRAIN, "iterations": 4}},
                out_checkpoint=out / "final.pt", fingerprint="ddp", ema_decay=0.9, device="cpu",
                tensorboard_dir=None, **RUNTIME)
    info = distributed.current_info()
    assert info.world_size == 2 and streams["a"].world_size == 2 and streams["a"].rank == info.rank
    torch.save(model.state_dict(), out / f"rank{{info.rank}}.pt")
    distributed.cleanup()
    """
)


@pytest.mark.slow
def test_two_process_ddp_gloo(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent.parent))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
        assert torch.equal(r0[k], final["model"][k]), k
    assert final["iteration"] == 4
    # only rank 0 printed progress
    assert proc.stdout.count("wrote ") == 1


EQUIV_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_engine import TinyNet, ToyData, ce_loss, TRAIN
    from bismap.engine import distributed, stream, trainer

    stop_at = int(os.environ.get("STOP_AT", "0"))

    def loss_fn(ctx):
        if stop_at and ctx.iteration == stop_at:
            raise RuntimeError("stopped on purpose")
        return ce_loss(ctx)

    torch.manual_seed(0)
    model = TinyNet(dropout=0.0)  # dropout masks are drawn per rank: only without it can N ranks equal 1
    streams = {{"a": stream.InfiniteStream(ToyData(12), 4, seed=1), "b": stream.InfiniteStream(ToyData(8), 2, seed=2)}}
    trainer.fit(model=model, loss_fn=loss_fn, streams=streams, train_cfg={{**TRAIN, "iterations": 6}},
                out_checkpoint=Path(sys.argv[1]), fingerprint="equiv", ema_decay=0.9, device="cpu",
                tensorboard_dir=None, checkpoint_every=3, log_every=1)
    distributed.cleanup()
    """
)


def _fit(tmp_path, out, ranks, stop_at=0):
    script = tmp_path / "equiv.py"
    script.write_text(EQUIV_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent.parent), STOP_AT=str(stop_at))
    launch = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node", str(ranks)]
    return subprocess.run([*launch, str(script), str(out)], env=env, capture_output=True, text=True, timeout=240)


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_ranks_train_the_one_process_model_and_resume_on_one(tmp_path):
    """Global batch 4 as 2 x 2 with synchronised BatchNorm (CPU: engine.sync_batchnorm) gives one process's
    weights up to float rounding; a resume file the 2 ranks left continues on 1 process."""
    one = _fit(tmp_path, tmp_path / "one.pt", 1)
    two = _fit(tmp_path, tmp_path / "two.pt", 2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-3000:] + two.stderr[-3000:]
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "two.pt"))
    assert b["iteration"] == 6
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        assert _max_difference(a[part], b[part]) < 1e-4, part
    assert not all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # two runs, not one file

    # 2 ranks fail at iteration 5 (resume file at 3), 1 process resumes and finishes
    stopped = _fit(tmp_path, tmp_path / "mixed.pt", 2, stop_at=5)
    assert stopped.returncode != 0 and (tmp_path / "mixed.pt.resume.pt").exists()
    resumed = _fit(tmp_path, tmp_path / "mixed.pt", 1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "written by 2 process(es), this run has 1" in resumed.stdout
    assert "at iteration 3/6" in resumed.stdout
    c = torch.load(tmp_path / "mixed.pt", weights_only=True)
    assert _max_difference(a["model"], c["model"]) < 1e-4
