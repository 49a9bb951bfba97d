#!/usr/bin/env bash
# Fuzzes the request -> domain -> RFC 5322 path (fuzz/fuzz_targets/
# send_message.rs) with cargo-fuzz / libFuzzer for a bounded time. Not part
# of .ci/run: run it by hand or on a schedule.
#
#   scripts/fuzz.sh [SECONDS] [-- LIBFUZZER FLAGS...]     (default 300 s)
#
# Needs cargo-fuzz (installed here from crates.io if missing) and a nightly
# toolchain for its sanitizer flags. Without nightly it runs on stable with
# RUSTC_BOOTSTRAP=1, which lets stable rustc take the same -Z flags.
# The corpus grows in fuzz/corpus/send_message; a crash is saved in
# fuzz/artifacts/send_message/ and replayed with
#   cd fuzz && cargo +nightly fuzz run send_message artifacts/send_message/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
shift || true
[ "${1:-}" = "--" ] && shift

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  echo "no nightly toolchain: running on stable with RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
fi

cd fuzz
mkdir -p corpus/send_message
exec cargo "${toolchain[@]}" fuzz run send_message corpus/send_message -- \
  -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=65536 "$@"
