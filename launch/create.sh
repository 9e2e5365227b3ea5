#!/usr/bin/env bash
# Creates the TPU VM slice (or a queued resource that becomes one when capacity frees up).
#   launch/create.sh --name brt --env launch/env/v4.env [--accelerator v4-64] [--spot] [--queued] [--dry_run]
source "$(dirname "$0")/common.sh"
usage() {
  echo "usage: launch/create.sh [--spot] [--queued] [common flags]"
  usage_common
}
parse_flags "$@"

if ((QUEUED)); then
  args=(gcloud compute tpus queued-resources create "${NAME}" --node-id="${NAME}" "${GCLOUD_SCOPE[@]}"
        --accelerator-type="${ACCELERATOR_TYPE}" --runtime-version="${RUNTIME_VERSION}")
else
  args=(gcloud compute tpus tpu-vm create "${NAME}" "${GCLOUD_SCOPE[@]}"
        --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}")
fi
if ((SPOT)); then
  args+=(--spot)
fi
run "${args[@]}"
