#!/usr/bin/env bash
# The main job, on a fresh machine: set-up (idempotent), build, then check MobileNetV2
# on the 20 labeled ImageNet images at every split point. Extra arguments go to
# `dyno models check` (e.g. ./run.sh --json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/setup.sh
exec cargo run --release --quiet -p dyno-actors --bin dyno -- models check mobilenet_v2 "$@"
