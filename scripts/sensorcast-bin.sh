# Sourced by the benchmark scripts, from the repository's root: sets `bin`, the sensorcast binary
# to measure — $SENSORCAST_BIN where set (another build's, for a before/after comparison in one
# sitting), else this checkout's release build, built first.
if [ -n "${SENSORCAST_BIN:-}" ]; then
  bin=$SENSORCAST_BIN
else
  echo "==> cargo build --release" >&2
  cargo build --release --locked --quiet
  bin=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release/sensorcast
fi
