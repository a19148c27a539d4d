#!/usr/bin/env bash
# One prepared GPU check (issue 12, item 5). From the repository root:
#
#   bash bench/gpu_check.sh                           # H100/H200: fits in about 7 minutes
#   DEVICE=cpu QUICK=1 bash bench/gpu_check.sh        # rehearsal on CPU with tiny sizes
#
# Steps (each under its own `timeout`, so one failure does not stop the rest):
#   env      torch/CUDA/card, which optional packages import, stand-ins for missing ones
#            (bench/gpu_shims.py), and the CUDA top-k mask equal to the CPU one (ties included)
#   step-*   bench/search_step.py, cResNet18, batch 256, PGD-7: fp32, --amp bf16,
#            --amp bf16 --channels-last
#   epoch-*  bench/run_epoch.py, cResNet18 width 1 on Digits, batch 256: the same three settings
#   demo-*   scripts/demo.py --epochs 1 (search + dense, natural and PGD-20 accuracy) in fp32
#            and with --amp bf16: the two tables must agree within noise (360 val images:
#            one binomial standard deviation is about 2.6 points at 50 %)
# Environment: DEVICE (cuda | cpu), QUICK (1: tiny sizes), BUDGET (seconds for all steps,
# default 400; a step that no longer fits is skipped and named), PYTHON (default python3),
# OUT (if set, everything printed also goes to $OUT/gpu_log.txt).
set -u
export PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
BUDGET=${BUDGET:-400}
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOG=$WORK/gpu_log.txt
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" && LOG=$OUT/gpu_log.txt
fi
if [ "$DEVICE" = cpu ]; then
    export CUDA_VISIBLE_DEVICES=""   # main.py picks CUDA whenever it sees one
fi
START=$(date +%s)
RESULTS=()

step() {  # step NAME CAP_SECONDS COMMAND...
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START) - 5))
    if [ "$left" -lt 15 ]; then
        echo "=== $name: SKIPPED (budget of ${BUDGET}s spent)"
        RESULTS+=("$name: skipped")
        return
    fi
    local limit=$((cap < left ? cap : left)) t0 rc
    echo "=== $name (timeout ${limit}s): $*"
    t0=$(date +%s)
    timeout -k 5 "$limit" "$@"
    rc=$?
    local note=""
    [ "$rc" -eq 124 ] && note=" TIMED OUT"
    echo "=== $name: exit $rc after $(($(date +%s) - t0)) s$note"
    RESULTS+=("$name: exit $rc$note")
}

write_env_check() {  # timeout runs programs, not shell functions: the check is a file
    cat >"$WORK/env_check.py" <<'EOF'
import importlib, os, sys
import torch
dev = torch.device(sys.argv[1])
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if dev.type == "cuda":
    print("card", torch.cuda.get_device_name(dev), "capability", torch.cuda.get_device_capability(dev),
          "bf16", torch.cuda.is_bf16_supported())
for name in ("numpy", "yaml", "tqdm", "sklearn", "torch.utils.tensorboard", "pyautoattack", "matplotlib"):
    try:
        mod = importlib.import_module(name)
        path = getattr(mod, "__file__", None)  # the tensorboard stand-in has none
        where = "stand-in" if path is None or "gpu_check" in path else getattr(mod, "__version__", "ok")
        print(f"import {name}: {where}")
    except Exception as exc:
        print(f"import {name}: MISSING ({type(exc).__name__}: {exc})")
sys.path.insert(0, os.getcwd())
from models.conv_type import topk_mask
g = torch.Generator().manual_seed(0)
scores = torch.randint(-60, 61, (512, 512, 3, 3), generator=g).float() / 7  # ties at every threshold
for k in (0.1, 0.3, 0.5):
    same = torch.equal(topk_mask(scores, k), topk_mask(scores.to(dev), k).cpu())
    print(f"mask k={k}: {dev} equals CPU: {same}")
EOF
}

main() {
    echo "gpu_check: DEVICE=$DEVICE QUICK=$QUICK BUDGET=${BUDGET}s log $LOG, $(date -u +%FT%TZ)"
    command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    local missing
    missing=$("$PY" -c 'import importlib
for m in ("yaml", "tqdm", "sklearn", "tensorboard"):
    try:
        importlib.import_module(m)
    except Exception:
        print({"yaml": "pyyaml", "sklearn": "scikit-learn"}.get(m, m))' 2>/dev/null)
    if [ -n "$missing" ]; then
        echo "missing: $missing; trying an offline pip install (--no-index, PIP_FIND_LINKS=${PIP_FIND_LINKS:-unset})"
        timeout 90 "$PY" -m pip install -q --no-index $missing || echo "offline install failed: stand-ins follow"
    fi
    timeout 60 "$PY" bench/gpu_shims.py "$WORK/shims"
    export PYTHONPATH="$WORK/shims${PYTHONPATH:+:$PYTHONPATH}"

    local step_size epoch_size demo_size
    if [ "$QUICK" = 1 ]; then
        step_size="--width-mult 0.125 --batch 8 --iters 1 --reps 1 --warmup 1 --no-memory"
        epoch_size="--width-mult 0.125 --batch 16 --n-train 32 --n-eval 16 --iters 1 --warm-epochs 1 --warm-iters 1 --reps 1"
        demo_size="--width-mult 0.125 --low-data 0.03 --n_eval 16 --attack_iters 1"
    else
        step_size="--batch 256 --reps 5 --warmup 2"
        epoch_size="--width-mult 1 --batch 256 --warm-epochs 4 --reps 3"
        demo_size=""
    fi
    write_env_check
    step env 90 "$PY" "$WORK/env_check.py" "$DEVICE"
    # shellcheck disable=SC2086  # the size strings are word lists on purpose
    step step-fp32 60 "$PY" bench/search_step.py --device "$DEVICE" $step_size
    step step-bf16 60 "$PY" bench/search_step.py --device "$DEVICE" $step_size --amp bf16
    step step-bf16-cl 60 "$PY" bench/search_step.py --device "$DEVICE" $step_size --amp bf16 --channels-last
    step epoch-fp32 75 "$PY" bench/run_epoch.py --device "$DEVICE" $epoch_size
    step epoch-bf16 75 "$PY" bench/run_epoch.py --device "$DEVICE" $epoch_size --amp bf16
    step epoch-bf16-cl 75 "$PY" bench/run_epoch.py --device "$DEVICE" $epoch_size --amp bf16 --channels-last
    step demo-fp32 75 "$PY" scripts/demo.py --epochs 1 --log-dir "$WORK/runs-fp32" $demo_size
    step demo-bf16 75 "$PY" scripts/demo.py --epochs 1 --log-dir "$WORK/runs-bf16" --amp bf16 $demo_size
    echo "=== summary ($(($(date +%s) - START)) s of ${BUDGET}s)"
    printf '  %s\n' "${RESULTS[@]}"
}

main 2>&1 | tee -a "$LOG"
