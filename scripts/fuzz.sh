#!/usr/bin/env bash
# Coverage-guided fuzzing on stable Rust (cargo fuzz, libFuzzer, no sanitizer): each target in
# fuzz/fuzz_targets runs SECONDS (default 60) from its corpus in fuzz/corpus/TARGET, one after
# the other. A crash stops the run with the input saved in fuzz/artifacts/TARGET/; turn it into
# a regression test (unit test beside the code it broke) before fixing it.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]     # default: every target, 60 s each
#   bash scripts/fuzz.sh 600                       # what the closing notes quote
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(path locality request_head upstream_response manifest)
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p results
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="results/$t.log"
  echo "== $t: ${secs}s"
  # The working corpus grows in a scratch copy; fuzz/corpus keeps the small seed set.
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/"
  cargo fuzz run -s none "$t" "$work" -- -max_total_time="$secs" -max_len=65536 -timeout=10 \
    >"$log" 2>&1 || { tail -40 "$log"; echo "== $t: CRASH (input in fuzz/artifacts/$t/)"; exit 1; }
  grep -E "^Done [0-9]+ runs" "$log" | sed "s/^/== $t: /"
  grep -E "cov: [0-9]+" "$log" | tail -1 | sed -E "s/.*(cov: [0-9]+ ft: [0-9]+ corp: [^ ]+).*/== $t: \1/"
  rm -rf "$work"
done
