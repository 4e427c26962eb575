#!/usr/bin/env bash
# Runs the carried GPU tests, self-tests, sanitizer cases and benches on a lent GPU machine
# (binaries packed by scripts/gpu-pack.sh into .gpu-carry/; that machine has no Rust) and
# writes what a reader needs, failures in full, to $OUT:
#
#   $OUT/gpu-results.md     summary table, machine, libraries, per-test PASS/FAIL/TIMEOUT
#                           tables, the failures' logs, sanitizer results, bench tables
#   $OUT/gpu-logs.tar.gz    every step's complete log (and gpu-results.md)
#   $OUT/criterion-NAME.tar.gz   (bench mode) criterion's data
#   $OUT/bench-torch.md, bench-torch.json   (torch mode) sparse-attn vs FA2 and FlexAttention
#
# Usage (in the repository root on the GPU machine; `bash scripts/gpu-run.sh help`):
#
#   bash scripts/gpu-run.sh [first]            # the first call: everything but criterion, <= ~5.5 min
#   bash scripts/gpu-run.sh bench attention    # a full criterion run of one bench (later calls)
#   bash scripts/gpu-run.sh bench decode
#   bash scripts/gpu-run.sh torch [--quick]    # scripts/bench-torch.py: sparse-attn vs PyTorch
#   bash scripts/gpu-run.sh find-libs          # only the cuBLAS / driver / sanitizer search
#   bash scripts/gpu-run.sh --dry-run [MODE]   # print what would run, run nothing on a GPU
#
# Without a GPU it says so (in its output and in gpu-results.md) and exits 0. Bad arguments
# print the usage and exit 2. tests/scripts.rs tests the argument handling, the library search
# and a whole run against fake binaries on machines without a GPU.
#
# Environment (defaults in brackets; mostly for tests):
#   OUT                          where results go [/tmp/gpu-run-out]
#   SPARSE_ATTN_GPU_BUDGET_S     hard wall-time budget of the whole script [first: 330, bench: 360,
#                                torch: 420]
#   SPARSE_ATTN_GPU_TEST_TIMEOUT_S   per GPU test [60]; self-tests get half of it
#   SPARSE_ATTN_GPU_SAN_TIMEOUT_S    per compute-sanitizer run [40]
#   SPARSE_ATTN_GPU_SEARCH_ROOTS     folders searched for libcublas.so.13, libcuda and
#                                compute-sanitizer instead of the standard ones (then ldconfig
#                                and PATH are not consulted for them)
#   SPARSE_ATTN_GPU_SANITIZER    path of compute-sanitizer (skips its search)
#   SPARSE_ATTN_GPU_NVIDIA_SMI   the nvidia-smi to ask for GPUs [nvidia-smi]
#   PYTHON                       the Python whose site-packages are searched [python3]
#   SPARSE_ATTN_TORCH_PYTHON     the Python with torch that runs bench-torch.py [$PYTHON]
#   SPARSE_ATTN_TORCH_ARGS       more arguments for bench-torch.py (torch mode), word-split:
#                                "--patterns causal,mix --seq 16384 --iters 50"
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
CARRY="$ROOT/.gpu-carry"

# What gpu-pack.sh must pack (keep in step with its `wanted` list).
GPU_BINARIES=(test-emulator_gpu test-attention_gpu test-adaptive_gpu bench-attention bench-decode sparse-attn)
# Test binaries in the order they run: the emulator's model against the hardware first, the
# adaptive pipeline (summaries, scores, selection, compaction, forward) last.
TEST_BINARIES=(test-emulator_gpu test-attention_gpu test-adaptive_gpu)
# Run first, alone, with CUDA_LAUNCH_BLOCKING=1; also the sanitizer's forward case.
FIRST_BIN=test-attention_gpu
FIRST_TEST=small_forward_split_kv_against_f64
# compute-sanitizer cases: "binary test".
SAN_CASES=("test-attention_gpu small_forward_split_kv_against_f64"
  "test-attention_gpu small_decode_cuda_against_f64")
SAN_TOOLS=(memcheck racecheck synccheck initcheck)
BENCHES=(attention decode)

usage() {
  cat <<'EOF'
usage: bash scripts/gpu-run.sh [--dry-run] [first | bench attention | bench decode | torch [--quick] | find-libs | help]
  first              (default) ldd, nvidia-smi, kernel report, every GPU test in its own process,
                     the emulator self-tests and the canary on the GPU, compute-sanitizer
                     (memcheck, racecheck, synccheck, initcheck) on one forward and one decode
                     case, the benches' tables in quick mode; ends within SPARSE_ATTN_GPU_BUDGET_S
                     (330 s)
  bench NAME         a full criterion run of benches/NAME.rs (attention or decode), one per call;
                     ends within SPARSE_ATTN_GPU_BUDGET_S (360 s; attention needs about 300)
  torch [--quick]    scripts/bench-torch.py with the carried sparse-attn: sparse-attn against SDPA
                     flash (FA2) and FlexAttention on the same tensors (--quick: a subset); ends
                     within SPARSE_ATTN_GPU_BUDGET_S (420 s), keeping the cases done by then;
                     brings back bench-torch.md and bench-torch.json
  find-libs          print where cuBLAS, the CUDA driver and compute-sanitizer were found
  --dry-run          print what would run; nothing runs on a GPU
Results go to $OUT (gpu-results.md, gpu-logs.tar.gz).
EOF
}

# ---- arguments ------------------------------------------------------------------------------

DRY=0
MODE=
BENCH=
QUICK=0
parse_args() {
  local args=()
  for a in "$@"; do
    case "$a" in
      --dry-run) DRY=1 ;;
      --quick) QUICK=1 ;;
      -h | --help | help) MODE=help ;;
      -*) echo "gpu-run.sh: unknown option '$a'" >&2; usage >&2; exit 2 ;;
      *) args+=("$a") ;;
    esac
  done
  [ "$MODE" = help ] && { usage; exit 0; }
  set -- "${args[@]+"${args[@]}"}"
  case "${1:-first}" in
    first)
      [ $# -le 1 ] || { echo "gpu-run.sh: 'first' takes no arguments" >&2; usage >&2; exit 2; }
      MODE=first ;;
    bench)
      if [ $# -ne 2 ]; then
        echo "gpu-run.sh: 'bench' needs exactly one bench name (${BENCHES[*]})" >&2; usage >&2; exit 2
      fi
      local ok=0 b
      for b in "${BENCHES[@]}"; do [ "$b" = "$2" ] && ok=1; done
      [ $ok = 1 ] || { echo "gpu-run.sh: unknown bench '$2' (${BENCHES[*]})" >&2; usage >&2; exit 2; }
      MODE=bench BENCH="$2" ;;
    torch)
      [ $# -le 1 ] || { echo "gpu-run.sh: 'torch' takes no arguments but --quick" >&2; usage >&2; exit 2; }
      MODE=torch ;;
    find-libs)
      [ $# -le 1 ] || { echo "gpu-run.sh: 'find-libs' takes no arguments" >&2; usage >&2; exit 2; }
      MODE=find-libs ;;
    *) echo "gpu-run.sh: unknown mode '$1'" >&2; usage >&2; exit 2 ;;
  esac
  if [ "$QUICK" = 1 ] && [ "$MODE" != torch ]; then
    echo "gpu-run.sh: --quick goes with 'torch' only" >&2; usage >&2; exit 2
  fi
}

# ---- time budget ----------------------------------------------------------------------------

now() { date +%s; }
ms_now() { echo $(($(date +%s%N) / 1000000)); }
START=$(now)
DEADLINE=$START
RESERVE=10 # seconds kept for bundling the results

# timeout_for MAX: seconds a step may take (MAX, cut to what the budget has left, minus the
# reserve); fails (prints 0) when less than a second is left.
timeout_for() {
  local max=$1 left=$((DEADLINE - $(now) - RESERVE))
  [ "$max" -lt "$left" ] || max=$left
  [ -n "${PHASE_END:-}" ] && [ $((PHASE_END - $(now))) -lt "$max" ] && max=$((PHASE_END - $(now)))
  if [ "$max" -lt 1 ]; then echo 0; return 1; fi
  echo "$max"
}

# phase CAP: later steps of this phase stop at CAP seconds from now (or at the deadline).
phase() { PHASE_END=$(($(now) + $1)); }

# ---- library and tool search ----------------------------------------------------------------

DEFAULT_ROOTS="/usr/local/cuda /usr/local/cuda-13.0 /usr/local/cuda-13 /usr/local/nvidia \
/opt/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib/wsl/lib"

# Python site-packages folders (and the parents of the `nvidia` namespace package).
site_dirs() {
  "${PYTHON:-python3}" - 2>/dev/null <<'EOF'
import os, site, sys
paths = []
try:
    paths += site.getsitepackages()
except Exception:
    pass
try:
    paths.append(site.getusersitepackages())
except Exception:
    pass
paths += sys.path
try:
    import nvidia
    paths += [os.path.dirname(p) for p in nvidia.__path__]
except Exception:
    pass
seen = set()
for p in paths:
    if p and os.path.isdir(p) and p not in seen:
        seen.add(p)
        print(p)
EOF
}

SEARCHED=()
FOUND=
# find_file NAME...: sets FOUND to the first file with one of these names under the
# site-packages' nvidia/ folders, then the search roots (then ldconfig's cache, with the
# standard roots); appends what it searched to SEARCHED. Fails when nothing is found.
find_file() {
  local d f n
  FOUND=
  while IFS= read -r d; do
    [ -d "$d/nvidia" ] || continue
    SEARCHED+=("$d/nvidia")
    for n in "$@"; do
      f=$(find -L "$d/nvidia" -maxdepth 4 -name "$n" \( -type f -o -type l \) 2>/dev/null | sort | head -n 1)
      [ -n "$f" ] && { FOUND=$f; return 0; }
    done
  done < <(site_dirs)
  for d in ${SPARSE_ATTN_GPU_SEARCH_ROOTS:-$DEFAULT_ROOTS}; do
    [ -d "$d" ] || continue
    SEARCHED+=("$d")
    for n in "$@"; do
      f=$(find -L "$d" -maxdepth 5 -name "$n" \( -type f -o -type l \) 2>/dev/null | sort | head -n 1)
      [ -n "$f" ] && { FOUND=$f; return 0; }
    done
  done
  if [ -z "${SPARSE_ATTN_GPU_SEARCH_ROOTS:-}" ] && command -v ldconfig >/dev/null 2>&1; then
    SEARCHED+=("ldconfig -p")
    for n in "$@"; do
      f=$(ldconfig -p 2>/dev/null | awk -v n="$n" '$1 == n { print $NF; exit }')
      [ -n "$f" ] && { FOUND=$f; return 0; }
    done
  fi
  return 1
}

add_lib_dir() {
  case ":${LD_LIBRARY_PATH:-}:" in
    *":$1:"*) ;;
    *) export LD_LIBRARY_PATH="$1${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
  esac
}

CUBLAS= CUBLAS_NOTE= CUDA_DRIVER= SANITIZER= LIBS_REPORT=
find_libs() {
  local lt searched
  SEARCHED=()
  find_file libcublas.so.13
  CUBLAS=$FOUND
  searched="${SEARCHED[*]:-nothing}"
  if [ -n "$CUBLAS" ]; then
    add_lib_dir "$(dirname "$CUBLAS")"
    lt="$(dirname "$CUBLAS")/libcublasLt.so.13"
    if [ -e "$lt" ]; then CUBLAS_NOTE="libcublasLt.so.13 beside it"
    else CUBLAS_NOTE="WARNING: no libcublasLt.so.13 beside it"; fi
    LIBS_REPORT="cuBLAS: found $CUBLAS ($CUBLAS_NOTE); its folder is on LD_LIBRARY_PATH"
  else
    LIBS_REPORT="cuBLAS: NOT FOUND: no libcublas.so.13 in $searched. The cuBLAS oracle's GPU tests and benches/attention will fail with a cuBLAS load error."
  fi
  SEARCHED=()
  find_file libcuda.so.1 libcuda.so
  CUDA_DRIVER=$FOUND
  if [ -n "$CUDA_DRIVER" ]; then
    add_lib_dir "$(dirname "$CUDA_DRIVER")"
    LIBS_REPORT+=$'\n'"CUDA driver: found $CUDA_DRIVER"
  else
    LIBS_REPORT+=$'\n'"CUDA driver: NOT FOUND: no libcuda.so.1 in ${SEARCHED[*]:-nothing}"
  fi
  SEARCHED=()
  if [ -n "${SPARSE_ATTN_GPU_SANITIZER:-}" ]; then
    SANITIZER="$SPARSE_ATTN_GPU_SANITIZER"
    [ -x "$SANITIZER" ] || SANITIZER=
  elif [ -z "${SPARSE_ATTN_GPU_SEARCH_ROOTS:-}" ] && command -v compute-sanitizer >/dev/null 2>&1; then
    SANITIZER=$(command -v compute-sanitizer)
  else
    find_file compute-sanitizer
    SANITIZER=$FOUND
  fi
  if [ -n "$SANITIZER" ]; then
    LIBS_REPORT+=$'\n'"compute-sanitizer: found $SANITIZER"
  else
    LIBS_REPORT+=$'\n'"compute-sanitizer: NOT FOUND (PATH, ${SEARCHED[*]:-${SPARSE_ATTN_GPU_SANITIZER:-nothing}}): the sanitizer step is skipped"
  fi
  LIBS_REPORT+=$'\n'"LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
}

# ---- GPU detection --------------------------------------------------------------------------

GPU_NOTE=
SMI="${SPARSE_ATTN_GPU_NVIDIA_SMI:-nvidia-smi}"
have_gpu() {
  if ! command -v "$SMI" >/dev/null 2>&1; then
    GPU_NOTE="no GPU: $SMI is not on PATH"
    return 1
  fi
  local list
  list=$(timeout -k 2 15 "$SMI" -L 2>&1)
  if ! grep -q '^GPU [0-9]' <<<"$list"; then
    GPU_NOTE="no GPU: $SMI -L listed none ($(head -n 3 <<<"$list" | tr '\n' ' '))"
    return 1
  fi
  GPU_NOTE="$(grep '^GPU [0-9]' <<<"$list" | head -n 4)"
  return 0
}

# ---- running and recording steps ------------------------------------------------------------

OUTDIR="${OUT:-/tmp/gpu-run-out}"
LOGS=
RESULTS=
SUMMARY=() # "| step | result | s | limit |" rows

# run_step NAME LIMIT LOG CMD...: runs CMD under `timeout` with all output in LOG; sets
# STEP_RC, STEP_S and STEP_RESULT (PASS, FAIL(rc), TIMEOUT, SKIPPED).
run_step() {
  local name=$1 limit=$2 log=$3 t0
  shift 3
  if [ "$DRY" = 1 ]; then
    echo "would run [timeout ${limit}s] $*  > ${log#"$LOGS"/}"
    STEP_RC=0 STEP_S=0 STEP_RESULT=DRY
    return 0
  fi
  if [ "$limit" -le 0 ]; then
    echo "(no time left for $name)" >"$log"
    STEP_RC=0 STEP_S=0 STEP_RESULT="SKIPPED (budget)"
    return 0
  fi
  t0=$(ms_now)
  {
    echo "# $name"
    echo "# command: $*"
    echo "# limit: ${limit}s; started $(date -u +%H:%M:%S)"
  } >"$log"
  timeout -k 5 "$limit" "$@" >>"$log" 2>&1
  STEP_RC=$?
  STEP_S=$(awk -v a="$t0" -v b="$(ms_now)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
  echo "# exit status $STEP_RC after ${STEP_S}s" >>"$log"
  case $STEP_RC in
    0) STEP_RESULT=PASS ;;
    124 | 137) STEP_RESULT=TIMEOUT ;;
    *) if [ "$STEP_RC" -gt 128 ]; then STEP_RESULT="CRASH(signal $((STEP_RC - 128)))"; else STEP_RESULT="FAIL($STEP_RC)"; fi ;;
  esac
  # Progress on stdout (the device tool returns its tail even when a call is cut short).
  printf '[%4ss] %s: %s (%ss of %ss)\n' "$(($(now) - START))" "$name" "$STEP_RESULT" "$STEP_S" "$limit"
}

summary() { SUMMARY+=("| $1 | $2 | $3 | $4 |"); }

md() { [ "$DRY" = 1 ] || printf '%s\n' "$@" >>"$RESULTS"; }
md_file() { # a log in a fenced block, complete up to 400 lines; longer: head, panics, tail
  [ "$DRY" = 1 ] && return 0
  local f=$1 n
  n=$(wc -l <"$f")
  echo '```' >>"$RESULTS"
  if [ "$n" -le 400 ]; then
    cat "$f" >>"$RESULTS"
  else
    head -n 150 "$f" >>"$RESULTS"
    echo "... ($((n - 300)) lines cut here; their panics and errors follow; the whole log is in gpu-logs.tar.gz) ..." >>"$RESULTS"
    sed -n '151,'"$((n - 150))"'p' "$f" | grep -n -E -i 'panicked|error|fail|assert' | head -n 100 >>"$RESULTS"
    echo "..." >>"$RESULTS"
    tail -n 150 "$f" >>"$RESULTS"
  fi
  echo '```' >>"$RESULTS"
}

carried() { [ -x "$CARRY/$1" ]; }

# list_tests BIN: the binary's tests, one per line (libtest's --list --format terse).
list_tests() {
  timeout -k 2 30 "$CARRY/$1" --list --format terse 2>/dev/null | sed -n 's/: test$//p'
}

# A test's result from its exit status and output.
test_result() { # LOG
  if [ "$STEP_RESULT" = PASS ]; then
    if grep -q 'test result: ok. 1 passed' "$1"; then
      if grep -q 'skipped, no GPU' "$1"; then STEP_RESULT=SKIPPED; fi
    else
      STEP_RESULT="NOT RUN (filter matched no test)"
    fi
  fi
}

TEST_ENV=(env SPARSE_ATTN_REQUIRE_GPU=1 RUST_BACKTRACE=1)

run_tests() { # BIN TIMEOUT
  local bin=$1 per=$2 t limit log names=() pass=0 fail=0 skip=0 i=0 t0
  t0=$(ms_now)
  if ! carried "$bin"; then
    md "## $bin" "" "MISSING: .gpu-carry/$bin was not carried (run scripts/gpu-pack.sh)." ""
    summary "$bin" MISSING - -
    return
  fi
  mapfile -t names < <(list_tests "$bin")
  [ "$DRY" = 1 ] && echo "$bin: ${#names[@]} tests, each in its own process:"
  md "## $bin: ${#names[@]} tests, each in its own process (SPARSE_ATTN_REQUIRE_GPU=1)" "" \
    "| # | test | result | s | limit s |" "| --- | --- | --- | --- | --- |"
  local failed=()
  for t in "${names[@]}"; do
    i=$((i + 1))
    limit=$(timeout_for "$per")
    log="$LOGS/$bin/$t.log"
    run_step "$bin $t" "$limit" "$log" "${TEST_ENV[@]}" "$CARRY/$bin" "$t" --exact --nocapture --test-threads=1
    test_result "$log"
    md "| $i | \`$t\` | $STEP_RESULT | $STEP_S | $limit |"
    case $STEP_RESULT in
      PASS | DRY) pass=$((pass + 1)) ;;
      SKIPPED*) skip=$((skip + 1)) ;;
      *) fail=$((fail + 1)); failed+=("$t") ;;
    esac
  done
  md ""
  for t in "${failed[@]+"${failed[@]}"}"; do
    md "### $bin \`$t\`: complete log" ""
    md_file "$LOGS/$bin/$t.log"
    md ""
  done
  summary "$bin (${#names[@]} tests)" "$pass passed, $fail failed, $skip skipped" \
    "$(awk -v a="$t0" -v b="$(ms_now)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')" "$per each"
}

# ---- the modes ------------------------------------------------------------------------------

header() {
  md "# GPU run ($1): $(date -u +%Y-%m-%dT%H:%MZ), commit $(head -n 1 "$CARRY/COMMIT" 2>/dev/null || echo '(no .gpu-carry/COMMIT)')" ""
  [ -f "$CARRY/COMMIT" ] && [ "$(wc -l <"$CARRY/COMMIT")" -gt 1 ] && md "$(tail -n +2 "$CARRY/COMMIT")" ""
}

machine_info() {
  local limit log
  md "## Machine" ""
  limit=$(timeout_for 20)
  log="$LOGS/nvidia-smi.log"
  run_step nvidia-smi "$limit" "$log" bash -c '"$1" --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.sm,clocks.max.mem --format=csv; echo; "$1"' nvidia-smi "$SMI"
  md_file "$log"
  summary nvidia-smi "$STEP_RESULT" "$STEP_S" "$limit"
  md "" "## Libraries" "" '```' "$LIBS_REPORT" '```' ""
  limit=$(timeout_for 20)
  log="$LOGS/ldd.log"
  local bins=() b
  for b in "${GPU_BINARIES[@]}"; do carried "$b" && bins+=("$CARRY/$b"); done
  run_step ldd "$limit" "$log" bash -c 'uname -a; ldd --version | head -n 1; for f in "$@"; do echo "== $f"; ldd "$f"; done' ldd "${bins[@]+"${bins[@]}"}"
  if [ "$DRY" = 0 ] && grep -q 'not found' "$log"; then STEP_RESULT="FAIL (a library is not found)"; fi
  md "## ldd of the carried binaries" ""
  md_file "$log"
  summary "ldd" "$STEP_RESULT" "$STEP_S" "$limit"
  if carried sparse-attn; then
    limit=$(timeout_for 20)
    log="$LOGS/kernels.log"
    run_step "sparse-attn kernels" "$limit" "$log" "$CARRY/sparse-attn" kernels
    md "" "## Kernel resources (sparse-attn kernels)" ""
    md_file "$log"
    summary "sparse-attn kernels" "$STEP_RESULT" "$STEP_S" "$limit"
  fi
  md ""
}

run_first() {
  header first
  machine_info
  local limit log
  # 1. One test alone with synchronous launches, so an error names its launch.
  phase 60
  limit=$(timeout_for 45)
  log="$LOGS/first-test-blocking.log"
  md "## First test alone, CUDA_LAUNCH_BLOCKING=1: $FIRST_BIN \`$FIRST_TEST\`" ""
  if carried "$FIRST_BIN"; then
    run_step "first test" "$limit" "$log" "${TEST_ENV[@]}" CUDA_LAUNCH_BLOCKING=1 "$CARRY/$FIRST_BIN" "$FIRST_TEST" --exact --nocapture --test-threads=1
    test_result "$log"
    md "Result: **$STEP_RESULT** (${STEP_S}s, limit ${limit}s)" ""
    md_file "$log"
  else
    STEP_RESULT=MISSING STEP_S=-
  fi
  summary "first test ($FIRST_TEST, CUDA_LAUNCH_BLOCKING=1)" "$STEP_RESULT" "$STEP_S" "$limit"
  md ""
  # 2. Every GPU test in its own process: the emulator's model vs the hardware first.
  local per=${SPARSE_ATTN_GPU_TEST_TIMEOUT_S:-60}
  phase 70
  run_tests test-emulator_gpu $(((per + 1) / 2))
  phase 120
  run_tests test-attention_gpu "$per"
  phase 40
  run_tests test-adaptive_gpu "$per"
  # 3. compute-sanitizer on one forward and one decode case.
  phase 100
  run_sanitizer
  # 4. The benches' tables, quick mode (fixed iterations, no criterion).
  PHASE_END=
  local b
  md "## Bench tables (quick mode: fixed iterations timed with CUDA events, no criterion sampling)" ""
  for b in attention decode; do
    if carried "bench-$b"; then
      if [ "$b" = attention ]; then limit=$(timeout_for 80); else limit=$(timeout_for 60); fi
      log="$LOGS/bench-$b-quick.log"
      run_step "bench $b (quick)" "$limit" "$log" "${TEST_ENV[@]}" SPARSE_ATTN_BENCH_QUICK=1 "$CARRY/bench-$b"
      md "### benches/$b: $STEP_RESULT (${STEP_S}s, limit ${limit}s)" ""
      md_file "$log"
      md ""
    else
      STEP_RESULT=MISSING STEP_S=-
    fi
    summary "bench $b (quick)" "$STEP_RESULT" "$STEP_S" "$limit"
  done
}

run_sanitizer() {
  md "## compute-sanitizer" ""
  if [ -z "$SANITIZER" ]; then
    md "Skipped: compute-sanitizer was not found (searched PATH, the CUDA toolkit folders and the Python site-packages)." ""
    summary compute-sanitizer "SKIPPED (not found)" - -
    [ "$DRY" = 1 ] && echo "compute-sanitizer not found: the sanitizer step would be skipped"
    return
  fi
  md "$SANITIZER" "" "| tool | case | result | s | limit s | error summary |" "| --- | --- | --- | --- | --- | --- |"
  local per=${SPARSE_ATTN_GPU_SAN_TIMEOUT_S:-40} tool c bin t limit log errs pass=0 fail=0 skip=0 failed=() t0
  t0=$(ms_now)
  for c in "${SAN_CASES[@]}"; do
    bin=${c%% *} t=${c#* }
    for tool in "${SAN_TOOLS[@]}"; do
      limit=$(timeout_for "$per")
      log="$LOGS/sanitizer/$tool-$t.log"
      if ! carried "$bin"; then
        md "| $tool | \`$t\` | MISSING ($bin) | - | - | |"
        fail=$((fail + 1))
        continue
      fi
      run_step "compute-sanitizer $tool $t" "$limit" "$log" "${TEST_ENV[@]}" "$SANITIZER" --tool "$tool" \
        --error-exitcode 99 --print-limit 100 "$CARRY/$bin" "$t" --exact --nocapture --test-threads=1
      errs=
      [ -f "$log" ] && errs=$(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$log" | tail -n 1)
      md "| $tool | \`$t\` | $STEP_RESULT | $STEP_S | $limit | $errs |"
      case $STEP_RESULT in
        PASS | DRY) pass=$((pass + 1)) ;;
        SKIPPED*) skip=$((skip + 1)) ;;
        *) fail=$((fail + 1)); failed+=("$log") ;;
      esac
    done
  done
  md ""
  local f
  for f in "${failed[@]+"${failed[@]}"}"; do
    md "### ${f#"$LOGS"/}: complete log" ""
    md_file "$f"
    md ""
  done
  summary "compute-sanitizer (${#SAN_TOOLS[@]} tools x ${#SAN_CASES[@]} cases)" "$pass passed, $fail failed, $skip skipped" \
    "$(awk -v a="$t0" -v b="$(ms_now)" 'BEGIN { printf "%.1f", (b - a) / 1000 }')" "$per each"
}

run_bench() {
  header "bench $BENCH"
  machine_info
  local limit log
  limit=$(timeout_for 100000)
  log="$LOGS/bench-$BENCH.log"
  md "## benches/$BENCH: full criterion run" ""
  if carried "bench-$BENCH"; then
    mkdir -p "$WORK/target"
    # Criterion writes its data under $CARGO_TARGET_DIR/criterion.
    run_step "bench $BENCH" "$limit" "$log" "${TEST_ENV[@]}" CARGO_TARGET_DIR="$WORK/target" "$CARRY/bench-$BENCH" --bench
    md "Result: **$STEP_RESULT** (${STEP_S}s, limit ${limit}s)" ""
    md_file "$log"
  else
    md "MISSING: .gpu-carry/bench-$BENCH" ""
    STEP_RESULT=MISSING STEP_S=-
  fi
  summary "bench $BENCH (criterion)" "$STEP_RESULT" "$STEP_S" "$limit"
}

# scripts/bench-torch.py with the carried binary; it writes bench-torch.md and .json into $OUT
# itself after every case, so a run cut short keeps the cases it finished.
run_torch() {
  local limit log py budget extra=()
  if [ "$QUICK" = 1 ]; then header "torch --quick"; else header torch; fi
  machine_info
  py="${SPARSE_ATTN_TORCH_PYTHON:-${PYTHON:-python3}}"
  limit=$(timeout_for 100000)
  # bench-torch.py stops itself 20 s before the step's limit and writes what it has.
  budget=$((limit - 20))
  [ "$budget" -ge 1 ] || budget=1
  log="$LOGS/bench-torch.log"
  [ "$QUICK" = 1 ] && extra+=(--quick)
  # shellcheck disable=SC2206 # word splitting is the point
  [ -n "${SPARSE_ATTN_TORCH_ARGS:-}" ] && extra+=(${SPARSE_ATTN_TORCH_ARGS})
  md "## scripts/bench-torch.py: sparse-attn vs SDPA flash (FA2) and FlexAttention" ""
  if ! carried sparse-attn; then
    md "WARNING: .gpu-carry/sparse-attn was not carried (run scripts/gpu-pack.sh torch): only the PyTorch systems run." ""
  fi
  if [ "$DRY" = 0 ]; then mkdir -p "$WORK/torch"; rm -f "$OUTDIR/bench-torch.md" "$OUTDIR/bench-torch.json"; fi
  run_step "bench-torch" "$limit" "$log" env PYTHONUNBUFFERED=1 "$py" "$ROOT/scripts/bench-torch.py" \
    --binary "$CARRY/sparse-attn" --out-dir "$OUTDIR" --work-dir "$WORK/torch" --budget "$budget" \
    "${extra[@]+"${extra[@]}"}"
  md "Result: **$STEP_RESULT** (${STEP_S}s, limit ${limit}s)" ""
  summary "bench-torch.py${extra[*]:+ ${extra[*]}}" "$STEP_RESULT" "$STEP_S" "$limit"
  [ "$DRY" = 1 ] && return 0
  if [ -f "$OUTDIR/bench-torch.md" ]; then
    cat "$OUTDIR/bench-torch.md" >>"$RESULTS"
    cp "$OUTDIR/bench-torch.md" "$OUTDIR/bench-torch.json" "$LOGS/" 2>/dev/null
    md ""
  else
    md "bench-torch.py wrote no bench-torch.md." ""
  fi
  md "### bench-torch.py log" ""
  md_file "$log"
}

bundle() {
  [ "$DRY" = 1 ] && return 0
  {
    echo
    echo "## Summary (wall time $(($(now) - START)) s of a ${BUDGET}s budget)"
    echo
    echo "| step | result | s | limit s |"
    echo "| --- | --- | --- | --- |"
    printf '%s\n' "${SUMMARY[@]+"${SUMMARY[@]}"}"
  } >"$WORK/summary.md"
  # The summary goes first in the results file.
  { head -n 2 "$RESULTS"; cat "$WORK/summary.md"; echo; tail -n +3 "$RESULTS"; } >"$WORK/results.tmp"
  mv "$WORK/results.tmp" "$RESULTS"
  cp "$RESULTS" "$LOGS/gpu-results.md"
  tar -C "$WORK" -czf "$OUTDIR/gpu-logs.tar.gz" logs
  if [ -d "$WORK/target/criterion" ]; then
    tar -C "$WORK/target" -czf "$OUTDIR/criterion-$BENCH.tar.gz" criterion
  fi
  cat "$RESULTS"
  echo
  echo "results: $RESULTS; every log: $OUTDIR/gpu-logs.tar.gz"
  cat "$WORK/summary.md"
}

main() {
  parse_args "$@"
  case $MODE in
    first) BUDGET=${SPARSE_ATTN_GPU_BUDGET_S:-330} ;;
    torch) BUDGET=${SPARSE_ATTN_GPU_BUDGET_S:-420} ;;
    *) BUDGET=${SPARSE_ATTN_GPU_BUDGET_S:-360} ;;
  esac
  DEADLINE=$((START + BUDGET))
  find_libs
  if [ "$MODE" = find-libs ]; then
    echo "$LIBS_REPORT"
    return 0
  fi
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-run.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  LOGS="$WORK/logs"
  mkdir -p "$LOGS/sanitizer" "$OUTDIR"
  for b in "${TEST_BINARIES[@]}"; do mkdir -p "$LOGS/$b"; done
  RESULTS="$OUTDIR/gpu-results.md"
  [ "$DRY" = 1 ] || : >"$RESULTS"
  export SPARSE_ATTN_REQUIRE_GPU=1
  if ! have_gpu; then
    if [ "$DRY" = 1 ]; then
      echo "$GPU_NOTE (a real run would stop here and exit 0)"
    else
      header "$MODE"
      md "$GPU_NOTE: nothing was run." "" '```' "$LIBS_REPORT" '```'
      echo "gpu-run.sh: $GPU_NOTE: nothing to run (results: $RESULTS)"
      return 0
    fi
  fi
  if [ "$DRY" = 1 ]; then
    echo "mode: $MODE${BENCH:+ $BENCH}$([ "$QUICK" = 1 ] && echo ' --quick'); budget ${BUDGET}s; GPU: $GPU_NOTE"
    echo "$LIBS_REPORT"
    local missing=() b needed=("${GPU_BINARIES[@]}")
    [ "$MODE" = torch ] && needed=(sparse-attn)
    for b in "${needed[@]}"; do carried "$b" || missing+=("$b"); done
    [ ${#missing[@]} -eq 0 ] || echo "missing from .gpu-carry: ${missing[*]}"
  fi
  case $MODE in
    first) run_first ;;
    bench) run_bench ;;
    torch) run_torch ;;
  esac
  bundle
  return 0
}

main "$@"
