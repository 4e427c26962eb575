#!/usr/bin/env bash
# Runs the carried GPU tests and benches on a lent GPU machine (see scripts/gpu-pack.sh) and
# writes the results, with date, GPU, driver and commit, to $OUT/gpu-results.md (the device
# tool brings $OUT back; commit it under benches/results/).
#
#   bash scripts/gpu-run.sh            # on the GPU machine, in the repository root
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-/tmp}/gpu-results.md"
# cuBLAS 13 comes with the image's Python packages (nvidia-cublas); cudarc dlopens it by name.
for d in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cublas", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export SPARSE_ATTN_REQUIRE_GPU=1
{
  echo "# GPU run: $(date -u +%Y-%m-%dT%H:%MZ), commit $(cat .gpu-carry/COMMIT)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  echo '```'
  echo
  echo "## GPU tests (SPARSE_ATTN_REQUIRE_GPU=1)"
  echo '```'
  .gpu-carry/test-attention_gpu --test-threads=1 2>&1 | tail -40
  echo '```'
  echo
  echo "## ptxas resources"
  echo '```'
  .gpu-carry/sparse-attn kernels 2>&1 | grep -E "kernel|sa_attn|sa_kv" 
  echo '```'
  echo
  echo "## benches/attention (sparse-attn vs cuBLAS dense path)"
  echo '```'
  .gpu-carry/bench-attention --bench 2>&1 | grep -E "^(dense|causal|pattern)|skipped|benches/"
  echo '```'
  echo
  echo "## benches/decode"
  echo '```'
  .gpu-carry/bench-decode --bench 2>&1 | grep -E "^(dense|streaming)|skipped|benches/"
  echo '```'
} > "$out" 2>&1
cat "$out"
