#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, then checks
# formatting, lints, and runs every test (unit, property, interop, cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

cargo fmt --all -- --check
# In the release profile, as the builds below: the proc macros, build
# scripts and their dependencies are compiled once for all three (the lints
# are the same: no code of ours depends on debug_assertions).
cargo clippy --workspace --all-targets --release --locked -- -D warnings
# Release builds of the binaries are what cluster tests start. Built with
# the tests (--tests): their dev-dependencies change the features of shared
# dependencies (nix, tempfile, tracing-subscriber...), and --bins alone
# compiled every workspace library a second time, with other features, for
# binaries the test build then compiled again; this way the test build
# below finds everything built.
cargo build --workspace --release --locked --bins --tests

if cargo nextest --version >/dev/null 2>&1; then
  # Cluster tests mostly wait on daemons: run several at once (.config/nextest.toml).
  cargo nextest run --workspace --release --locked --color never
  cargo test --workspace --release --locked --doc --color never
else
  cargo test --workspace --release --locked -- --color never
fi
