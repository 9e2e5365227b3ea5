#!/usr/bin/env bash
# After a preemption: recreates the slice if it is gone or preempted, reinstalls, and restarts training
# with the same flags as train.sh; brt-train resumes from the newest complete checkpoint in --workdir.
#   launch/resume.sh --name brt --gin_file ... --workdir gs://... [--spot] [--queued] [--dry_run]
source "$(dirname "$0")/common.sh"
usage() {
  echo "usage: launch/resume.sh (train.sh's flags) [--spot] [--queued] [common flags]"
  usage_common
}
parse_flags "$@"
require_workdir
here="$(dirname "$0")"

if ((DRY_RUN)); then
  state="PREEMPTED"  # show the whole recovery
  echo "# the slice's state comes from:"
  run gcloud compute tpus tpu-vm describe "${NAME}" "${GCLOUD_SCOPE[@]}" --format='value(state)'
else
  state="$(gcloud compute tpus tpu-vm describe "${NAME}" "${GCLOUD_SCOPE[@]}" --format='value(state)' 2>/dev/null || echo MISSING)"
fi
echo "# slice ${NAME} is ${state}"
if [[ "${state}" != "READY" ]]; then
  "${here}/teardown.sh" "$@"
  "${here}/create.sh" "$@"
  "${here}/install.sh" "$@"
fi
"${here}/train.sh" "$@"
