#!/usr/bin/env bash
# The one read-only gate: formatting, lints, the Rust test suite (unit tests, the storage
# conformance suite on both engines, process tests on real `norn` clusters), and the
# compatibility tests that drive a real 3-node cluster with the `temporalio` Python SDK.
# CI runs exactly this (see .ci/run); so should you before every commit.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"

if ! python3 -c "import temporalio, pytest, pytest_asyncio" 2>/dev/null; then
  echo "verify: the compatibility tests need: python3 -m pip install -r compat/requirements.txt" >&2
  exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
cargo build -p norn-node --bin norn --locked
# The Norn Rust SDK examples (compat/test_sdk_examples.py, compat/test_sdk_interop.py).
cargo build -p norn-client --examples --locked
# A worker built with Temporal's own Rust SDK, for compat/test_rust_worker.py (its own workspace).
cargo fmt --manifest-path compat/rust-worker/Cargo.toml -- --check
CARGO_TARGET_DIR="$target" cargo build --locked --manifest-path compat/rust-worker/Cargo.toml
NORN_BIN="$target/debug/norn" CARGO_TARGET_DIR="$target" python3 -m pytest compat -q
# A short chaos run on real processes (docs/jepsen.md): 3 nodes, 45 s of faults; any violation fails.
cargo build -p norn-jepsen --locked
rm -rf "$target/jepsen-ci"
"$target/debug/norn-jepsen" --nodes 3 --time-limit 45 --python --norn "$target/debug/norn" --out "$target/jepsen-ci" --seed 7
