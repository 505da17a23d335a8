#!/usr/bin/env bash
# The one command a short-lived GPU machine runs (`make gpu-check` prepares .gpu/ and prints it), from the
# repository root, within BUDGET minutes (default 9: one device command may run 10):
#   0. install the wheels the machine lacks from .gpu/wheels into a folder of their own (nothing is fetched);
#   1. the CUDA tests (tests/test_cuda.py, `-m cuda`): the call stops here if one fails;
#   2. the benchmarks on the card, each printing the card and the torch and CUDA versions;
#   3. `metaexp reproduce` over the presets of ci/gpu_presets.txt in order, resuming the runs an earlier call
#      left in .gpu/state/runs, with what is left of the budget;
#   4. what must come back packed into $OUT: records.tar.gz (the records that changed), state.tar.gz (the run
#      directories of presets not yet finished, to continue next time), gpu_call.log (everything printed).
# `make gpu-import FILE...` unpacks them here. GPU_CALL_DEVICE=cpu and GPU_CALL_* paths make the CPU dry run of
# tests/test_gpu_call.py.
set -uo pipefail
budget=${1:-9}
device=${GPU_CALL_DEVICE:-cuda}
wheels=${GPU_CALL_WHEELS:-.gpu/wheels}
state=${GPU_CALL_STATE:-.gpu/state}
records=${GPU_CALL_RECORDS:-results/records}
presets=${GPU_CALL_PRESETS:-ci/gpu_presets.txt}
quick=${GPU_CALL_QUICK:-}  # the dry run's tiny settings: `--set ... --eval-set ...` for reproduce
out=${OUT:?OUT must name the folder whose files come back}
python=${GPU_CALL_PYTHON:-python3}
started=$(date +%s)
left() { echo $((budget * 60 - ($(date +%s) - started))); }
mkdir -p "$out" "$state/runs" "$records"
exec > >(tee -a "$out/gpu_call.log") 2>&1

echo "== 0. install from $wheels"
site=$(mktemp -d)/site
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl || exit 3
echo "installed: $(cd "$site" && ls -d ./*.dist-info | sed 's|^\./||' | tr '\n' ' ')"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 METAEXP_DATA=${METAEXP_DATA:-$PWD/.gpu/data}
"$python" - <<'PY'
import subprocess, torch
from metaexp.version import __version__
card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"card: {card}; torch {torch.__version__}, CUDA {torch.version.cuda}; metaexp {__version__} at {commit or 'no git'}")
PY

echo "== 1. CUDA tests"
timeout $(( $(left) / 4 )) "$python" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
status=$?
if [ $status -ne 0 ] && [ $status -ne 5 ]; then echo "== the CUDA tests failed ($status): nothing else runs"; exit 1; fi

echo "== 2. benchmarks on $device"
# A sixth of what is left per benchmark, and never under two minutes (a loaded machine starts Python slowly).
bench() { timeout $(( $(left) / 6 > 120 ? $(left) / 6 : 120 )) "$python" "$@" || echo "== $1 did not finish ($?)"; }
if [ -n "$quick" ]; then  # the dry run: metaexp's engine measured once, in one process
    bench benchmarks/bench_engine.py --one metaexp a --device "$device" --seconds 0.5
else
    bench benchmarks/bench_engine.py --device "$device" --configs a --seconds 10
    [ "$device" = cuda ] && bench benchmarks/bench_engine.py --device cuda --cuda-graph --configs a b c --seconds 10
    bench benchmarks/bench_metanet.py --device "$device" --seconds 3
    bench benchmarks/bench_rl.py --device "$device" --iterations 2
fi

echo "== 3. reproduce within $(( $(left) / 60 )) minutes"
snapshot() { (cd "$records" && find . -type f -newer "$1" 2>/dev/null | cut -d/ -f2 | sort -u); }
marker=$(mktemp); touch "$marker"
minutes=$("$python" -c "print(max(($(left) - 90) / 60, 0.1))")  # 90 s kept for packing
list=$(grep -v '^\s*#' "$presets" | tr '\n' ' ')
# shellcheck disable=SC2086  # the preset names and the dry run's settings are words
"$python" -m metaexp reproduce $list --device "$device" --minutes "$minutes" --runs "$state/runs" \
    --records "$records" --page "$state/results.md" $quick
echo "== reproduce exited $?"

echo "== 4. pack into $out"
changed=$(snapshot "$marker")
if [ -n "$changed" ]; then
    # shellcheck disable=SC2086
    tar -czf "$out/records.tar.gz" -C "$records" $changed && echo "records: $changed"
fi
unfinished=$("$python" - "$state/runs" <<'PY'
import json, sys
from pathlib import Path
for run in sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir() and not p.name.startswith(".")):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").is_file() else []
    done = any(p.name.startswith("eval-") for p in run.iterdir())  # evaluated: its record holds what it made
    if rows and not done:
        print(run.name)
PY
)
if [ -n "$unfinished" ]; then
    # shellcheck disable=SC2086
    tar -czf "$out/state.tar.gz" -C "$state/runs" $unfinished && echo "state: $unfinished"
fi
ls -la "$out"
echo "== done in $(( $(date +%s) - started )) s"
