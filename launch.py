"""Runs an experiment: python launch.py --config=configs/X.py --workdir=DIR [--config.a.b=v ...]

Re-running the same command resumes an interrupted run and skips finished jobs.
On several hosts, start one process per host with JAX's usual variables (or flags) and
this initialises `jax.distributed` before anything else touches the devices.
"""
import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the report go.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, for multi-process runs.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index in a multi-process run.')
_CACHE_DIR = flags.DEFINE_string(
    'compilation_cache_dir',
    os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
                 'cxr_jax', 'jax'),
    "JAX's persistent compilation cache, shared by all runs of this user ('' turns it "
    'off; JAX_COMPILATION_CACHE_DIR, when set, wins).')
flags.mark_flags_as_required(['config', 'workdir'])


def _check_overrides(argv):
  """Names the bad key of an unknown --config.x.y override (ml_collections only says "'y'"),
  and expands shorthands for spec-valued fields, in place:

    --config.curriculum.pacing=root            -> --config.curriculum.pacing.kind=root
    --config.pretrain.stages[1].strength=0.7   -> ...strength.kind=constant, ...strength.start=0.7
  """
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if path is None:
    return
  spec = path.split(':', 1)
  import importlib.util
  loader = importlib.util.spec_from_file_location('_config_module', spec[0])
  if loader is None:
    return
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  config = module.get_config(spec[1]) if len(spec) > 1 else module.get_config()
  for arg in list(argv):
    if not arg.startswith('--config.'):
      continue
    key = arg[len('--config.'):].split('=', 1)[0]
    node, walked = config, 'config'
    for part in re.findall(r'[^.\[\]]+|\[\d+\]', key):
      if part.startswith('['):
        idx = int(part[1:-1])
        if not isinstance(node, (list, tuple)) or idx >= len(node):
          sys.exit(f'error: {arg}: {walked} has no entry {part}')
        node, walked = node[idx], walked + part
      else:
        if not hasattr(node, 'keys') or part not in node.keys():
          known = sorted(node.keys()) if hasattr(node, 'keys') else []
          sys.exit(f'error: {arg}: unknown config key {walked}.{part}; {walked} has {known}')
        node, walked = node[part], f'{walked}.{part}'
    if '=' in arg and hasattr(node, 'keys') and 'kind' in node.keys():
      value = arg.split('=', 1)[1]
      try:
        number = float(value)
      except ValueError:
        number = None
      if number is not None and 'start' in node.keys():  # a schedule given as a constant
        expanded = [f'--config.{key}.kind=constant', f'--config.{key}.start={value}']
      else:
        expanded = [f'--config.{key}.kind={value}']
      i = argv.index(arg)
      argv[i:i + 1] = expanded


def main(argv):
  del argv
  from cxr_jax import platform
  platform.setup(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR') and _CACHE_DIR.value:
    # a resumed run, a repeated one and an ablation in another workdir with the same
    # shapes reuse the compiled steps (keyed by program, compiler version and device)
    jax.config.update('jax_compilation_cache_dir', _CACHE_DIR.value)
    jax.config.update('jax_compilation_cache_max_size', 4 * 2**30)  # LRU-evicted beyond
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax and TFDS are chatty below ERROR
  logging.getLogger('cxr_jax').setLevel(logging.INFO)
  from cxr_jax import experiment
  experiment.run(_CONFIG.value, _WORKDIR.value)
  print(f'report: {os.path.join(_WORKDIR.value, "report.md")}')


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  _check_overrides(sys.argv)
  app.run(main)
