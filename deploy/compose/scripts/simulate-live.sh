#!/bin/bash
# Service simulate: the synthetic fleet into Kafka, continuously, at the pace of its own
# timestamps. `sensorcast simulate` produces a fixed series of readings ending at --end; each
# round here starts now and ends 864 readings (three synthetic days of 288 readings, 72
# minutes at 5 s) later, produced at devices / interval = 4 messages per second, so that every
# reading arrives about when it is stamped (up to 25 s early: the producer paces in steps of
# 100 messages; serve refuses only readings more than engine.max_future = 5 min ahead).
# --faults injects faults into the second half of every round, for the dashboard to show.
set -euo pipefail
devices=20 readings=864 interval_s=5
while true; do
  end=$(date -u -d "@$(( $(date +%s) + (readings - 1) * interval_s ))" +%Y-%m-%dT%H:%M:%SZ)
  sensorcast simulate --brokers kafka:9092 --topic sensors.pumps --format json \
    --devices "$devices" --readings "$readings" --interval "${interval_s}s" --seed 7 \
    --faults 2 --end "$end" --rate $(( devices / interval_s ))
done
