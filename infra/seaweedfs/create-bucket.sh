#!/bin/sh
# Creates the bucket of BLOB_STORE_URL (s3://bucket/prefix) in SeaweedFS, owned by the identity
# `simsearch` of s3.template.json, through `weed shell` (the filer's gRPC API: no S3 keys needed).
# Idempotent: an existing bucket is kept and (re)assigned to that owner. Exits 0 once
# `s3.bucket.list` shows the bucket with that owner, non-zero if it never does.
# Needs SEAWEEDFS_MASTER and SEAWEEDFS_FILER (host:port; their gRPC ports are port + 10000).
set -eu
tab=$(printf '\t')
owner=simsearch # the "name" of the identity in s3.template.json
case "${BLOB_STORE_URL:-}" in
  s3://*) ;;
  *) echo "create-bucket.sh: BLOB_STORE_URL is not s3://...: no bucket to create"; exit 0 ;;
esac
bucket=${BLOB_STORE_URL#s3://}
bucket=${bucket%%/*}
: "${SEAWEEDFS_MASTER:?set SEAWEEDFS_MASTER}"
: "${SEAWEEDFS_FILER:?set SEAWEEDFS_FILER}"

# `weed shell` waits for the master without a time limit, and its exit status is no verdict (creating
# a bucket that exists is an error here): bound each run with `timeout`, judge by s3.bucket.list.
attempt=1
while :; do
  listing=$(printf 's3.bucket.create -name %s -owner %s\ns3.bucket.owner -name %s -owner %s\ns3.bucket.list\n' \
    "$bucket" "$owner" "$bucket" "$owner" |
    timeout 60 weed shell -master="$SEAWEEDFS_MASTER" -filer="$SEAWEEDFS_FILER" 2>&1) || true
  if printf '%s\n' "$listing" | grep -q "^  $bucket$tab.*owner:\"$owner\""; then
    echo "create-bucket.sh: bucket $bucket is there, owned by $owner"
    exit 0
  fi
  if [ "$attempt" -ge "${ATTEMPTS:-10}" ]; then
    printf 'create-bucket.sh: no bucket %s owned by %s after %s attempts:\n%s\n' "$bucket" "$owner" "$attempt" \
      "${listing:-(no output: master or filer not reached within 60 s)}" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  sleep 3
done
