#!/usr/bin/env bash
# A few minutes on one GPU: training throughput of the paper setting (DeepLabV3+ R101 OS16,
# 4 source + 4 target crops of 512x896, the full self-training step: 3 student forwards with
# backward, 1 EMA-teacher forward) with AMP + channels_last, its peak memory, and whether it
# fits the original's 11 GB card (GTX 1080 Ti / RTX 2080 Ti: 11 GiB, less ~0.6 GiB for the CUDA context),
# and with runtime.activation_checkpointing an 8 GB card;
# then the tiny workflow end to end with every stage on the GPU (results/gpu_check_tiny/), and with
# several GPUs the tiny warm-up on all of them against one (DDP, same global batch).
#   bash scripts/gpu_check.sh                       # ITERS=20 WARMUP=5 by default
#   PARTS=tiny DEVICE=cpu bash scripts/gpu_check.sh # only the tiny workflow, here on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
ITERS=${ITERS:-20}
WARMUP=${WARMUP:-5}
BUDGET_MIB=${BUDGET_MIB:-10650}   # 11264 MiB card minus ~600 MiB CUDA context
BUDGET8_MIB=${BUDGET8_MIB:-7590}  # 8192 MiB card minus ~600 MiB CUDA context (with activation checkpointing)
OUT=${OUT:-gpu_check}
PARTS=${PARTS:-paper tiny}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if [[ $DEVICE == cuda* ]]; then
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: CUDA is not available')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
status=0
if [[ " $PARTS " == *" paper "* ]]; then
# amp:checkpointing:budget. The third run is runtime.activation_checkpointing against an 8 GB card.
for run in "auto:off:$BUDGET_MIB" "fp16:off:$BUDGET_MIB" "auto:on:$BUDGET8_MIB"; do
  IFS=: read -r amp ckpt budget <<< "$run"
  flag=""; [ "$ckpt" = on ] && flag="--checkpointing"
  name="paper_${amp}_ckpt_$ckpt"
  $PY -m bismap.engine.throughput --setting paper --device cuda --amp "$amp" --iters "$ITERS" --warmup "$WARMUP" \
      $flag --json "$OUT/$name.json" | grep '^RESULT' || { echo "FAIL: benchmark $name crashed"; status=1; continue; }
  $PY - "$OUT/$name.json" "$budget" <<'PYEOF' || status=1
import json, sys
r = json.load(open(sys.argv[1]))[0]
budget = float(sys.argv[2])
ok = r["peak_reserved_mb"] <= budget
print(f"{'PASS' if ok else 'FAIL'}: paper setting amp={r['amp']} channels_last={r['channels_last']} "
      f"checkpointing={r['activation_checkpointing']} on {r['gpu']}: "
      f"{r['it_per_s']:.2f} it/s ({r['s_per_it']:.3f} s/it, 90k iterations = {90000 * r['s_per_it'] / 3600:.1f} h), "
      f"peak allocated {r['peak_memory_mb']} MiB, peak reserved {r['peak_reserved_mb']} MiB, budget {budget:.0f} MiB")
sys.exit(0 if ok else 1)
PYEOF
done
fi
if [[ " $PARTS " == *" tiny "* ]]; then
  # every stage of the tiny config on $DEVICE (fit_prototypes too); the training logs name the device
  EXP=gpu_check_tiny
  rm -rf "results/$EXP" "logs/$EXP"
  printf 'experiment: %s\nruntime: {device: "%s"}\nprototypes: {device: "%s"}\n' "$EXP" "$DEVICE" "$DEVICE" > "$OUT/tiny_device.yaml"
  t0=$(date +%s)
  if $PY -m snakemake --cores 4 --configfile config.yaml configs/tiny.yaml "$OUT/tiny_device.yaml" \
        > "$OUT/tiny_workflow.log" 2>&1 && [ -s "results/$EXP/summary.json" ]; then
    # grep exits 1 on no match, which pipefail + set -e would turn into a silent exit: count with -c
    on=$(cat logs/$EXP/*.log | grep -c "^training .* on $DEVICE" || true)
    all=$(cat logs/$EXP/*.log | grep -c "^training " || true)
    if [ "$on" -gt 0 ] && [ "$on" -eq "$all" ]; then
      echo "PASS: tiny workflow end to end on $DEVICE in $(( $(date +%s) - t0 )) s ($on of $all training runs on $DEVICE)"
    else
      echo "FAIL: tiny workflow: only $on of $all training runs say $DEVICE (logs/$EXP/)"; status=1
    fi
  else
    echo "FAIL: tiny workflow on $DEVICE (last lines of $OUT/tiny_workflow.log below)"; tail -20 "$OUT/tiny_workflow.log"; status=1
  fi
fi
if [[ " $PARTS " == *" tiny "* && $DEVICE == cuda* ]]; then
  # DDP: the tiny warm-up on every GPU (resources.warmup.gpus) against one GPU, same global batch
  NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
  if [ "$NGPU" -gt 1 ]; then
    for n in 1 "$NGPU"; do
      printf 'experiment: gpu_check_ddp%s\nruntime: {device: cuda}\nresources:\n  use_gpu: true\n  warmup: {gpus: %s}\ntrain: {batch_size: %s}\ntrain_overrides:\n  warmup: {iterations: 20}\nmodel: {dropout: 0.0}\naugment: {scale: [1.0, 1.0]}\n' \
        "$n" "$n" "$((2 * NGPU))" > "$OUT/ddp$n.yaml"
      rm -rf "results/gpu_check_ddp$n" "logs/gpu_check_ddp$n"
      t0=$(date +%s)
      $PY -m snakemake --cores "$((NGPU * 2))" --resources gpu="$NGPU" --configfile config.yaml configs/tiny.yaml \
          "$OUT/ddp$n.yaml" --until warmup > "$OUT/ddp$n.log" 2>&1 || { echo "FAIL: warm-up on $n GPU(s), see $OUT/ddp$n.log"; status=1; }
      echo "warm-up on $n GPU(s): $(( $(date +%s) - t0 )) s"
    done
    $PY - "$NGPU" <<'PYEOF' || status=1
import sys, torch
n = sys.argv[1]
a, b = (torch.load(f"results/gpu_check_ddp{k}/models/warmup.pt", weights_only=True)["model"] for k in ("1", n))
d = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
ok = d < 1e-2  # cuDNN kernels differ with the per-GPU batch; CPU ranks agree to ~1e-6 (tests/test_multi_rank.py)
print(f"{'PASS' if ok else 'FAIL'}: tiny warm-up on {n} GPUs vs 1: largest weight difference {d:.2e}")
sys.exit(0 if ok else 1)
PYEOF
  else
    echo "SKIP: DDP comparison needs several GPUs ($NGPU here)"
  fi
fi
if [[ " $PARTS " == *" paper "* ]]; then
  # the engine's own tests on this machine (CPU paths + DDP) as a sanity check
  $PY -m pytest -q tests/test_engine.py 2>&1 | tail -1
fi
exit $status
