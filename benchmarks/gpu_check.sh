#!/usr/bin/env bash
# The GPU checks of the device-engine issue, as one script for a lent GPU machine (one call, 5 to 7 minutes).
# Installs the wheels the GPU image lacks (prepared in .whl/, see benchmarks/README.md), then writes to $OUT:
#   gpu.txt              the card and JAX
#   cluster_1m.log       the whole `scllm-jax cluster` on a $CELLS-cell .h5ad, default settings (--verbose), cold
#   cluster_1m_warm.log  the same command again, reading the compiled programs the first run kept
#   knn_recall.txt       on-device exact kNN vs brute force on the host (2,000 sampled queries); SKIP_RECALL=1 skips
#   scaling_gpu.tsv      scaling.py at $SIZES cells (5 + 5 epochs as the earlier GPU rows), only when SIZES is set
#                        and the call has time left (SCALING_START_BY seconds, default 330)
# Try it on CPU first: NO_WHEELS=1 PY=.venv/bin/python CELLS=20000 OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
CELLS=${CELLS:-1000000}
PY=${PY:-python3}
[ -d .whl ] && [ -z "${NO_WHEELS:-}" ] && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
JOBS=$(nproc)
export CELLS
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# The backend's start alone (part of every run's preprocessing time): a lead for overlapping it with host work.
$PY -c "import time; t = time.perf_counter(); import jax, scllm_jax; i = time.perf_counter(); d = jax.devices(); \
print(jax.__version__, d, f'import {i - t:.1f} s, backend start {time.perf_counter() - i:.1f} s')" 2>&1 | tee -a "$OUT/gpu.txt"
LABEL=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)

# 1. The 1M-cell atlas as a user would hand it over (.h5ad), generated in parallel.
seconds_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )) | sed -E 's/(...)$/.\1/'; }
start=$(date +%s%N)
timeout 200 $PY benchmarks/scaling.py --sizes "$CELLS" --generate-jobs "$JOBS" --write-atlas /tmp/atlas_$CELLS.h5ad
echo "wrote /tmp/atlas_$CELLS.h5ad in $(seconds_since "$start") s" | tee -a "$OUT/gpu.txt"

# 2. The whole command, default settings, timed from the shell: first with no compiled programs kept (cold),
#    then again with the programs the first run kept (warm: a user's later runs).
export SCLLM_JAX_COMPILATION_CACHE=/tmp/scllm_xla_cache
rm -rf "$SCLLM_JAX_COMPILATION_CACHE"
for run in cold warm; do
  log="$OUT/cluster_1m.log"; [ "$run" = warm ] && log="$OUT/cluster_1m_warm.log"
  start=$(date +%s%N)
  timeout ${CLUSTER_LIMIT:-240} $PY -m scllm_jax.cli cluster /tmp/atlas_$CELLS.h5ad --out /tmp/clustered.h5ad \
    --n-clusters 20 --seed 0 --label-key cell_type --verbose --quiet > "$log" 2>&1
  status=$?
  echo "scllm-jax cluster, $CELLS cells, $run: exit $status, $(seconds_since "$start") s wall" | tee -a "$log"
  grep -vE "^  cluster [0-9]+: markers|epoch ([3-9]|1[0-9]):" "$log" | tail -45
done

# 3. kNN recall of the on-device search against brute force (host, float64) for 2,000 sampled cells.
[ -z "${SKIP_RECALL:-}" ] && timeout 120 $PY - <<'EOF' 2>&1 | tee "$OUT/knn_recall.txt"
import os
import time
import anndata as ad
import jax
import numpy as np
from scllm_jax.config import ScllmConfig
from scllm_jax.graph import device_knn
from scllm_jax.preprocess import Preprocessor

adata = ad.read_h5ad(f"/tmp/atlas_{os.environ['CELLS']}.h5ad")
start = time.perf_counter()
_, prepared = Preprocessor.fit(adata, ScllmConfig())
print(f"preprocess (device moments and projection) {time.perf_counter() - start:.1f} s")
pca = prepared.pca
rng = np.random.default_rng(0)
queries = rng.choice(pca.shape[0], 2000, replace=False)
x = pca.astype(np.float64)
norms = (x * x).sum(axis=1)
exact = np.concatenate([np.argpartition(norms[None, :] - 2 * x[chunk] @ x.T, 16, axis=1)[:, :16]
                        for chunk in np.array_split(queries, 20)])
for precision in ("HIGH", "HIGHEST"):
    for attempt in (1, 2):
        start = time.perf_counter()
        found = device_knn(pca, 16, precision=getattr(jax.lax.Precision, precision))
        seconds = time.perf_counter() - start
    hits = sum(len(set(e) & set(found[q])) for e, q in zip(exact, queries))
    print(f"device_knn {pca.shape[0]} x 16, precision {precision}: {seconds:.1f} s (second call), "
          f"recall@16 vs exact float64 on 2000 queries: {hits / (2000 * 16):.4f}")
from scllm_jax.partition import kmeans_labels, ward_labels
for name, run in (("k-means K=20, 100 restarts on 100,000 cells, all assigned", lambda: kmeans_labels(pca, 20, seed=0, n_init=100)),
                  ("again (compiled)", lambda: kmeans_labels(pca, 20, seed=1, n_init=100)),
                  ("ward K=20 (1,000 micro-clusters)", lambda: ward_labels(pca, 20, seed=0))):
    start = time.perf_counter()
    labels = run()
    print(f"{name}: {time.perf_counter() - start:.1f} s, largest clusters {sorted(np.bincount(labels).tolist())[::-1][:5]}")
EOF

# 4. The scaling rows (same settings as the earlier GPU rows: 5 + 5 epochs).
for n in ${SIZES:-}; do
  # Inside one device call: only when time is left.
  [ "$SECONDS" -gt "${SCALING_START_BY:-330}" ] && { echo "skipped scaling at $n cells: $SECONDS s gone"; break; }
  timeout $(( ${CALL_LIMIT:-550} - SECONDS )) $PY benchmarks/scaling.py --sizes "$n" --device-label "$LABEL" --generate-jobs "$JOBS" \
    --out "$OUT/scaling_gpu.tsv" > "$OUT/scaling_$n.log" 2>&1; tail -3 "$OUT/scaling_$n.log"
done
