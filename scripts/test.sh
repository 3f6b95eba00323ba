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

if cargo nextest --version >/dev/null 2>&1; then
  # Cluster tests mostly wait on daemons: run several at once (.config/nextest.toml).
  cargo nextest run --workspace --release --locked --color never
  cargo test --workspace --release --locked --doc --color never
else
  cargo test --workspace --release --locked -- --color never
fi
