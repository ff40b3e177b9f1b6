"""Process-level setup, done once before JAX initialises a backend.

`setup()` (called first by launch.py, and by the benchmarks) does two things:

1. XLA flag defaults for the CPU backend, put into XLA_FLAGS before the backend starts
   (XLA reads the variable once, when the first backend is created; setting it later
   has no effect). Only flags measured to help are set (docs/benchmarks.md), and a flag
   the user already put in XLA_FLAGS always wins. The CPU flags are ignored by GPU/TPU
   compilations, so setting them on an accelerator host changes nothing there.
2. `jax.distributed.initialize` when this is one process of a multi-process run
   (coordinator flags given, or JAX's usual environment variables set), with the CPU
   collectives (gloo) that a multi-process CPU run needs for cross-process reductions.
"""
from __future__ import annotations

import logging
import os
import sys

# --xla_cpu_experimental_ynn_fusion_type=<empty>: convolutions through XLA's Eigen
# kernels instead of YNNPACK fusions. Measured on the 2-core dev machine with jax 0.10.2
# (docs/benchmarks.md): faster for ResNet training steps and less memory.
_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
_CPU_DEFAULTS = {_YNN_FLAG: ''}

_ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'


def _backend_initialised() -> bool:
  if 'jax' not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # before jax starts a backend
    return bool(getattr(xla_bridge, '_backends', {}))
  except Exception:  # private API moved: assume not, the flags are harmless either way
    return False


def _set_flag(name: str, value: str, override: bool = False):
  """Puts `name=value` into XLA_FLAGS unless the user set `name` (or override)."""
  flags = os.environ.get('XLA_FLAGS', '').split()
  present = [f for f in flags if f.split('=', 1)[0] == name]
  if present and not override:
    return
  flags = [f for f in flags if f.split('=', 1)[0] != name] + [f'{name}={value}']
  os.environ['XLA_FLAGS'] = ' '.join(flags)


def set_cpu_ynn_fusion(enabled: bool):
  """Chooses YNNPACK fusions on (XLA's own default) or off for the CPU backend.

  Must run before the backend starts; overrides XLA_FLAGS' value. For A/B benchmarks.
  """
  if enabled:
    flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
             if f.split('=', 1)[0] != _YNN_FLAG]
    # a sentinel entry keeps setup()'s default from switching them off again
    os.environ['XLA_FLAGS'] = ' '.join(flags)
    os.environ['CXR_JAX_CPU_YNN'] = '1'
  else:
    _set_flag(_YNN_FLAG, '', override=True)


def apply_xla_defaults():
  """Sets the CPU flag defaults in XLA_FLAGS (no-op where the user chose otherwise)."""
  if _backend_initialised():
    return  # too late to take effect; do not pretend otherwise
  if os.environ.get('CXR_JAX_CPU_YNN') == '1':
    return
  for name, value in _CPU_DEFAULTS.items():
    _set_flag(name, value)


def setup(coordinator_address: str | None = None, num_processes: int | None = None,
          process_id: int | None = None, local_device_ids=None) -> None:
  """Process setup: XLA flag defaults, then `jax.distributed` for multi-process runs.

  Args:
    coordinator_address: 'host:port' of process 0; None reads JAX_COORDINATOR_ADDRESS
      (or lets jax.distributed auto-detect a cluster: SLURM, TPU pods...) when a
      multi-process run is signalled by that variable.
    num_processes, process_id: this run's size and this process's rank (None: from
      the environment, e.g. JAX_NUM_PROCESSES / JAX_PROCESS_ID, or auto-detected).
    local_device_ids: devices this process drives (None: all visible).
  """
  apply_xla_defaults()
  if not (coordinator_address or os.environ.get(_ENV_COORDINATOR)):
    return
  if coordinator_address in (None, 'auto') and os.environ.get(_ENV_COORDINATOR) == 'auto':
    coordinator_address = None  # let jax.distributed detect the cluster (TPU, SLURM)
    os.environ.pop(_ENV_COORDINATOR)
  import jax  # before jax starts a backend
  if num_processes is None and os.environ.get('JAX_NUM_PROCESSES'):
    num_processes = int(os.environ['JAX_NUM_PROCESSES'])
  if process_id is None and os.environ.get('JAX_PROCESS_ID'):
    process_id = int(os.environ['JAX_PROCESS_ID'])
  # Cross-process collectives on the CPU backend need an implementation (without one,
  # a CPU computation spanning processes fails); gloo ships with jaxlib. GPU/TPU runs
  # use NCCL / ICI and ignore this option.
  try:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except Exception:  # option renamed in a later jax: the default may already be gloo
    pass
  jax.distributed.initialize(coordinator_address=coordinator_address or None,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)


# config.model.dtype='auto': bfloat16 compute where the accelerator has bf16 matrix units
# (on an H200 the R50 224 px step runs at 6,043 views/s in bf16, docs/scaling.md);
# float32 on CPU, where XLA's bf16 convolutions are emulated and no faster.
_BF16_BACKENDS = ('gpu', 'tpu')


def compute_dtype(name: str) -> str:
  """The compute dtype a config.model.dtype names: 'auto' resolves here, and only here,
  to 'bfloat16' on a GPU/TPU backend and 'float32' otherwise; other names pass through."""
  if name != 'auto':
    return name
  import jax  # platform.py sets XLA flags before jax starts: never at the top here
  backend = jax.default_backend()
  resolved = 'bfloat16' if backend in _BF16_BACKENDS else 'float32'
  if (backend, resolved) not in _LOGGED:  # once per process, in the run's log
    _LOGGED.add((backend, resolved))
    logging.getLogger('cxr_jax').info("config.model.dtype='auto': %s compute on the %s "
                                      'backend', resolved, backend)
  return resolved


_LOGGED: set = set()


def num_workers(worker_count: int, cores: int | None = None) -> int:
  """Grain worker processes for a config.worker_count: -1 means 'auto', one worker per
  core left after the training loop's own, at most 8 (docs/scaling.md: what one worker
  feeds at 224 px), and none on a host of 2 cores or fewer, where workers would only
  take cores from the step. Other values pass through."""
  if worker_count != -1:
    return worker_count
  if cores is None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return 0 if cores <= 2 else min(cores - 1, 8)
