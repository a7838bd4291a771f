#!/bin/sh
# Starts SeaweedFS as one process (master, volume server, filer, S3 gateway) with one S3 identity,
# `simsearch`, whose keys come from S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY: s3.template.json (beside
# this file) is rendered into $TMPDIR (mode 0600) and passed as -s3.config. Not an admin identity: it
# reaches only the buckets it owns (create-bucket.sh makes it the bucket's owner).
# Usage: start.sh [weed server flags...]   (used by docker-compose.yml and infra/k8s/25-seaweedfs.yaml)
set -eu
: "${S3_ACCESS_KEY_ID:?set S3_ACCESS_KEY_ID}"
: "${S3_SECRET_ACCESS_KEY:?set S3_SECRET_ACCESS_KEY}"
# Keys go into JSON through awk's gsub: refuse characters that JSON or gsub would read specially.
for key in "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY"; do
  case "$key" in
    *[!A-Za-z0-9+/=._~-]*) echo "start.sh: S3 keys may only use A-Z a-z 0-9 + / = . _ ~ -" >&2; exit 64 ;;
  esac
done
config="${TMPDIR:-/tmp}/simsearch-s3.json"
umask 077
# The keys are read from the environment (ENVIRON), so they never appear on a command line.
awk '{
  gsub(/@S3_ACCESS_KEY_ID@/, ENVIRON["S3_ACCESS_KEY_ID"])
  gsub(/@S3_SECRET_ACCESS_KEY@/, ENVIRON["S3_SECRET_ACCESS_KEY"])
  print
}' "$(dirname "$0")/s3.template.json" >"$config"
# The weed process needs neither key in its environment (with AWS_* set it would add an admin).
unset S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY
exec weed -logtostderr=true server -s3.config="$config" "$@"
