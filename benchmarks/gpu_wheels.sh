#!/usr/bin/env bash
# Downloads into .whl/ exactly the wheels that the GPU suite (benchmarks/gpu_suite.sh)
# needs on a GPU image that has jax (CUDA), jaxlib, flax, optax, orbax-checkpoint, etils,
# torch, torchvision, numpy, scipy, scikit-learn, matplotlib, tqdm, protobuf and absl but
# no package index: Python 3.12, manylinux x86-64. The one source-only package (promise)
# is built into a wheel here. Then checks the set against the import list.
#
#   bash benchmarks/gpu_wheels.sh          # on a machine with a package index
#
# The list: what `import cxr_jax.experiment, grain, tensorflow_datasets` and the
# benchmarks import (at import and while preparing a TFDS dataset, training and
# checkpointing), less what the image has, found by reading each wheel's Requires-Dist.
# Versions are the ones this project is tested with (pip list of the dev environment).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl
mkdir -p "$DEST"

# distribution==version  (the module it provides, for the check below)
WHEELS=(
  grain==0.2.18                    # grain
  array_record==0.8.6              # array_record (manylinux, cp312)
  tensorflow-datasets==4.9.10      # tensorflow_datasets
  ml_collections==1.1.0            # ml_collections
  tensorboardX==2.6.5              # tensorboardX
  portpicker==1.6.0                # portpicker (grain imports it)
  dm-tree==0.1.10                  # tree (tfds; manylinux, cp312)
  immutabledict==4.3.1             # immutabledict (tfds)
  simple-parsing==0.1.9            # simple_parsing (tfds)
  docstring_parser==0.18.0         # docstring_parser (simple_parsing)
  tensorflow-metadata==1.21.0      # tensorflow_metadata (tfds)
  googleapis-common-protos==1.76.0 # google.api protos (tensorflow_metadata)
  termcolor==3.3.0                 # termcolor (tfds)
  toml==0.10.2                     # toml (tfds)
  importlib_resources==7.1.0       # importlib_resources (tfds, cxr_jax)
  wrapt==2.1.2                     # wrapt (tfds; manylinux, cp312)
  markdown==3.11.3                 # markdown (cxr_jax.report)
  attrs==26.1.0                    # attr, attrs (dm-tree)
  cloudpickle==3.1.3               # cloudpickle (grain)
)
# Not carried, though tfds lists them: psutil, pyarrow (~40 MB), requests: nothing the
# suite runs imports them (checked by listing sys.modules after a tiny train_throughput run).
SOURCE_ONLY=(promise==2.3)         # promise (tfds): an sdist only, built here

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64 --platform any)
rm -f "$DEST"/*.whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}" \
    -d "$DEST" "${WHEELS[@]}"
$PY -m pip wheel -q --no-deps -w "$DEST" "${SOURCE_ONLY[@]}"

# one version of each distribution, and every module the suite imports is in a wheel
$PY - "$DEST" <<'PY'
import collections, pathlib, re, sys, zipfile
dest = pathlib.Path(sys.argv[1])
wheels = sorted(dest.glob('*.whl'))
names = collections.Counter(re.sub(r'[-_.]+', '-', w.name.split('-')[0]).lower() for w in wheels)
twice = [n for n, k in names.items() if k > 1]
if twice:
  sys.exit(f'gpu_wheels: more than one version of {twice} in {dest}/')
needed = ['grain', 'array_record', 'tensorflow_datasets', 'ml_collections', 'tensorboardX',
          'portpicker', 'tree', 'immutabledict', 'simple_parsing', 'docstring_parser',
          'tensorflow_metadata', 'google/api', 'termcolor', 'toml', 'importlib_resources',
          'wrapt', 'markdown', 'promise', 'attr', 'attrs', 'cloudpickle']
provided = set()
for w in wheels:
  with zipfile.ZipFile(w) as z:
    for name in z.namelist():
      parts = name.split('/')
      provided.add(parts[0].removesuffix('.py'))
      if len(parts) > 2:
        provided.add('/'.join(parts[:2]))
      if not w.name.endswith(('-none-any.whl',)) and not re.search(r'cp312|abi3', w.name):
        sys.exit(f'gpu_wheels: {w.name} is not for CPython 3.12')
missing = [m for m in needed if m not in provided]
if missing:
  sys.exit(f'gpu_wheels: no wheel in {dest}/ provides {missing}')
size = sum(w.stat().st_size for w in wheels)
print(f'{len(wheels)} wheels in {dest}/, {size / 2**20:.1f} MiB; every module of the import '
      f'list is provided: {", ".join(needed)}')
if size > 40 * 2**20:
  sys.exit('gpu_wheels: more than 40 MiB: the working tree that travels to the GPU is capped')
PY
