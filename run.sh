#!/usr/bin/env bash
# The main job, on a fresh machine: set-up (idempotent), build, then the quickstart
# experiment in live mode (config/quickstart.toml: three devices share one cloud worker
# running MobileNetV2; four policies at three bandwidths, about 80 s): the runtime's
# actors, real compute, real packing, loopback TCP through emulated uplinks. It prints the
# table and where summary.json, frames.csv and the plots are (out/experiments/quickstart/).
# Extra arguments go to `dyno experiment run` (e.g. ./run.sh --mode simulated, --json,
# --processes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/setup.sh
exec cargo run --release --quiet -p dyno-actors --bin dyno -- \
  experiment run config/quickstart.toml --mode live "$@"
