#!/usr/bin/env bash
# Starts brt-train on every worker (JAX's distributed runtime joins them), logging to ~/brt-train.log.
# Re-running it with the same --workdir resumes from the newest checkpoint there.
#   launch/train.sh --name brt --gin_file gin/experiments/paper/rec_fixed_skip.gin \
#       --gin_file gin/task/pg19_bytes.gin --workdir gs://BUCKET/runs/rec [--gin_param '...'] [--dry_run]
source "$(dirname "$0")/common.sh"
usage() {
  echo "usage: launch/train.sh --gin_file FILE [--gin_file FILE ...] [--gin_param BINDING ...] --workdir gs://... [common flags]"
  usage_common
}
parse_flags "$@"
require_workdir
if ((${#GIN_FILES[@]} == 0)); then
  echo "train.sh: name the experiment with --gin_file (e.g. gin/experiments/paper/rec_fixed_skip.gin)" >&2
  exit 2
fi

config_args=()
for f in "${GIN_FILES[@]}"; do
  config_args+=(--gin_file="${f}")
done
for p in "${GIN_PARAMS[@]+"${GIN_PARAMS[@]}"}"; do
  config_args+=(--gin_param="${p}")
done

# Compile the train step for this slice here first (XLA's TPU compiler, no TPU needed): a configuration
# that does not fit or does not shard stops before any worker starts.
topology="${ACCELERATOR_TYPE/v5litepod/v5e}"
if ! run .venv/bin/brt-compile --topology="${topology}" "${config_args[@]}"; then
  echo "train.sh: brt-compile refused the run for ${topology} (above); nothing was started" >&2
  exit 2
fi

train_args=(.venv/bin/brt-train --distributed --workdir="${WORKDIR}" "${config_args[@]}")
quoted="$(printf '%q ' "${train_args[@]}")"
on_workers "cd ${REMOTE_DIR} && export LIBTPU_INIT_ARGS=$(printf '%q' "${LIBTPU_INIT_ARGS}") && nohup ${quoted}>> ${LOG_FILE} 2>&1 &"
