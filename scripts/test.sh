#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, then checks
# formatting, lints, and runs every test (unit, property, interop, cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Release builds of the binaries are what cluster tests start.
cargo build --workspace --release --locked --bins
cargo test --workspace --locked --release -- --color never
