#!/usr/bin/env bash
# Build the wheel, install it into a clean virtual environment, and run every command of the README from a
# scratch directory outside the checkout: `metaexp ...` lines of its bash blocks (train commands with
# debug=fast appended, so each takes seconds) and its python blocks. Omniglot comes from ../shared/data.
set -euo pipefail
PYTHON=${1:-python3.11}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A clean build says nothing: any setuptools warning (about package data, say) fails the check.
"$repo/.venv/bin/python" -m pip wheel --no-deps --no-build-isolation -w "$work/dist" "$repo" > "$work/build.log" 2>&1
if grep -i "warning" "$work/build.log"; then echo "wheel_check: the build printed warnings (above)"; exit 1; fi
"$PYTHON" -m venv "$work/venv"
wheel=$(ls "$work"/dist/metaexp-*.whl)
"$work/venv/bin/python" -m pip install -q -c "$repo/constraints.txt" "$wheel[rl]"  # rl: the HalfCheetah commands
export PATH="$work/venv/bin:$PATH"
mkdir -p "$work/scratch" "$work/data"
omniglot="$repo/../shared/data/omniglot"
if [ -d "$omniglot" ]; then ln -s "$(cd "$omniglot" && pwd)" "$work/data/omniglot"; fi
export METAEXP_DATA="$work/data"
cd "$work/scratch"

python - <<'PY'
import metaexp
assert "/venv/" in metaexp.__file__, f"metaexp imported from {metaexp.__file__}, not the wheel"
print(f"metaexp {metaexp.__version__} from {metaexp.__file__}")
PY
metaexp --version
metaexp train --cfg job > /dev/null
"$repo/.venv/bin/python" "$repo/ci/readme_blocks.py" "$repo/README.md" "$work/blocks"
status=0
for block in "$work"/blocks/*; do
  if grep -q omniglot "$block" && [ ! -e "$work/data/omniglot" ]; then
    echo "SKIPPED (no Omniglot at $omniglot): $(head -1 "$block")"
    continue
  fi
  echo "+ $(head -c 300 "$block")"
  case "$block" in
    *.py) python "$block" || status=1 ;;
    *.sh) bash -e "$block" || status=1 ;;
  esac
done
[ $status -eq 0 ] && echo "every README command ran from the wheel outside the checkout"
exit $status
