#!/usr/bin/env bash
# The GPU check: one call of at most 8 minutes on one H100/H200 that returns a table
# whatever happens (benchmarks/gpu_suite.py says what each part measures).
#
#   bash benchmarks/gpu_wheels.sh          # beforehand, on a machine with a package index
#   bash benchmarks/gpu_suite.sh [--small] [OUTDIR] [--budget=S ...]
#
# Rows: OUTDIR/rows.jsonl (each written the moment it is measured); table: OUTDIR/table.md;
# each part's stderr: OUTDIR/<part>.log. --small runs the same suite tiny, on the CPU.
# The GPU machine has no package index: the modules the image lacks are installed from the
# wheels in .whl/ (made by gpu_wheels.sh), only when an import is missing.
set -uo pipefail
STARTED=$(date +%s)
cd "$(dirname "$0")/.."
SMALL=()
if [[ "${1:-}" == "--small" ]]; then SMALL=(--small); shift; fi
OUT=${1:-${OUT:-/tmp/gpu_suite}}
shift || true  # the rest goes to benchmarks/gpu_suite.py (--budget=S, --parts=..., --cap=...)
mkdir -p "$OUT"
PY=${PYTHON:-python3}

if ! $PY -c "import grain, ml_collections, tensorflow_datasets, array_record, tensorboardX, \
    portpicker, tree, immutabledict, promise, simple_parsing, termcolor, toml, markdown, attr, \
    cloudpickle, importlib_resources, tensorflow_metadata, wrapt" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "# installing the missing modules from .whl/ into /tmp/site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl 2>&1 | grep -v -i warning
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "# WARNING: imports are missing and .whl/ holds no wheels (bash benchmarks/gpu_wheels.sh)"
  fi
fi
{ git rev-parse --short HEAD 2>/dev/null || echo "commit unknown"; \
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader 2>/dev/null; \
} | tee "$OUT/env.txt"
exec $PY -m benchmarks.gpu_suite "${SMALL[@]}" --out="$OUT" --started="$STARTED" "$@"
