#!/usr/bin/env bash
# The GPU acceptance run on a lent machine that reaches no package registry (see README, "GPU acceptance run"):
# installs gpu_bundle/ (`make gpu-bundle`, built where PyPI is reachable and carried along) offline, without
# dependencies, over the image's torch, then runs bench/gpu_check.py. The training rows get --budget_s 240 so
# that the whole command, install and the other parts included, ends within about 8 minutes.
# Results: $OUT (the device tool's folder that comes back) or gpu_check_output/: gpu_check.json and gpu_check.txt.
# Usage: bash bench/gpu_check.sh [gpu_check.py flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUNDLE=${GPU_BUNDLE:-gpu_bundle}
RESULTS=${OUT:-gpu_check_output}
if ! compgen -G "$BUNDLE/*.whl" >/dev/null; then
    echo "error: no wheels in $BUNDLE/: run 'make gpu-bundle' where PyPI is reachable and carry $BUNDLE/ along" >&2
    exit 2
fi
# --no-deps: colossalai's metadata pins torch<=2.5.1; everything else it needs is in the bundle or the image
"$PY" -m pip install -q --no-index --no-deps --find-links "$BUNDLE" "$BUNDLE"/*.whl
"$PY" -c "import torch, colossalai, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpus', torch.cuda.device_count(), '| colossalai', colossalai.__version__, '| transformers', transformers.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" bench/gpu_check.py --out "$RESULTS" --work_dir "${GPU_CHECK_WORK_DIR:-/tmp/gpu_check_work}" \
    --budget_s 240 "$@"
