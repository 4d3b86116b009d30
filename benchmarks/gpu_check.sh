#!/usr/bin/env bash
# GPU check of issue 14, part 6, as ONE command on a lent GPU machine (the device tool's `run`):
# RFNet training step (fp32 / bf16, eager / torch.compile) beside the public reference RFNet,
# the 15-subset evaluation time of a BraTS-size case (benchmarks/bench_gpu.py), then a torchrun
# DDP smoke of each stage (pretrain, train, posttrain) and `train evaluate` on a small phantom store.
# Everything it prints goes to $OUT/gpu_check.log; results to $OUT (5 files, no sub-folders).
#
# Prepare here, once (both folders are git-ignored and travel only through `carry`):
#   python benchmarks/fetch_reference.py --mirror <clone or mirror of github.com/dyh127/RFNet>
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     nibabel==5.4.2 hdf5plugin==7.1.0 dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 \
#     locket==1.0.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1 isal==1.9.1   # ~51 MiB; the rest is on the image
#   (SimpleITK, ~50 MiB, stays behind: only BraTS 2015 .mha files need it, and the phantoms are NIfTI.)
# The smoke runs `torchrun --nproc_per_node 1 benchmarks/ddp_smoke.py run --stage S ...`: under
# torchrun even one process takes the DDP path (nccl process group, DistributedDataParallel).
#
# The device call (one call, ~8 minutes of the 10-minute limit):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".reference"], timeout_s=570)
#
# CPU dry run here (tiny sizes, gloo, the venv's python, no install; OUT defaults to /tmp/gpu_check_out):
#   bash benchmarks/gpu_check.sh --cpu-dry-run
# GPU_CHECK_PARTS (default: env,install,bench,data,smoke,evaluate) picks parts;
# GPU_CHECK_BUDGET (seconds, default 540) bounds the whole run: each part gets what is left.
set -uo pipefail
export PYTHONUNBUFFERED=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
OUT="${OUT:-/tmp/gpu_check_out}"
WORK="${GPU_CHECK_WORK:-/tmp/gpu_check_work}"
PARTS="${GPU_CHECK_PARTS:-env,install,bench,data,smoke,evaluate}"
BUDGET="${GPU_CHECK_BUDGET:-540}"
START=$(date +%s)

if [ "$DRY" = 1 ]; then
    PY="${PYTHON:-$ROOT/.venv/bin/python}"
    DEVICE=cpu; BENCH_ARGS=(--device cpu --quick --budget-s 120)
    SHAPE=64,64,48; CASES=10; CROP=32; BASE=4; ITERS=2; WORKERS=2; LOADER_WORKERS=0
else
    PY="${PYTHON:-python3}"
    DEVICE=cuda; BENCH_ARGS=(--device cuda --budget-s 300 --compile-reserve-s 90)
    SHAPE=160,160,128; CASES=12; CROP=80; BASE=16; ITERS=4; WORKERS=8; LOADER_WORKERS=2
fi

mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
declare -a SUMMARY=()

left() { echo $((BUDGET - ($(date +%s) - START))); }
want() { [[ ",$PARTS," == *",$1,"* ]]; }

# part NAME CAP_SECONDS CMD... : runs CMD under a timeout of min(CAP, budget left - 5 s)
part() {
    local name=$1 cap=$2; shift 2
    local t; t=$(left); t=$((t - 5 < cap ? t - 5 : cap))
    if [ "$t" -lt 10 ]; then
        echo "== $name: skipped, $(left) s of the budget left"; SUMMARY+=("$name skipped (budget)")
        return 1
    fi
    echo "== $name (timeout ${t} s, $(left) s of the budget left)"
    local t0; t0=$(date +%s)
    timeout --kill-after=15 "$t" "$@"
    local rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - t0)) s"
    SUMMARY+=("$name rc=$rc $(($(date +%s) - t0))s")
    return "$rc"
}

echo "gpu_check: $(date -u +%FT%TZ) root $ROOT, OUT $OUT, work $WORK, dry run $DRY, parts $PARTS, budget ${BUDGET}s"

if want env; then
    {
        uname -a; nproc; free -g 2>/dev/null | head -2
        command -v nvidia-smi >/dev/null && nvidia-smi
        "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "available", torch.cuda.is_available(),
"device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")'
        git -C "$ROOT" log -1 --oneline 2>/dev/null; git -C "$ROOT" status --short 2>/dev/null | head -20
        cat .reference/rfnet/SOURCE.txt 2>/dev/null
    } 2>&1 | tee "$OUT/env.txt"
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if want install && [ "$DRY" = 0 ]; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        part install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site:$PYTHONPATH"
    else
        echo "== install: no .whl/ here (carry it: carry=[\".whl\", \".reference\"])"
    fi
fi
"$PY" -c 'import nibabel, hdf5plugin, h5py, dask, distributed, torch, aem_synth, train
print("imports ok: nibabel", nibabel.__version__, "hdf5plugin", hdf5plugin.version, "h5py",
      h5py.__version__, "dask", dask.__version__, "aem_synth", aem_synth.__version__)' \
    || echo "!! imports failed: the project cannot run here"

if want bench; then
    if [ -f .reference/rfnet/models.py ]; then
        part bench 330 "$PY" benchmarks/bench_gpu.py --out "$OUT" --reference .reference/rfnet \
            "${BENCH_ARGS[@]}"
    else
        echo "!! .reference/rfnet missing: run benchmarks/fetch_reference.py here and carry .reference"
        part bench 330 "$PY" benchmarks/bench_gpu.py --out "$OUT" --parts ours,eval,compile \
            "${BENCH_ARGS[@]}"
    fi
fi

SHARDS="$WORK/shards"
if want data; then
    rm -rf "$WORK"; mkdir -p "$WORK"
    part phantom 120 "$PY" -m aem_synth.cli phantom --out "$WORK/phantom" --cases "$CASES" \
        --shape "$SHAPE" --seed 0 \
    && part build 180 "$PY" -m aem_synth.cli build --in "$WORK/phantom" --out "$SHARDS" \
        --multiplier 2 --workers "$WORKERS" --seed 0 --no-progress
fi

CONFIG="$WORK/smoke.toml"
write_config() {
    local stages="" s
    for s in pretrain train posttrain; do
        stages+="
[stage.$s]
epochs = 2
iters_per_epoch = $ITERS
batch_size = 2
lr = 2e-4
warmup_steps = 1
checkpoint_every = $ITERS
validate_every = 2
kd_refresh_every = 1
init = \"$([ $s = pretrain ] && echo scratch || echo previous)\"
"
    done
    cat >"$CONFIG" <<EOF
# DDP smoke of benchmarks/gpu_check.sh: 2 epochs of $ITERS steps per stage, validation on 1 case.
name = "smoke"
shards = "$SHARDS"
runs_dir = "$WORK/runs"
seed = 0
device = "$DEVICE"
precision = "auto"
workers = $LOADER_WORKERS

[model]
backbone = "rfnet"
num_classes = 4
base_channels = $BASE

[data]
crop = [$CROP, $CROP, $CROP]
val_cases = 1

[loss]
class_weights = "rfnet"
$stages
EOF
}

if want smoke; then
    write_config
    for s in pretrain train posttrain; do
        part "smoke $s" 150 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
            benchmarks/ddp_smoke.py run --stage "$s" --config "$CONFIG" --no-progress \
            || break
        tail -n 2 "$WORK/runs/smoke/$s/metrics.csv" 2>/dev/null
    done
    "$PY" - "$WORK/runs/smoke" "$OUT/smoke_metrics.csv" <<'EOF'
import csv, sys
from pathlib import Path
run, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for stage in ("pretrain", "train", "posttrain"):
    f = run / stage / "metrics.csv"
    if f.is_file():
        rows += [{"stage": stage, **r} for r in csv.DictReader(f.open())]
    print(stage, "files:", sorted(p.name for p in (run / stage).glob("*")) if (run / stage).is_dir() else "none")
keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "stage", k != "step", k))
with out.open("w", newline="") as fh:
    w = csv.DictWriter(fh, keys)
    w.writeheader()
    w.writerows(rows)
print(f"{len(rows)} metric rows -> {out}")
EOF
fi

if want evaluate; then
    part evaluate 120 "$PY" -m train.cli evaluate --checkpoint "$WORK/runs/smoke/posttrain/best.pt" \
        --split test --shards "$SHARDS" --out "$WORK/eval" --device "$DEVICE" \
        $([ "$DEVICE" = cuda ] && echo --bf16)
fi

echo
echo "gpu_check finished in $(($(date +%s) - START)) s:"
printf '  %s\n' "${SUMMARY[@]}"
ls -la "$OUT"
FAILED=0
for line in "${SUMMARY[@]}"; do [[ "$line" == *" rc=0 "* ]] || FAILED=$((FAILED + 1)); done
echo "parts not passed: $FAILED"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
[ "$FAILED" = 0 ]
