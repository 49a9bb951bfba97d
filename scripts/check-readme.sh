#!/usr/bin/env bash
# Runs the README's walk-throughs verbatim (grpcurl, then the CLI): every
# ```sh block between `walkthrough:start` and `walkthrough:end` markers, in
# order, in one bash session with the built `notigate` on PATH, against a fresh gateway on the default address (started here
# from the built binary, as `cargo run --release -- serve` would) with a
# fresh data directory. Fails on the first command that fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${NOTIGATE_BIN:-$root/target/debug/notigate}
work=$(mktemp -d)
cleanup() {
  [ -n "${gw:-}" ] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null || true
  pkill -f "aiosmtpd -n -l 127.0.0.1:252[56]" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

python3 - "$root/README.md" > "$work/walkthrough.sh" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
sections = [part.split("<!-- walkthrough:end -->", 1)[0]
            for part in text.split("<!-- walkthrough:start -->")[1:]]
blocks = [b for section in sections for b in re.findall(r"```sh\n(.*?)```", section, re.S)]
print("set -euxo pipefail")
print("\n".join(blocks))
PY

cd "$work"
export PATH="$(dirname "$bin"):$PATH"
"$bin" serve > gateway.log 2>&1 &
gw=$!
for _ in $(seq 100); do
  grep -q "listening on" gateway.log && break
  sleep 0.1
done
grep -q "listening on" gateway.log || { cat gateway.log; exit 1; }
if bash walkthrough.sh > walkthrough.out 2>&1; then
  echo "README walk-throughs: $(grep -c '^+ grpcurl' walkthrough.out) grpcurl and $(grep -c '^+ notigate' walkthrough.out) notigate commands succeeded"
else
  cat walkthrough.out
  echo "--- gateway log ---"
  cat gateway.log
  exit 1
fi
