#!/bin/bash
# One-shot (service influxdb-init): maps the InfluxQL database/retention policy
# "sensorcast"/"autogen" to the bucket sensorcast writes, for the dashboard's InfluxQL queries
# and for `sensorcast retrain`'s history query (both go through InfluxDB 2's v1 /query).
# Idempotent: does nothing when the database already has a mapping.
# Uses INFLUX_HOST, INFLUX_TOKEN and INFLUX_ORG (the influx CLI's own variables) and BUCKET
# (the bucket name), all set in compose.yaml.
set -euo pipefail
db=sensorcast  # influxdb.database (empty: the bucket) in sensorcast.toml, dbName in Grafana
existing=$(influx v1 dbrp list --db "$db" --hide-headers)
if [ -n "$existing" ]; then
  echo "DBRP mapping for database $db exists: $existing"
  exit 0
fi
bucket_id=$(influx bucket list --name "$BUCKET" --hide-headers | cut -f 1)
if [ -z "$bucket_id" ]; then
  echo "bucket $BUCKET not found" >&2
  exit 1
fi
influx v1 dbrp create --db "$db" --rp autogen --bucket-id "$bucket_id" --default
