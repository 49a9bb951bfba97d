#!/usr/bin/env bash
# The benchmark of the README "Performance" section, from a clean machine:
# installs Postfix (for smtp-source and the relay it is compared with) when
# missing, builds notigate and notigate-bench in release mode, and runs
# every phase, printing the Markdown table and notes. Everything listens on
# and connects to 127.0.0.1 only; every phase is bounded.
#
#   scripts/bench.sh                      # the README run (100k x 2 KB)
#   scripts/bench.sh --messages 20000     # any notigate-bench flag passes through
#
# The report is also written to target/bench/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v postfix >/dev/null || ! command -v smtp-source >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "bench.sh: Postfix is missing; install it (apt-get install postfix) or run as root" >&2
    exit 1
  fi
  echo "==> installing postfix (the system instance is not started or used)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # No system mail configuration: the package then neither configures nor
  # starts a system instance; the bench runs its own on loopback.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq postfix >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: the private Postfix instance needs root (postfix start)" >&2
  exit 1
fi

echo "==> building (release)" >&2
cargo build --release --locked --bin notigate --bin notigate-bench >&2

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
  echo target)
mkdir -p target/bench

echo "==> running (about 5 minutes on 2 cores; load average now: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
exec "$target_dir/release/notigate-bench" \
  --server-bin "$target_dir/release/notigate" \
  --work-dir target/bench \
  --report target/bench/report.md \
  --messages 100000 \
  --size 2048 \
  --concurrency 64 \
  --connection-concurrency 32 \
  --latency-rate 2000 \
  --backlog 200000 \
  "$@"
