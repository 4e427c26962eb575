#!/usr/bin/env bash
# Builds the GPU test and bench binaries here (the GPU machine has no Rust toolchain and no
# network) and copies them into .gpu-carry/, to be carried to a lent GPU machine with the
# device tool (`carry: [".gpu-carry"]`) and run there by scripts/gpu-run.sh.
#
#   bash scripts/gpu-pack.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SPARSE_ATTN_REQUIRE_CUDA=1
rm -rf .gpu-carry && mkdir -p .gpu-carry
# Binaries are the newest build of each target; cargo prints their paths as JSON messages.
cargo build --release --tests --benches --message-format=json 2>/dev/null |
  python3 -c '
import json, sys, shutil
want = {("test", "attention_gpu"), ("bench", "attention"), ("bench", "decode")}
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
        dst = ".gpu-carry/%s-%s" % (kind, name)
        shutil.copy(m["executable"], dst)
        print("packed", dst)
'
cp target/release/sparse-attn .gpu-carry/sparse-attn
git rev-parse HEAD > .gpu-carry/COMMIT
du -sh .gpu-carry
