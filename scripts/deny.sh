#!/usr/bin/env bash
# Checks the dependencies against the RustSec advisory database (cargo-deny), with the
# project's recorded exceptions (scripts/deny.toml). Needs the network to reach GitHub
# (the database); installs cargo-deny if missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! cargo deny --version >/dev/null 2>&1; then
    cargo install cargo-deny --locked
fi
cargo deny --manifest-path Cargo.toml check --config scripts/deny.toml advisories
