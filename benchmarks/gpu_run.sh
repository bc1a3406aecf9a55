#!/usr/bin/env bash
# The GPU benchmark as one prepared run (benchmarks/gpu.py), from the repository root:
#
#   bash benchmarks/gpu_run.sh            # on the GPU machine: ViT-B/16, 224 px, 3,000 calibration images
#   bash benchmarks/gpu_run.sh --quick    # a dry run anywhere: the tiny model, same code path
#
# 1. installs the wheels in .whl/ (rba's dependencies that the GPU machine's Python 3.12 image lacks: pydantic
#    and its parts, optuna and its parts; never ray) into /tmp/site, and uses rba from this working tree;
# 2. prints nvidia-smi;
# 3. runs gpu.py on cuda (on the cpu, in quick mode, when torch sees no GPU: it says so), everything logged to
#    $OUT/gpu.log, every number in $OUT/gpu.json (rewritten after each part, so a stopped run keeps what it
#    finished), under a hard limit of GPU_LIMIT_S seconds (default 400) and gpu.py's own --time-limit (parts
#    not started by then are skipped). Extra arguments go to gpu.py.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }
say "# gpu_run.sh: $(date -u +%FT%TZ), $(python3 --version 2>&1), load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"

# -- 1. wheels ----------------------------------------------------------------------------------------------
py=$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
if ! ls .whl/*.whl >/dev/null 2>&1; then
    say "# no wheels in .whl/ (run with carry [\".whl\"]): using the installed packages"
    export PYTHONPATH="$PWD"
elif [ "$py" = "312" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG" \
        || { say "# wheel install failed"; exit 3; }
    export PYTHONPATH="/tmp/site:$PWD"
    say "# installed into /tmp/site: $(cd .whl && ls *.whl | tr '\n' ' ')"
else  # the wheels are for CPython 3.12: elsewhere only check that pip accepts them, and use what is installed
    python3 -m pip install -q --dry-run --no-index --no-deps --no-compile --target /tmp/site-dry-run \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --only-binary=:all: .whl/*.whl 2>&1 | tee -a "$LOG" \
        || { say "# pip rejects the wheels for CPython 3.12"; exit 3; }
    say "# python $py is not 3.12: pip accepts the wheels for CPython 3.12 (dry run); using the installed packages"
    export PYTHONPATH="$PWD"
fi

# -- 2. the card --------------------------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi 2>&1 | tee -a "$LOG"
else
    say "# no nvidia-smi on this machine"
fi

# -- 3. the benchmark ---------------------------------------------------------------------------------------
args=(--device cuda)
if ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>>"$LOG"; then
    say "# torch sees no CUDA GPU: running on the cpu with the tiny model (--quick) instead"
    args=(--device cpu --quick)
fi
say "# python3 benchmarks/gpu.py ${args[*]} --time-limit ${GPU_SOFT_S:-240} --json $OUT/gpu.json $*"
limit=(timeout --kill-after=15 "${GPU_LIMIT_S:-400}")
command -v timeout >/dev/null 2>&1 || { say "# no timeout command: gpu.py's --time-limit only"; limit=(); }
PYTHONUNBUFFERED=1 "${limit[@]}" \
    python3 benchmarks/gpu.py "${args[@]}" --time-limit "${GPU_SOFT_S:-240}" --json "$OUT/gpu.json" "$@" 2>&1 \
    | tee -a "$LOG"
rc=$?
[ "$rc" = 124 ] && say "# stopped at the hard limit of ${GPU_LIMIT_S:-400} s: $OUT/gpu.json holds the card and the parts finished"
say "# gpu_run.sh: exit $rc, $(date -u +%FT%TZ)"
exit "$rc"
