#!/usr/bin/env bash
# One prepared GPU benchmark run (about 8 minutes on one H100/H200):
#   ResNet-18 and ResNet-50, 224 px, bf16, SimCLR and BYOL: ours vs the PyTorch reference
#   (channels_last + AMP bf16 + torch.compile; eager too for ResNet-18 SimCLR), plus a
#   large bf16 matmul for the card's rate; prints a short table.
#
#   bash benchmarks/gpu_suite.sh [OUTDIR]
#
# The GPU machine has jax (CUDA), flax, optax, orbax and torch but no package index:
# whatever else cxr_jax imports is installed from wheels carried in .whl/ (pip --no-index
# --no-deps --target), and only if missing. Put the wheels there beforehand with, on a
# machine with an index:  pip download --no-deps -d .whl grain ml-collections \
#   tensorflow-datasets array-record etils tqdm tensorboardX   (py3.12, manylinux x86_64)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu_suite}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
EXTRA="$PWD/.whl/site"
export PYTHONPATH="$PWD:$EXTRA${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # torch shares the card in the same process

missing=()
for mod in grain ml_collections tensorflow_datasets array_record etils tqdm tensorboardX \
           absl optax flax orbax.checkpoint; do
  $PY -c "import $mod" 2>/dev/null || missing+=("$mod")
done
if ((${#missing[@]})); then
  echo "installing from .whl/: ${missing[*]}"
  ls .whl/*.whl >/dev/null 2>&1 && $PY -m pip install --no-index --no-deps --quiet \
      --target "$EXTRA" .whl/*.whl || echo "WARNING: no wheels in .whl/ for ${missing[*]}"
fi
$PY - <<'PY' | tee "$OUT/env.txt"
import jax, torch
print('jax', jax.__version__, jax.devices()[0].device_kind, '| torch', torch.__version__,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee -a "$OUT/env.txt"

run() {  # name, timeout seconds, args...
  local name=$1 limit=$2; shift 2
  echo "== $name: python -m benchmarks.pretrain_step $*" | tee "$OUT/$name.log"
  timeout "$limit" $PY -m benchmarks.pretrain_step "$@" 2>&1 | grep -v -i warning >> "$OUT/$name.log"
  tail -n 8 "$OUT/$name.log"
}
common=(--res=224 --dtype=bfloat16 --vs=torch --torch_compile --scope=model --warmup=3)
run r18_simclr 150 --model=resnet18 --batch=256 --method=simclr --steps=20 "${common[@]}"
run r50_simclr 130 --model=resnet50 --batch=128 --method=simclr --steps=15 "${common[@]}" --no_torch_eager
run r18_byol   100 --model=resnet18 --batch=256 --method=byol   --steps=15 "${common[@]}" --no_torch_eager
run r50_byol   110 --model=resnet50 --batch=128 --method=byol   --steps=15 "${common[@]}" --no_torch_eager
run r50_simclr_full 60 --model=resnet50 --batch=128 --method=simclr --steps=10 --res=224 \
    --dtype=bfloat16 --scope=full --warmup=2

echo
echo "| run | ours views/s | torch views/s | ratio | ours % of bf16 matmul peak |"
echo "|---|---|---|---|---|"
for f in "$OUT"/r*.log; do
  n=$(basename "$f" .log)
  ours=$(awk '$1 ~ /^ours\// {print $2; exit}' "$f")
  torch=$(awk '$1 ~ /^torch_compile\// {print $2; exit}' "$f")
  ratio=$(awk '/^ratio ours\/torch_compile/ {print $NF; exit}' "$f")
  peak=$(awk '$1 ~ /^ours\// {print $6; exit}' "$f")
  echo "| $n | ${ours:-?} | ${torch:-?} | ${ratio:-?} | ${peak:-?} |"
done | tee "$OUT/table.md"
grep -h "matmul rate" "$OUT"/r*.log | head -1
