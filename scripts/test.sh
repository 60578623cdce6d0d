#!/usr/bin/env bash
# The project's whole test gate, as written in README.md: formatting, lints, every test, and
# the benchmarks compiled (not run) so they never rot.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
cargo bench --workspace --locked --no-run
