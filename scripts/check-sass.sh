#!/usr/bin/env bash
# Checks the compiled attention kernels at the SASS level: every attention entry point, for
# every architecture in the fatbin, must use tensor cores (HMMA), ldmatrix (LDSM) and cp.async
# (LDGSTS), and must not touch local memory (no LDL/STL, LOCAL:0, STACK:0 in -res-usage).
# ptxas already fails the build on spills; this also catches stack frames and a silent fallback
# to CUDA-core math or synchronous loads.
#
#   bash scripts/check-sass.sh [FATBIN...]
#
# Without arguments it checks the forward kernels' fatbins (attention_fwd_hd*.fatbin, one per
# head_dim file) of the newest target/*/build/sparse-attn-*/out/.
# KERNEL_REGEX (default ^sa_attn_fwd_) selects the entry points that are checked.
# Needs cuobjdump + nvdisasm: bash scripts/install-cuda.sh --with-cuobjdump.
# How fast the mainloop is (instruction mix, occupancy, partial tiles) is scripts/sass-report.py
# (docs/sass-report.md); this script only checks that the right instructions are there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kernel_regex="${KERNEL_REGEX:-^sa_attn_fwd_}"

local_bin="$root/.toolchain/cuobjdump/nvidia/cu13/bin"
if [ -x "$local_bin/cuobjdump" ]; then
  export PATH="$local_bin:$PATH"
fi
if ! command -v cuobjdump >/dev/null 2>&1 || ! command -v nvdisasm >/dev/null 2>&1; then
  echo "check-sass.sh: cuobjdump/nvdisasm not found; run scripts/install-cuda.sh --with-cuobjdump" >&2
  exit 2
fi

fatbins=("$@")
if [ ${#fatbins[@]} -eq 0 ]; then
  newest="$(ls -t "$root"/target/*/build/sparse-attn-*/out/attention_fwd_hd64.fatbin 2>/dev/null | head -n 1 || true)"
  if [ -z "$newest" ]; then
    echo "check-sass.sh: no attention_fwd_hd*.fatbin under target/; build with nvcc first" >&2
    exit 2
  fi
  fatbins=("$(dirname "$newest")"/attention_fwd_hd*.fatbin)
fi

status=0
for fatbin in "${fatbins[@]}"; do
  echo "check-sass.sh: ${fatbin#"$root"/}"
  sass="$(cuobjdump -sass "$fatbin")"
  res="$(cuobjdump -res-usage "$fatbin")"
  # One line per (arch, kernel): counts of the instructions of interest in that function.
  # cuobjdump prints "arch = sm_XX" before each ELF and "Function : NAME" before each body.
  table="$(awk -v re="$kernel_regex" '
    function flush() {
      if (fn != "" && fn ~ re) print arch, fn, hmma + 0, ldsm + 0, ldgsts + 0, lcl + 0
      fn = ""; hmma = ldsm = ldgsts = lcl = 0
    }
    /arch = sm_/ { flush(); arch = $3; next }
    /Function : / { flush(); fn = $3; next }
    fn != "" {
      if ($0 ~ /[^A-Z]HMMA\./) hmma++
      if ($0 ~ /[^A-Z]LDSM\./) ldsm++
      if ($0 ~ /[^A-Z]LDGSTS/) ldgsts++
      if ($0 ~ /[^A-Z](LDL|STL)[. ]/) lcl++
    }
    END { flush() }
  ' <<<"$sass")"
  usage="$(awk -v re="$kernel_regex" '
    /arch = sm_/ { arch = $3 }
    /Function / { sub(":", "", $2); fn = $2; next }
    fn != "" && /REG:/ {
      if (fn ~ re) {
        reg = stack = lcl = ""
        for (i = 1; i <= NF; i++) {
          split($i, kv, ":")
          if (kv[1] == "REG") reg = kv[2]
          if (kv[1] == "STACK") stack = kv[2]
          if (kv[1] == "LOCAL") lcl = kv[2]
        }
        print arch, fn, reg, stack, lcl
      }
      fn = ""
    }
  ' <<<"$res")"
  if [ -z "$table" ]; then
    echo "  FAIL: no kernel matching /$kernel_regex/ in the fatbin's SASS" >&2
    status=1
    continue
  fi
  printf '  %-7s %-28s %5s %6s %6s %6s %5s %6s %6s\n' arch kernel HMMA LDSM LDGSTS LDL/STL REG STACK LOCAL
  while read -r arch fn hmma ldsm ldgsts lcl; do
    read -r reg stack lmem < <(awk -v a="$arch" -v f="$fn" '$1 == a && $2 == f { print $3, $4, $5 }' <<<"$usage")
    printf '  %-7s %-28s %5s %6s %6s %6s %5s %6s %6s\n' "$arch" "$fn" "$hmma" "$ldsm" "$ldgsts" "$lcl" "${reg:-?}" "${stack:-?}" "${lmem:-?}"
    problems=()
    [ "$hmma" -gt 0 ] || problems+=("no HMMA (tensor-core mma)")
    [ "$ldsm" -gt 0 ] || problems+=("no LDSM (ldmatrix)")
    [ "$ldgsts" -gt 0 ] || problems+=("no LDGSTS (cp.async)")
    [ "$lcl" -eq 0 ] || problems+=("$lcl local-memory instructions (LDL/STL)")
    [ "${stack:-0}" = 0 ] || problems+=("stack frame of $stack bytes")
    [ "${lmem:-0}" = 0 ] || problems+=("$lmem bytes of local memory")
    if [ -z "${reg:-}" ]; then problems+=("missing from cuobjdump -res-usage"); fi
    for p in "${problems[@]}"; do
      echo "  FAIL: $arch $fn: $p" >&2
      status=1
    done
  done <<<"$table"
done

if [ "$status" = 0 ]; then
  echo "check-sass.sh: OK"
fi
exit "$status"
