#!/usr/bin/env bash
# Runs the notebooks against a live demo market (called by .ci/run after the tests, which built
# target/debug/cohortex and the Python module target/debug/deps/libcohortex.so). Fails if any
# cell fails.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
state="$(mktemp -d)"
"$target/debug/cohortex" demo --patients 3000 --state-dir "$state/demo" --keep-running \
  > "$state/demo.log" 2>&1 &
demo=$!
stop() {
  kill -INT "$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 1 600); do
  [ -f "$state/demo/client/ready" ] && break
  if ! kill -0 "$demo" 2>/dev/null; then
    echo "the demo exited before serving:"; cat "$state/demo.log"; exit 1
  fi
  sleep 1
done
[ -f "$state/demo/client/ready" ] || { echo "the demo did not serve within 600 s"; cat "$state/demo.log"; exit 1; }
mkdir -p "$state/modules"
# `cargo test` writes the module beside the test executables; `cargo build` also copies it up.
library="$(cd "$target/debug" && pwd)/deps/libcohortex.so"
[ -f "$library" ] || library="$(cd "$target/debug" && pwd)/libcohortex.so"
ln -s "$library" "$state/modules/cohortex.abi3.so"
PYTHONPATH="$state/modules" COHORTEX_CLIENT_DIR="$state/demo/client" \
  python3 notebooks/run.py notebooks/buyer_analysis.ipynb notebooks/patient_earnings_and_budget.ipynb
