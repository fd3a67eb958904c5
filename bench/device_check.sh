#!/usr/bin/env bash
# The GPU check of the "Speed" issue, as one script (for the lent H100/H200; ~6 minutes there):
#   1. install (reuses a Python that already has torch with CUDA and lightning; else pip installs torch 2.13.0 and mflow)
#   2. the test suite's CUDA-marked tests (training, metric-NTK, kernel flow equal the CPU's to round-off)
#   3. seconds per epoch of every head on 1M points (800k train) at batch 4096
#   4. one 100k-point unclustered frozen-kernel flow step, float64 and float32
#   5. (only when asked: width) the width study at full scale, conf/studies/width_gpu.yaml (100k train points, widths
#      64..2048, three parametrisations, two seeds). It resumes where the previous call stopped: each call works for
#      500 s, writes the tables of what has finished (--report) and copies them to $OUT/width-study; call it again
#      until it prints "width study done"
# Everything lands in $OUT (the device tool's output folder) or bench/results/device: JSON, test log, GPU name.
# One part per call keeps each under the device tool's 600 s per command:
#     bash bench/device_check.sh [all|tests|speed|kernel|width]
set -uo pipefail
PART=${1:-all}
case $PART in all|tests|speed|kernel|width) ;; *) echo "part must be all, tests, speed, kernel or width, not $PART"; exit 2;; esac
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/device}
mkdir -p "$OUT"
export WANDB_MODE=offline MFLOW_CACHE_DIR=${MFLOW_CACHE_DIR:-/tmp/mflow-cache}
status=0

if PYTHONPATH=$PWD python -c "import torch, mflow.cli.train, mflow.flows, pytest; assert torch.cuda.is_available()" 2>/dev/null; then
  PY=python
  export PYTHONPATH=$PWD
else
  python3.11 -m venv .venv-device && . .venv-device/bin/activate && PY=python
  $PY -m pip install -q torch==2.13.0 && $PY -m pip install -q -e '.[dev]' || { echo "install failed" | tee "$OUT/install.txt"; exit 1; }
fi
$PY - <<'EOF' | tee "$OUT/gpu.json"
import json, torch
p = torch.cuda.get_device_properties(0)
print(json.dumps({"gpu": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "torch": torch.__version__,
                  "cuda": torch.version.cuda}))
EOF

run() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }
run tests && { timeout 240 $PY -m pytest -q -m cuda tests/ -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/cuda_tests.txt" || status=1; }

run speed && { timeout 240 $PY bench/bench_training.py speed --points 1000000 --batch_sizes 4096 --epochs 2 --accelerator gpu \
  --out "$OUT/training_speed_1M_b4096.json" 2>&1 | grep -E "^\[bench\]|wrote|Error" || status=1; }

run kernel && { timeout 150 $PY bench/bench_kernel_flow.py --sizes 100000 --precision float64 float32 --device cuda \
  --out "$OUT/kernel_flow_100k.json" 2>&1 | tail -5 || status=1; }
if [ "$PART" = width ]; then  # the study's runs stay in runs/ on the machine between calls (an ignored folder)
  timeout 500 $PY studies/width.py --config conf/studies/width_gpu.yaml --out_dir runs/width-gpu 2>&1 | grep -E "^\[width study\]|rror"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || timeout 60 $PY studies/width.py --config conf/studies/width_gpu.yaml --out_dir runs/width-gpu --report >/dev/null 2>&1
  mkdir -p "$OUT/width-study" && cp runs/width-gpu/width_study.* "$OUT/width-study/" 2>/dev/null
  find runs/width-gpu -name "*.json" -not -path "*/csv/*" | tar -cf "$OUT/width-study/runs-json.tar" -T - 2>/dev/null
  if [ "$rc" = 0 ]; then echo "width study done"; else echo "width study not finished (exit $rc): call this part again"; status=1; fi
fi
exit $status
