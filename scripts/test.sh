#!/usr/bin/env bash
# The project's whole test gate, as written in README.md: formatting, lints, every test, and
# the benchmarks compiled (not run) so they never rot. They are compiled in the dev profile,
# beside the tests: a release build with LTO only for this took 10 of CI's 24 minutes; the
# figures come from `cargo bench`, which builds them in release.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
cargo build --workspace --benches --locked
