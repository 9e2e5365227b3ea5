#!/usr/bin/env bash
# shellcheck disable=SC2034  # the variables set here are read by the scripts that source this file
# Shared by the launch scripts (source it): flags, the hardware env file, and `run`, which prints a
# command under --dry_run and runs it otherwise.
set -euo pipefail

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "${LAUNCH_DIR}/.." && pwd)"
NAME="${BRT_TPU_NAME:-brt}"
PROJECT="${BRT_PROJECT:-}"
ENV_FILE="${LAUNCH_DIR}/env/v4.env"
ZONE_FLAG=""
ACCELERATOR_FLAG=""
WORKDIR=""
WORKER="all"
SPOT=0
QUEUED=0
DRY_RUN=0
GIN_FILES=()
GIN_PARAMS=()
REMOTE_DIR="\$HOME/block-recurrent"  # expanded by the workers' shells
LOG_FILE="\$HOME/brt-train.log"

usage_common() {
  cat <<USAGE
common flags:
  --name NAME            TPU VM (or queued resource) name       [\$BRT_TPU_NAME or brt]
  --env FILE             hardware settings, e.g. launch/env/v5e.env [launch/env/v4.env]
  --zone ZONE            overrides the env file's zone
  --accelerator TYPE     overrides the env file's accelerator type, e.g. v4-64
  --project PROJECT      gcloud project                         [\$BRT_PROJECT or gcloud's default]
  --dry_run              print the commands instead of running them
USAGE
}

parse_flags() {
  while (($#)); do
    case "$1" in
      --name) NAME="$2"; shift 2 ;;
      --env) ENV_FILE="$2"; shift 2 ;;
      --zone) ZONE_FLAG="$2"; shift 2 ;;
      --accelerator) ACCELERATOR_FLAG="$2"; shift 2 ;;
      --project) PROJECT="$2"; shift 2 ;;
      --workdir) WORKDIR="$2"; shift 2 ;;
      --gin_file) GIN_FILES+=("$2"); shift 2 ;;
      --gin_param) GIN_PARAMS+=("$2"); shift 2 ;;
      --worker) WORKER="$2"; shift 2 ;;
      --spot) SPOT=1; shift ;;
      --queued) QUEUED=1; shift ;;
      --dry_run) DRY_RUN=1; shift ;;
      -h|--help) usage; exit 0 ;;
      *) echo "$(basename "$0"): unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
  done
  if [[ ! -f "${ENV_FILE}" ]]; then
    echo "$(basename "$0"): env file ${ENV_FILE} not found: pick one of launch/env/*.env" >&2
    exit 2
  fi
  # shellcheck source=env/v4.env
  source "${ENV_FILE}"
  ZONE="${ZONE_FLAG:-${ZONE}}"
  ACCELERATOR_TYPE="${ACCELERATOR_FLAG:-${ACCELERATOR_TYPE}}"
  GCLOUD_SCOPE=(--zone="${ZONE}")
  if [[ -n "${PROJECT}" ]]; then
    GCLOUD_SCOPE+=(--project="${PROJECT}")
  fi
}

require_workdir() {
  if [[ -z "${WORKDIR}" ]]; then
    echo "$(basename "$0"): --workdir is required (a gs:// folder every worker can reach)" >&2
    exit 2
  fi
  if [[ "${WORKDIR}" != gs://* ]]; then
    echo "$(basename "$0"): --workdir ${WORKDIR} must be a gs:// folder: workers do not share a disk" >&2
    exit 2
  fi
}

# run CMD...: print it (shell-quoted, ready to paste) under --dry_run, else run it.
run() {
  if ((DRY_RUN)); then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# on_workers COMMAND: one shell command on the chosen workers of the slice, over gcloud ssh.
on_workers() {
  run gcloud compute tpus tpu-vm ssh "${NAME}" "${GCLOUD_SCOPE[@]}" --worker="${WORKER}" --command="$1"
}
