#!/usr/bin/env bash
# A few minutes on one GPU: training throughput of the paper setting (DeepLabV3+ R101 OS16,
# 4 source + 4 target crops of 512x896, the full self-training step: 3 student forwards with
# backward, 1 EMA-teacher forward) with AMP + channels_last, its peak memory, and whether it
# fits the original's 11 GB card (GTX 1080 Ti / RTX 2080 Ti: 11 GiB, less ~0.6 GiB for the CUDA context).
#   bash scripts/gpu_check.sh            # ITERS=20 WARMUP=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
BUDGET_MIB=${BUDGET_MIB:-10650}   # 11264 MiB card minus ~600 MiB CUDA context
OUT=${OUT:-gpu_check}
mkdir -p "$OUT"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: CUDA is not available')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
for amp in auto fp16; do
  $PY -m bismap.engine.throughput --setting paper --device cuda --amp "$amp" --iters "$ITERS" --warmup "$WARMUP" \
      --json "$OUT/paper_$amp.json" | grep '^RESULT' || { echo "FAIL: benchmark with amp=$amp crashed"; status=1; continue; }
  $PY - "$OUT/paper_$amp.json" "$BUDGET_MIB" <<'PYEOF' || status=1
import json, sys
r = json.load(open(sys.argv[1]))[0]
budget = float(sys.argv[2])
ok = r["peak_reserved_mb"] <= budget
print(f"{'PASS' if ok else 'FAIL'}: paper setting amp={r['amp']} channels_last={r['channels_last']} on {r['gpu']}: "
      f"{r['it_per_s']:.2f} it/s ({r['s_per_it']:.3f} s/it, 90k iterations = {90000 * r['s_per_it'] / 3600:.1f} h), "
      f"peak allocated {r['peak_memory_mb']} MiB, peak reserved {r['peak_reserved_mb']} MiB, 11 GB budget {budget:.0f} MiB")
sys.exit(0 if ok else 1)
PYEOF
done
# the engine's own tests on this machine (CPU paths + DDP) as a sanity check
$PY -m pytest -q tests/test_engine.py 2>&1 | tail -1
exit $status
