#!/usr/bin/env bash
# Deletes the slice (and its queued resource, if it came from one). The workdir in GCS is kept.
#   launch/teardown.sh --name brt [--queued] [--dry_run]
source "$(dirname "$0")/common.sh"
usage() {
  echo "usage: launch/teardown.sh [--queued] [common flags]"
  usage_common
}
parse_flags "$@"

if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "${NAME}" "${GCLOUD_SCOPE[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "${NAME}" "${GCLOUD_SCOPE[@]}" --quiet
fi
