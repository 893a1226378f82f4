#!/usr/bin/env bash
# Fuzzes the decoders and loaders that take outside input, each for a bounded time:
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Targets (fuzz/fuzz_targets/): wire (frames off a socket), unpack (packed tensors),
# config (the TOML loaders). Default: 20 s each, all three (test.sh runs this). Needs
# scripts/setup.sh first (libtorch). Installs cargo-fuzz if missing. libFuzzer through
# cargo fuzz on the stable toolchain (RUSTC_BOOTSTRAP=1), no sanitizer: the targets
# assert what must hold, and a panic, a hang (-timeout) or an allocation past -rss_limit_mb
# is a crash: it fails this script and leaves its input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(wire unpack config)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
root=$PWD
export RUSTC_BOOTSTRAP=1
export LD_LIBRARY_PATH="$root/third_party/libtorch/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd fuzz
cargo fuzz build -s none
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
    seeds=() extra=()
    # The shipped files seed the TOML fuzzer (the traces cut to their first 8 KB).
    [ "$t" = config ] && seeds=("$root/config" "$root/config/slo" "$root/traces") extra=(-max_len=8192)
    # A packed buffer of each kind (tests/pack.rs keeps them current) seeds the decoder's.
    [ "$t" = unpack ] && seeds=("$root/fuzz/seeds/unpack")
    mkdir -p "corpus/$t"
    echo "fuzz: $t for ${seconds} s"
    if ! cargo fuzz run -s none "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -use_value_profile=1 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $t failed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)' "$log" |
        sed "s/^/fuzz: $t: /"
done
