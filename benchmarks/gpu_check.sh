#!/usr/bin/env bash
# The GPU checks of the atlas-scale issue, as one script for a lent GPU machine.
# Installs the few wheels the GPU image lacks (prepared in .whl/), then writes to $OUT:
#   aggregation_gpu.tsv  achieved bandwidth of A X at 1M and 2M cells (256 features)
#   scaling_gpu.tsv      the scaling benchmark (same script as on CPU) at $SIZES cells (default 1M)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, scllm_jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu.txt"
timeout 120 python3 benchmarks/aggregation_bandwidth.py --cells 1000000 2000000 --out "$OUT/aggregation_gpu.tsv" 2>&1 | tail -5
for n in ${SIZES:-1000000}; do
  timeout ${SIZE_TIMEOUT:-400} python3 benchmarks/scaling.py --sizes "$n" --device-label "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
    --out "$OUT/scaling_gpu.tsv" > "$OUT/scaling_$n.log" 2>&1; tail -5 "$OUT/scaling_$n.log"
done
