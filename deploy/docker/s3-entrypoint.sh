#!/bin/sh
# SeaweedFS with its S3 gateway; the one identity comes from LATENTQ_S3_ACCESS_KEY_ID / _SECRET_ACCESS_KEY.
set -eu
: "${LATENTQ_S3_ACCESS_KEY_ID:?set LATENTQ_S3_ACCESS_KEY_ID}"
: "${LATENTQ_S3_SECRET_ACCESS_KEY:?set LATENTQ_S3_SECRET_ACCESS_KEY}"
mkdir -p /data/weed
cat > /tmp/s3.json <<JSON
{"identities": [{"name": "latentq",
  "credentials": [{"accessKey": "${LATENTQ_S3_ACCESS_KEY_ID}", "secretKey": "${LATENTQ_S3_SECRET_ACCESS_KEY}"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
exec weed server -ip.bind=0.0.0.0 -dir=/data/weed -filer -s3 -s3.port=8333 -s3.config=/tmp/s3.json \
  -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false
