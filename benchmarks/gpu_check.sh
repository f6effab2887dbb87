#!/usr/bin/env bash
# GPU proof (issue 17): run every GPU path of gcomp for real and write the figures to $OUT.
#
#   bash benchmarks/gpu_check.sh                          # on the GPU machine: results in $OUT (~5-8 min)
#   bash benchmarks/gpu_check.sh --dry --out /tmp/gc      # on CPU, tiny sizes: checks the script (~40 s)
#   bash benchmarks/gpu_check.sh --ort-wheel-dir shared/ort   # also ONNX Runtime CUDA, from copied wheel parts
#   bash benchmarks/gpu_check.sh --help                    # every option (batches, iterations, phases, budget)
#
# Installs nothing from the network: the repository root is the `gcomp` package, so a symlink to it on
# PYTHONPATH makes `import gcomp` and `python -m gcomp` (the CLI) work with the packages the machine has
# (torch, numpy, onnx, onnxruntime, opencv, typer, rich, pytest). Each phase runs time-boxed in its own
# process; a failing phase is recorded in the JSON and the next one runs. The code: benchmarks/gpu/ (check.py,
# one module per phase), a source checkout's only: it is not in the wheel.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || PY=python
LINK_DIR="${TMPDIR:-/tmp}/gcomp-path-$(id -u)"
mkdir -p "$LINK_DIR"
ln -sfn "$ROOT" "$LINK_DIR/gcomp"
export PYTHONPATH="$LINK_DIR${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
if ! "$PY" -c "import gcomp, gcomp.cli.app" 2>/dev/null; then
    echo "error: gcomp does not import with $PY (missing packages?):" >&2
    "$PY" -c "import gcomp.cli.app" >&2
    exit 2
fi
# The whole run stays inside one device call (600 s at most): the script's own budget is 480 s.
exec timeout --signal=TERM --kill-after=10 "${GPU_CHECK_TIMEOUT:-585}" "$PY" "$ROOT/benchmarks/gpu/check.py" "$@"
