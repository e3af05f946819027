# Shared by scripts/demo and scripts/test: install missing Debian packages, find cargo,
# and keep the cargo target directory outside the clone so builds are reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/anyedge-target}"

# Packages the build itself needs (protobuf-compiler: etcd-client's build, for the cluster work).
# libprotobuf-dev: the well-known .proto files (google/protobuf/descriptor.proto) etcd-client's build needs.
BUILD_PACKAGES=(build-essential pkg-config protobuf-compiler libprotobuf-dev)

# apt_install PKG...: install the Debian packages that are not installed yet.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing: ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install the Rust toolchain (rustup.rs)" >&2; exit 1; }
}
