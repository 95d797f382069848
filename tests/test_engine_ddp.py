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
