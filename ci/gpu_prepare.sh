#!/usr/bin/env bash
# `make gpu-check`: prepare, on this machine, everything one GPU call needs that the GPU machine lacks, in the
# git-ignored folder .gpu/, and print the call. The GPU machine has Python 3.12 with torch, torchvision, numpy,
# scipy, pyyaml, pillow, rich, matplotlib, pytest, joblib and cloudpickle, reaches no package index, and
# receives the working tree plus at most 8 carried paths (64 MiB in all); ../shared does not travel.
#   .gpu/wheels  cp312 wheels: hydra-core, omegaconf, antlr4 4.9.3 (built here: it ships as source only),
#                gymnasium and mujoco (HalfCheetah), gym and learn2learn 0.2.0 (rebuilt with Cython for 3.12: the
#                peer bench_engine.py compares against)
#   .gpu/data    the Omniglot archives and splits
#   .gpu/state   run directories an earlier call left unfinished (make gpu-import puts them there)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
py=.venv/bin/python
mkdir -p .gpu/wheels .gpu/data .gpu/state/runs
pin() { grep -i "^$1==" constraints.txt; }
platforms=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${p}_x86_64"); done
fetch() {
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .gpu/wheels "$@"
}
fetch "$(pin hydra-core)" "$(pin omegaconf)" "$(pin gymnasium)" "$(pin Farama-Notifications)" "$(pin mujoco)" \
    "$(pin mujoco-core)" "$(pin mujoco-studio)" "$(pin glfw)" "$(pin PyOpenGL)" "$(pin gym-notices)" "$(pin absl-py)" 2>&1 | grep -v "is ignored" || true
# Pure Python packages that ship as source only: their wheels are built here.
for name in antlr4-python3-runtime gym; do
    "$py" -m pip wheel -q --no-deps -w .gpu/wheels "$(pin $name)" 2>&1 | grep -v "is ignored" || true
done
if ! ls .gpu/wheels/learn2learn-0.2.0-cp312-*.whl > /dev/null 2>&1; then
    py312=""
    for candidate in ${PY312:-} python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2> /dev/null; then py312=$candidate; break; fi
    done
    [ -n "$py312" ] || { echo "gpu-check: learn2learn for the GPU is built with a Python 3.12: set PY312=/path/to/python3.12"; exit 2; }
    build=$(mktemp -d)
    "$py312" -m venv "$build/venv"
    "$build/venv/bin/pip" install -q "$(pin Cython)" numpy setuptools wheel 2>&1 | grep -v "is ignored" || true
    # Its setup.py cythonizes only when `build_ext` is on its own command line (its shipped C files do not
    # compile on Python >= 3.11).
    "$build/venv/bin/pip" download -q --no-deps --no-binary :all: -d "$build" learn2learn==0.2.0 2>&1 | grep -v "is ignored" || true
    tar -xzf "$build"/learn2learn-0.2.0.tar.gz -C "$build"
    (cd "$build/learn2learn-0.2.0" && "$build/venv/bin/python" setup.py -q build_ext bdist_wheel -d "$repo/.gpu/wheels" > /dev/null)
    rm -rf "$build"
fi
omniglot=../shared/data/omniglot
if [ -d "$omniglot" ]; then
    mkdir -p .gpu/data/omniglot
    cp -ru "$omniglot"/images_background.zip "$omniglot"/images_evaluation.zip "$omniglot"/splits .gpu/data/omniglot/
else
    echo "gpu-check: no $omniglot; the Omniglot presets cannot run there"
fi
size=$(du -sm .gpu | cut -f1)
tree=$(git ls-files -z | du -cm --files0-from=- | tail -1 | cut -f1)
echo "gpu-check: .gpu holds ${size} MiB, the tracked tree ${tree} MiB (64 MiB may travel)"
[ $((size + tree)) -lt 64 ] || { echo "gpu-check: over 64 MiB; remove finished runs from .gpu/state/runs"; exit 2; }
cat <<EOF

The call (device tool, run), with carry [".gpu"] and timeout_s 600:
    bash ci/gpu_call.sh 9
Then here: make gpu-import FILES="<files_at>/records.tar.gz <files_at>/state.tar.gz"
EOF
