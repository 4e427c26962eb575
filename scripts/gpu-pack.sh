#!/usr/bin/env bash
# Builds the GPU test and bench binaries here (the GPU machine has no Rust toolchain and no
# network) and copies them into .gpu-carry/, to be carried to a lent GPU machine with the
# device tool (`carry: [".gpu-carry"]`) and run there by scripts/gpu-run.sh.
#
#   bash scripts/gpu-pack.sh          # everything gpu-run.sh runs
#   bash scripts/gpu-pack.sh torch    # only the CLI binary, for `gpu-run.sh torch` (builds faster)
#
# Packs exactly the binaries scripts/gpu-run.sh runs (its GPU_BINARIES list; with `torch`, only
# sparse-attn, which scripts/bench-torch.py drives; the script itself travels with the working
# tree) and fails, naming them, when any is missing. The kernels are built for the default targets (SASS for sm_80 and
# sm_90, PTX for compute_90) unless SPARSE_ATTN_CUDA_ARCHS says otherwise; the H200 needs 90.
# Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE=${1:-all}
case "$MODE" in
  all | torch) [ $# -le 1 ] || { echo "usage: bash scripts/gpu-pack.sh [all | torch]" >&2; exit 2; } ;;
  -h | --help | help) echo "usage: bash scripts/gpu-pack.sh [all | torch]"; exit 0 ;;
  *) echo "gpu-pack: unknown mode '$MODE'" >&2; echo "usage: bash scripts/gpu-pack.sh [all | torch]" >&2; exit 2 ;;
esac
export SPARSE_ATTN_REQUIRE_CUDA=1
if [ -n "${SPARSE_ATTN_CUDA_ARCHS:-}" ] && ! [[ "${SPARSE_ATTN_CUDA_ARCHS}" =~ (^|[^0-9])90 ]]; then
  echo "gpu-pack: SPARSE_ATTN_CUDA_ARCHS=${SPARSE_ATTN_CUDA_ARCHS} has no sm_90: the H200 would only JIT PTX" >&2
fi

# The binaries gpu-run.sh needs, as cargo (kind, target name) -> .gpu-carry/<kind>-<name>
# (the CLI binary as .gpu-carry/sparse-attn). Keep in step with GPU_BINARIES in gpu-run.sh.
wanted="test:attention_gpu test:emulator_gpu test:adaptive_gpu bench:attention bench:decode bin:sparse-attn"
targets=(--test attention_gpu --test emulator_gpu --test adaptive_gpu --bench attention --bench decode --bin sparse-attn)
if [ "$MODE" = torch ]; then
  wanted="bin:sparse-attn"
  targets=(--bin sparse-attn)
  [ -f scripts/bench-torch.py ] || { echo "gpu-pack: FAILED: scripts/bench-torch.py is missing" >&2; exit 1; }
fi

rm -rf .gpu-carry && mkdir -p .gpu-carry
# Binaries are the newest build of each target; cargo prints their paths as JSON messages
# (diagnostics are rendered on stderr, so a build error is visible and fails the pipeline).
cargo build --release "${targets[@]}" --message-format=json-render-diagnostics |
  WANTED="$wanted" python3 -c '
import json, os, shutil, sys
want = {tuple(w.split(":")) for w in os.environ["WANTED"].split()}
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    name = m["target"]["name"]
    kind = m["target"]["kind"][0]
    if (kind, name) in want:
        dst = ".gpu-carry/sparse-attn" if kind == "bin" else ".gpu-carry/%s-%s" % (kind, name)
        shutil.copy(m["executable"], dst)
        print("packed", dst, "(%.1f MiB)" % (os.path.getsize(dst) / 2**20))
'

missing=()
for w in $wanted; do
  kind="${w%%:*}" name="${w#*:}"
  f=".gpu-carry/${kind}-${name}"
  [ "$kind" = bin ] && f=".gpu-carry/${name}"
  [ -x "$f" ] || missing+=("$f")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "gpu-pack: FAILED: not built or not packed: ${missing[*]}" >&2
  exit 1
fi
# The carried kernels must contain SASS or PTX for the H200 (sm_90).
# (Captured first: `kernels | head -n 1` could kill the report with SIGPIPE, which pipefail
# would take for missing sm_90 code.)
kernels_report=$(.gpu-carry/sparse-attn kernels 2>/dev/null || true)
if ! head -n 1 <<<"$kernels_report" | grep -q 'sm_90\|compute_90'; then
  echo "gpu-pack: FAILED: the packed kernels have no sm_90 code (.gpu-carry/sparse-attn kernels)" >&2
  exit 1
fi
{ git rev-parse HEAD 2>/dev/null || echo unknown; } > .gpu-carry/COMMIT
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
  echo "(working tree had uncommitted changes when packed)" >> .gpu-carry/COMMIT
fi
du -sh .gpu-carry
size=$(du -sb .gpu-carry | cut -f1)
if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
  echo "gpu-pack: WARNING: .gpu-carry is $((size / 1024 / 1024)) MiB; the device tool carries 64 MiB in all, working tree included" >&2
fi
