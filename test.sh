#!/usr/bin/env bash
# The whole test suite, on a fresh machine: set-up (idempotent), then formatting,
# clippy with warnings denied, every unit, integration and doc test, a build of the benchmarks, and 20 s of fuzzing
# for each decoder (frames, packed tensors, TOML files).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
cargo bench --workspace --no-run
scripts/fuzz.sh 20
