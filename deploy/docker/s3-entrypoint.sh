#!/bin/sh
# SeaweedFS with its S3 gateway; the one identity comes from LATENTQ_S3_ACCESS_KEY_ID / _SECRET_ACCESS_KEY.
set -eu
: "${LATENTQ_S3_ACCESS_KEY_ID:?set LATENTQ_S3_ACCESS_KEY_ID}"
: "${LATENTQ_S3_SECRET_ACCESS_KEY:?set LATENTQ_S3_SECRET_ACCESS_KEY}"
mkdir -p /data/weed
umask 077  # the identities file below holds the secret
cat > /tmp/s3.json <<JSON
{"identities": [{"name": "latentq",
  "credentials": [{"accessKey": "${LATENTQ_S3_ACCESS_KEY_ID}", "secretKey": "${LATENTQ_S3_SECRET_ACCESS_KEY}"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
# Random JWT keys for this run: the filer and volume servers beside S3 take no read or write S3
# did not sign, so the objects are reachable only through S3 with credentials. They also guard S3's
# gRPC port (8333 + 10000), which listens wherever S3 does: without them it takes a new identity
# (IAM cache PutIdentity) or an object deletion (LifecycleDelete) from anyone.
WEED_JWT_SIGNING_KEY=$(head -c 32 /dev/urandom | base64)
WEED_JWT_SIGNING_READ_KEY=$(head -c 32 /dev/urandom | base64)
WEED_JWT_FILER_SIGNING_KEY=$(head -c 32 /dev/urandom | base64)
WEED_JWT_FILER_SIGNING_READ_KEY=$(head -c 32 /dev/urandom | base64)
export WEED_JWT_SIGNING_KEY WEED_JWT_SIGNING_READ_KEY WEED_JWT_FILER_SIGNING_KEY WEED_JWT_FILER_SIGNING_READ_KEY
# Only S3 (which checks signatures) listens beyond the container's loopback. The master checks no
# credentials (its /dir/assign hands anyone a volume write token, its /col/delete drops a bucket's
# whole collection), so it stays on 127.0.0.1 with the volume and filer servers, reached by S3 alone.
exec weed server -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.ip.bind=0.0.0.0 -dir=/data/weed -filer \
  -s3 -s3.port=8333 -s3.config=/tmp/s3.json -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false
