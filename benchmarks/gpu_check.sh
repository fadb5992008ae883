#!/usr/bin/env bash
# The GPU check: everything minicnn promises on CuPy, in one run of under 10 minutes.
#
#   benchmarks/gpu_check.sh --stage /work/shared/datasets/cifar10   # once: copy the data in
#   benchmarks/gpu_check.sh                 # on a machine with a GPU, CuPy (and torch)
#   benchmarks/gpu_check.sh --cpu           # dry run on a CPU: strict stand-in, tiny data
#
# Steps, each time-boxed (`timeout`), logged to $OUT/<step>.log, run even when an earlier one
# failed; a summary at the end (also $OUT/summary.txt):
#   env     versions, GPU, `minicnn info`
#   data    CIFAR-10 built from the JPEG copy in $DATA (build_cifar10.py --folder-only),
#           once; later runs find $DATA/cifar10/cifar-10-batches-py and skip it
#   tests   the cupy-marked tests on real CuPy (--cpu: on the strict CPU stand-in)
#   parity  benchmarks/gpu_parity.py: NumPy and CuPy losses agree over 10 steps of each
#           zoo model, then ms/step against PyTorch+cuDNN on the same GPU if torch is there
#   models  benchmarks/models.py --backend cupy --batch 128 (ms per training step)
#   profile benchmarks/gpu_profile.py: host vs device ms per step, launches, per layer type
#           (is the step still launch-bound? issue 24)
#   train   examples/train_cifar.py with its GPU preset (airbench94's recipe, presets.py) on
#           $DATA, once per seed (--seeds N, default 3; seeds 0..N-1): each run prints
#           "training time ..." (airbench's count, the warm-up reported apart) and
#           "test accuracy: ... (NmNs of training)"; the summary gives their mean and spread
#   precbench  benchmarks/precision_step.py: the preset's step and each of its convolutions
#           in fp32, tf32, bf16 and fp16 (device ms; issue 25)
#   precision  the same preset, seed 0, with --precision tf32, bf16 and fp16 (issue 25; GPU
#           only)
#
# The data travels with the working tree: $DATA (default .gpu_data/, git-ignored) holds
# cifar10_jpeg.bin, cifar10_jpeg_index.npz and build_cifar10.py (needs numpy + Pillow).
# Options: --data DIR, --out DIR (default runs/gpu_check/<UTC time>), --epochs N (train
# step; default: the preset's), --seeds N (train step; default 3, --cpu: 1),
# --skip STEP[,STEP...]. Exit status 1 when a step failed.
# Time boxes (seconds) can be changed by environment: T_DATA T_TESTS T_PARITY T_MODELS T_TRAIN
# T_PROFILE T_PRECBENCH T_PRECISION.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
DATA=.gpu_data
OUT=""
EPOCHS=""
SEEDS=""
SKIP=""
STAGE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --data) DATA="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --epochs) EPOCHS="$2"; shift ;;
        --seeds) SEEDS="$2"; shift ;;
        --skip) SKIP="$2"; shift ;;
        --stage) STAGE="$2"; shift ;;
        -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ -n "$STAGE" ]; then  # copy the three data files into $DATA, then stop
    mkdir -p "$DATA"
    for f in cifar10_jpeg.bin cifar10_jpeg_index.npz build_cifar10.py; do
        cp "$STAGE/$f" "$DATA/$f" || { echo "gpu_check: $STAGE/$f missing" >&2; exit 1; }
    done
    echo "staged CIFAR-10 (JPEG copy + builder) in $DATA"
    # The test suite's pure-Python dependency, for a GPU machine without it (best effort:
    # needs the network here; the check installs it from $DATA/wheels when it is missing).
    ${PYTHON:-python} -m pip download --quiet --no-deps --only-binary=:all: --platform any \
        --implementation py --python-version 3.10 -d "$DATA/wheels" \
        hypothesis attrs sortedcontainers \
        && echo "staged wheels in $DATA/wheels: $(ls "$DATA/wheels" | tr '\n' ' ')" \
        || echo "gpu_check: could not download test wheels (no network?); skipped"
    exit 0
fi

PY=${PYTHON:-python}
OUT=${OUT:-runs/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
T_DATA=${T_DATA:-150}
T_TESTS=${T_TESTS:-120}
T_PARITY=${T_PARITY:-90}
T_MODELS=${T_MODELS:-90}
T_TRAIN=${T_TRAIN:-300}
T_PROFILE=${T_PROFILE:-120}
T_PRECBENCH=${T_PRECBENCH:-90}
T_PRECISION=${T_PRECISION:-300}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
SUMMARY=()
FAILS=0

# run NAME SECONDS CMD...: time-boxed, logged, never stops the script.
run() {
    local name="$1" limit="$2"; shift 2
    if [[ ",$SKIP," == *",$name,"* ]]; then
        SUMMARY+=("$(printf '%-7s %-8s %s' "$name" skipped "--skip")")
        return 0
    fi
    echo "== $name (at most ${limit}s): $*"
    local t0=$SECONDS rc
    timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local status=ok
    [ $rc -ne 0 ] && status="FAIL($rc)" && FAILS=$((FAILS + 1))
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMEOUT"
    tail -n 4 "$OUT/$name.log" | sed 's/^/   /'
    SUMMARY+=("$(printf '%-7s %-8s %4ss  %s' "$name" "$status" $((SECONDS - t0)) \
        "$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-100)")")
    return 0
}

START=$SECONDS
{
    # A device copy of the tree may carry no .git or a stale one: name the code by content.
    echo "mode $MODE, $(date -u), minicnn/*.py sha1 $(find minicnn -name '*.py' | LC_ALL=C sort \
        | xargs cat | sha1sum | cut -c1-12)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
    $PY -c "import sys, numpy; print('python', sys.version.split()[0], 'numpy', numpy.__version__)"
    $PY -c "import cupy; print('cupy', cupy.__version__)" 2>&1 | tail -1
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
        2>&1 | tail -1
    $PY -m minicnn info 2>&1
} >"$OUT/env.log" 2>&1
cat "$OUT/env.log"

if [ "$MODE" = cpu ]; then
    # The same steps on a CPU: CuPy is the strict stand-in, the data tiny and synthetic.
    run tests "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider -m cupy --strict-device
    run parity "$T_PARITY" "$PY" benchmarks/gpu_parity.py --strict-stand-in \
        --models simple_cnn resnet
    run models "$T_MODELS" "$PY" benchmarks/models.py --backend numpy --batch 8 \
        --models 2conv --repeats 1 --no-torch --out "$OUT/models_cpu"
    run profile "$T_PROFILE" "$PY" benchmarks/gpu_profile.py --strict-stand-in --batch 4 \
        --repeats 2 --models 2conv
    run precbench "$T_PRECBENCH" "$PY" benchmarks/precision_step.py --strict-stand-in \
        --batch 4 --repeats 1
    run train "$T_TRAIN" bash -c "for seed in \$(seq 0 $((${SEEDS:-1} - 1))); do \
echo \"== seed \$seed\"; \"$PY\" -c \"import sys; from tests import strict_device; strict_device.install(); \
from minicnn.cli import run_example; sys.exit(run_example('cifar10', ['--smoke', '--backend', \
'cupy', '--preset', 'gpu', '--seed', '\$seed', '--out', '$OUT/train_seed\$seed', \
'--no-plots']))\" || exit 1; done"
else
    if [ -d "$DATA/cifar10/cifar-10-batches-py" ]; then
        SUMMARY+=("$(printf '%-7s %-8s %s' data ok "found $DATA/cifar10/cifar-10-batches-py")")
    elif [ -f "$DATA/cifar10_jpeg.bin" ] && [ -f "$DATA/build_cifar10.py" ]; then
        run data "$T_DATA" "$PY" "$DATA/build_cifar10.py" "$DATA/cifar10" --folder-only
    else
        SUMMARY+=("$(printf '%-7s %-8s %s' data MISSING \
            "no $DATA/cifar10_jpeg.bin: run with --stage <folder of the shared copy>")")
        FAILS=$((FAILS + 1))
    fi
    if ! "$PY" -c "import hypothesis" 2>/dev/null && ls "$DATA"/wheels/*.whl >/dev/null 2>&1
    then
        run deps 90 "$PY" -m pip install --no-index --find-links "$DATA/wheels" hypothesis
    fi
    run tests "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider -m cupy \
        --continue-on-collection-errors
    run parity "$T_PARITY" "$PY" benchmarks/gpu_parity.py --torch-speed
    run models "$T_MODELS" "$PY" benchmarks/models.py --backend cupy --batch 128 \
        --out "$OUT/models_cupy"
    run profile "$T_PROFILE" "$PY" benchmarks/gpu_profile.py --batch 128
    run precbench "$T_PRECBENCH" "$PY" benchmarks/precision_step.py --batch 1024 --repeats 10
    # One run per seed (never the best one alone: the summary gives mean and spread).
    run train "$T_TRAIN" bash -c "for seed in \$(seq 0 $((${SEEDS:-3} - 1))); do \
echo \"== seed \$seed\"; \"$PY\" examples/train_cifar.py --backend cupy --preset gpu \
--data \"$DATA\" --seed \$seed --out \"$OUT/train_seed\$seed\" ${EPOCHS:+--epochs $EPOCHS} \
|| exit 1; done"
    run precision "$T_PRECISION" bash -c "for p in tf32 bf16 fp16; do echo \"== precision \$p\"; \
\"$PY\" examples/train_cifar.py --backend cupy --preset gpu --data \"$DATA\" --seed 0 \
--precision \$p --out \"$OUT/train_\$p\" ${EPOCHS:+--epochs $EPOCHS} || exit 1; done"
fi

{
    echo
    echo "== gpu_check summary ($MODE; logs in $OUT; $((SECONDS - START))s in all)"
    for line in "${SUMMARY[@]}"; do echo "$line"; done
    if [ -f "$OUT/parity.log" ]; then
        echo "-- parity and speed"
        grep -E "^[a-z_0-9]+ +[0-9]+ .*(ok|MISMATCH)$|FAILED|^parity:|ratio|^(2conv|vgg12|resnet) " \
            "$OUT/parity.log"
    fi
    if [ -f "$OUT/models.log" ]; then
        echo "-- benchmarks/models.py"
        grep -E "^(model|2conv|vgg12|resnet) " "$OUT/models.log"
    fi
    if [ -f "$OUT/profile.log" ]; then
        echo "-- benchmarks/gpu_profile.py (host vs device ms per step)"
        grep -E "^(model|2conv|vgg12|resnet) " "$OUT/profile.log"
    fi
    if [ -f "$OUT/precbench.log" ]; then
        echo "-- benchmarks/precision_step.py (the preset's step and convolutions per precision)"
        grep -vE "^\s*$|Warning|^  " "$OUT/precbench.log"
    fi
    if [ -f "$OUT/precision.log" ]; then
        echo "-- train_cifar per precision (seed 0)"
        grep -E "^== precision|^training time|^test accuracy" "$OUT/precision.log"
    fi
    if [ -f "$OUT/train.log" ]; then
        echo "-- train_cifar (one run per seed)"
        grep -E "^== seed|^warm-up|^training time|^test accuracy" "$OUT/train.log"
        grep -E "^epoch " "$OUT/train.log" | tail -n 1
        # mean and spread (sample standard deviation) of the seeds' accuracy and time
        grep -E "^test accuracy" "$OUT/train.log" | sed -E \
            's/^test accuracy: ([0-9.]+)%.*\(([0-9]+)m([0-9]+)s of training\)$/\1 \2 \3/' \
            | awk '{a[NR] = $1; t[NR] = 60 * $2 + $3} END { if (NR == 0) exit;
                for (i = 1; i <= NR; i++) { sa += a[i]; st += t[i] } ma = sa / NR; mt = st / NR;
                for (i = 1; i <= NR; i++) { va += (a[i] - ma) ^ 2; vt += (t[i] - mt) ^ 2 }
                sd = NR > 1 ? sqrt(va / (NR - 1)) : 0; sdt = NR > 1 ? sqrt(vt / (NR - 1)) : 0;
                printf "test accuracy over %d seed(s): mean %.2f%% (sd %.2f), training time " \
                       "mean %.1fs (sd %.1f)\n", NR, ma, sd, mt, sdt }'
    fi
    echo "$FAILS step(s) failed"
} | tee "$OUT/summary.txt"
exit $((FAILS > 0))
