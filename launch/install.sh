#!/usr/bin/env bash
# Installs this checkout (git HEAD) with TPU jax on every worker of the slice.
#   launch/install.sh --name brt [--dry_run]
source "$(dirname "$0")/common.sh"
usage() {
  echo "usage: launch/install.sh [common flags]"
  usage_common
}
parse_flags "$@"

archive="/tmp/block-recurrent-${NAME}.tar.gz"
run git -C "${REPO_DIR}" archive --format=tar.gz --output="${archive}" HEAD
run gcloud compute tpus tpu-vm scp "${archive}" "${NAME}:/tmp/block-recurrent.tar.gz" "${GCLOUD_SCOPE[@]}" --worker=all
on_workers "mkdir -p ${REMOTE_DIR} && tar -xzf /tmp/block-recurrent.tar.gz -C ${REMOTE_DIR} && cd ${REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'"
