#!/usr/bin/env bash
# Streams the training log of one worker (process 0 prints the progress lines).
#   launch/logs.sh --name brt [--worker 0] [--dry_run]
source "$(dirname "$0")/common.sh"
usage() {
  echo "usage: launch/logs.sh [--worker N] [common flags]"
  usage_common
}
WORKER=0
parse_flags "$@"
on_workers "tail -n +1 -F ${LOG_FILE}"
