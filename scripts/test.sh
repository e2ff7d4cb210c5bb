#!/usr/bin/env bash
# sensorcast's test command (the README's second command; .ci/run calls it).
#
# Does its own set-up on a fresh machine of this kind and runs the whole suite:
# formatting, clippy with warnings denied, unit tests, the end-to-end tests in tests/ (they run
# the real binary), and a known-vulnerability audit against ../shared/advisory-db when present.
#
# Environment:
#   SENSORCAST_SHARED   path of the shared folder (default: ../shared next to the repository)
#   SKIP_AUDIT=1        skip `cargo audit`
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
shared=${SENSORCAST_SHARED:-$root/../shared}
export SENSORCAST_SHARED=$shared

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version
if [ ! -d "$shared/golden" ]; then
  echo "error: $shared/golden is missing (the PyTorch golden vectors the kernel is tested against)" >&2
  exit 1
fi

# The build needs only a C compiler (for a few -sys crates); install it when missing.
if ! command -v cc >/dev/null 2>&1; then
  step "installing build-essential"
  apt-get update -qq && apt-get install -y -qq build-essential
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --release --all-targets --locked -- -D warnings

step "cargo test (unit + end-to-end)"
cargo test --release --locked

if [ "${SKIP_AUDIT:-0}" != 1 ] && [ -d "$shared/advisory-db" ]; then
  step "cargo audit (offline advisory database)"
  if ! command -v cargo-audit >/dev/null 2>&1; then
    cargo install cargo-audit --locked --quiet
  fi
  # Fails on any known vulnerability; "unmaintained" and similar notices are printed only.
  cargo audit --db "$shared/advisory-db" --no-fetch
fi

step "done"
