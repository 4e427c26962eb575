#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler from PyPI wheels into .toolchain/cuda (no root, no
# system CUDA). build.rs finds it at .toolchain/cuda/nvidia/cu13/bin/nvcc. Idempotent: does
# nothing when the pinned set is already installed.
#
#   bash scripts/install-cuda.sh                    # nvcc only (what the build needs)
#   bash scripts/install-cuda.sh --with-cuobjdump   # also cuobjdump, for scripts/check-sass.sh
#
# Why 13.0: a driver of the 580 series (CUDA 13.0), common on H100/H200 machines, cannot JIT
# PTX produced by a newer compiler. cuobjdump and nvdisasm (which `cuobjdump -sass` runs) have
# no 13.0 wheels; 13.2 reads 13.0 fatbins.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
toolchain="$root/.toolchain"

nvcc_wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
)
cuobjdump_wheels=(nvidia-cuda-cuobjdump==13.2.51 nvidia-cuda-nvdisasm==13.2.51)

with_cuobjdump=0
for arg in "$@"; do
  case "$arg" in
    --with-cuobjdump) with_cuobjdump=1 ;;
    -h | --help)
      sed -n '2,10p' "$0"
      exit 0
      ;;
    *)
      echo "install-cuda.sh: unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done

pick_python() {
  for py in python3 python; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -m pip --version >/dev/null 2>&1; then
      echo "$py"
      return 0
    fi
  done
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-cuda.sh: no pip found; installing python3-pip with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip >&2
    echo python3
    return 0
  fi
  echo "install-cuda.sh: need python3 with pip (e.g. apt-get install python3-pip)" >&2
  return 1
}

# installed DIR WHEEL...: true when every pinned wheel's dist-info folder is in DIR.
installed() {
  local dir="$1" w name ver
  shift
  for w in "$@"; do
    name="${w%%==*}"
    ver="${w##*==}"
    [ -d "$dir/${name//-/_}-$ver.dist-info" ] || return 1
  done
}

# install_set DIR CHECK_FILE WHEEL...: pip-installs the wheels into DIR unless they (and
# DIR/CHECK_FILE) are already there.
install_set() {
  local dir="$1" check="$2"
  shift 2
  if installed "$dir" "$@" && [ -e "$dir/$check" ]; then
    echo "install-cuda.sh: already installed in ${dir#"$root"/}: $*"
    return 0
  fi
  local py
  py="$(pick_python)"
  echo "install-cuda.sh: installing $* into ${dir#"$root"/}"
  rm -rf "$dir"
  mkdir -p "$dir"
  # --target bypasses PEP 668 (Debian's externally managed Python); --no-deps because the
  # pinned list is complete.
  "$py" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
    --target "$dir" "$@"
  if [ ! -e "$dir/$check" ]; then
    echo "install-cuda.sh: $dir/$check missing after install" >&2
    exit 1
  fi
}

install_set "$toolchain/cuda" nvidia/cu13/bin/nvcc "${nvcc_wheels[@]}"
"$toolchain/cuda/nvidia/cu13/bin/nvcc" --version | grep -q 'V13.0.88' || {
  echo "install-cuda.sh: .toolchain/cuda has an unexpected nvcc version" >&2
  exit 1
}

if [ "$with_cuobjdump" = 1 ]; then
  install_set "$toolchain/cuobjdump" nvidia/cu13/bin/cuobjdump "${cuobjdump_wheels[@]}"
fi

echo "install-cuda.sh: nvcc at ${toolchain#"$root"/}/cuda/nvidia/cu13/bin/nvcc"
