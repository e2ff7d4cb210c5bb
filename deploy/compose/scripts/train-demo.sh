#!/bin/bash
# One-shot (service train): the first model of stream "pumps", trained on simulated history,
# before serve starts. Skipped when the registry already has one (the volume survives
# `docker compose down`; `down -v` starts over). The simulated fleet is the one
# simulate-live.sh streams: same devices, seed and interval.
set -euo pipefail
config=/etc/sensorcast/sensorcast.toml
if [ -e /var/lib/sensorcast/models/pumps/current ]; then
  echo "stream pumps has a model already:"
  exec sensorcast models list --config "$config"
fi
# 7 simulated days of 288 readings each (the synthetic daily cycle), ending now.
sensorcast simulate --devices 20 --readings 2016 --interval 5s --seed 7 --faults 0 \
  --out /var/lib/sensorcast/history.jsonl
exec sensorcast train --config "$config" --input /var/lib/sensorcast/history.jsonl
