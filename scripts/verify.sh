#!/usr/bin/env bash
# The one read-only gate: formatting, lints, and the whole test suite (unit tests, the storage
# conformance suite on both engines, and the process tests that run real `norn` clusters).
# CI runs exactly this (see .ci/run); so should you before every commit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
