#!/usr/bin/env bash
# Continual pretraining with colossal_hammer, as shipped: fill in the paths of the config file (or override
# them from the environment) and run `bash train.example.sh`. With HOSTFILE set to a file of host names
# (one per line, no comments: see hostfile.example), `colossalai run` starts NPROC_PER_NODE processes
# on every host over ssh (passwordless, this folder and venv at the same paths on every host; README,
# "Several nodes"); without it, it runs on this machine alone.
set -euo pipefail
cd "$(dirname "$0")"

# The run's settings live in CONFIG (a YAML file: see examples/); each variable below that is set overrides
# the file's value for this launch (as a flag on the command line does).
CONFIG=${CONFIG:-examples/cluster/colossal_llama2_7b.yaml}
PRETRAINED=${PRETRAINED:-}            # HF folder from init_embeddings (replaces the file's model)
MODEL_CONFIG=${MODEL_CONFIG:-}        # e.g. tiny, for a rehearsal without weights (replaces the file's model)
DATASET=${DATASET:-}                  # prepare_pretrain_dataset.py output (space-separated list)
PLUGIN=${PLUGIN:-}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
HOSTFILE=${HOSTFILE:-}
SAVE_DIR=${SAVE_DIR:-}
LOG_DIR=${LOG_DIR:-}
MAX_LENGTH=${MAX_LENGTH:-}
BATCH_SIZE=${BATCH_SIZE:-}
ACCUMULATION_STEPS=${ACCUMULATION_STEPS:-}
LR=${LR:-}
NUM_EPOCHS=${NUM_EPOCHS:-}
SAVE_INTERVAL=${SAVE_INTERVAL:-}
EXTRA_ARGS=${EXTRA_ARGS:-}            # e.g. "--freeze_non_embeds_params" for stage 1

ARGS=(--config "$CONFIG")
add() { if [ -n "$2" ]; then ARGS+=("$1" "$2"); fi; }
add --pretrained "$PRETRAINED"
add --model_config "$MODEL_CONFIG"
add --plugin "$PLUGIN"
add --max_length "$MAX_LENGTH"
add --batch_size "$BATCH_SIZE"
add --accumulation_steps "$ACCUMULATION_STEPS"
add --lr "$LR"
add --num_epochs "$NUM_EPOCHS"
add --save_interval "$SAVE_INTERVAL"
add --save_dir "$SAVE_DIR"
add --tensorboard_dir "$LOG_DIR"
# shellcheck disable=SC2206  # a list on purpose
if [ -n "$DATASET" ]; then ARGS+=(--dataset $DATASET); fi

LAUNCH=(colossalai run --nproc_per_node "$NPROC_PER_NODE" --master_port "${MASTER_PORT:-29500}")
if [ -n "$HOSTFILE" ]; then
    # Every host resolves, takes ssh without a password and has this folder and venv, or one error line
    # now: colossalai run itself fails mid-launch (or with a traceback) when a host does not answer.
    "${PYTHON:-python}" -m colossal_hammer.hostfile "$HOSTFILE"
    LAUNCH+=(--hostfile "$HOSTFILE")
fi

# shellcheck disable=SC2086  # EXTRA_ARGS is a list on purpose
"${LAUNCH[@]}" train.py "${ARGS[@]}" $EXTRA_ARGS
