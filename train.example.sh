#!/usr/bin/env bash
# Continual pretraining with colossal_hammer, as shipped: fill in the placeholders (or override them
# from the environment) and run `bash train.example.sh`. With HOSTFILE set to a file of host names
# (one per line, no comments: see hostfile.example), `colossalai run` starts NPROC_PER_NODE processes
# on every host over ssh (passwordless, this folder and venv at the same paths on every host; README,
# "Several nodes"); without it, it runs on this machine alone.
set -euo pipefail
cd "$(dirname "$0")"

PRETRAINED=${PRETRAINED:-/path/to/extended_model}     # HF folder from init_embeddings (or set MODEL_CONFIG)
MODEL_CONFIG=${MODEL_CONFIG:-}                         # e.g. tiny, for a rehearsal without weights
DATASET=${DATASET:-/path/to/prepared/pretrain}         # prepare_pretrain_dataset.py output (space-separated list)
PLUGIN=${PLUGIN:-zero2}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
HOSTFILE=${HOSTFILE:-}
SAVE_DIR=${SAVE_DIR:-checkpoints/stage2}
LOG_DIR=${LOG_DIR:-logs/stage2}
MAX_LENGTH=${MAX_LENGTH:-4096}
BATCH_SIZE=${BATCH_SIZE:-4}
ACCUMULATION_STEPS=${ACCUMULATION_STEPS:-8}
LR=${LR:-1e-4}
NUM_EPOCHS=${NUM_EPOCHS:-1}
SAVE_INTERVAL=${SAVE_INTERVAL:-1000}
EXTRA_ARGS=${EXTRA_ARGS:-}                             # e.g. "--freeze_non_embeds_params" for stage 1

if [ -n "$MODEL_CONFIG" ]; then MODEL=(--model_config "$MODEL_CONFIG"); else MODEL=(--pretrained "$PRETRAINED"); fi
LAUNCH=(colossalai run --nproc_per_node "$NPROC_PER_NODE" --master_port "${MASTER_PORT:-29500}")
if [ -n "$HOSTFILE" ]; then
    # Every host resolves, takes ssh without a password and has this folder and venv, or one error line
    # now: colossalai run itself fails mid-launch (or with a traceback) when a host does not answer.
    "${PYTHON:-python}" -m colossal_hammer.hostfile "$HOSTFILE"
    LAUNCH+=(--hostfile "$HOSTFILE")
fi

# shellcheck disable=SC2086  # DATASET and EXTRA_ARGS are lists on purpose
"${LAUNCH[@]}" train.py \
    "${MODEL[@]}" \
    --dataset $DATASET \
    --plugin "$PLUGIN" \
    --max_length "$MAX_LENGTH" \
    --batch_size "$BATCH_SIZE" \
    --accumulation_steps "$ACCUMULATION_STEPS" \
    --lr "$LR" \
    --num_epochs "$NUM_EPOCHS" \
    --save_interval "$SAVE_INTERVAL" \
    --save_dir "$SAVE_DIR" \
    --tensorboard_dir "$LOG_DIR" \
    --resume auto \
    $EXTRA_ARGS
