"""Runs an experiment:

    python -m cxr_jax.cli.launch --config=CONFIG[:ARG] --workdir=DIR [--config.a.b=v ...]

(also `cxr-launch ...` once installed, and `python launch.py ...` from a checkout).
CONFIG is a config file (`configs/paper.py`) or an installed config by module name
(`configs.paper`, or `paper` for `configs.paper`), so an installed package runs without a
checkout: `cxr-launch --config=default --workdir=runs/demo`.

Re-running the same command resumes an interrupted run and skips finished jobs.
On several hosts, start one process per host with JAX's usual variables (or flags) and
this initialises `jax.distributed` before anything else touches the devices.

An error the user can fix (a bad config value or config argument, a dataset that is not
there or not prepared, prepared data built from other files, a workdir in use, a full
disk, a diverged run) is printed as one line `error: ...` and the exit code is 1;
`--verbose` prints the traceback before it.
"""
import importlib
import importlib.util
import logging
import os
import re
import sys
import traceback

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

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
_VERBOSE = flags.DEFINE_bool('verbose', False,
                             'Print the traceback of an error too (else its message alone).')
flags.mark_flags_as_required(['workdir'])


def _verbose(argv: list[str]) -> bool:
  """--verbose as given on the command line, for errors before absl parses the flags."""
  return any(a in ('--verbose', '--verbose=true', '--verbose=True') for a in argv[1:])


def _fail(message: str, verbose: bool):
  """Prints `error: message` (after the traceback being handled, when verbose) and
  exits with code 1."""
  if verbose:
    traceback.print_exc()
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


def load_config(argv: list[str]):
  """The config of `--config=FILE[:ARG]`, loaded once, and argv without that flag.

  The remaining `--config.x.y=v` overrides are left to ml_collections (a config-dict
  flag over this config); here an unknown key is named in full (ml_collections only says
  "'y'"), and shorthands for spec-valued fields expand to their fields:

    --config.curriculum.pacing=root            -> --config.curriculum.pacing.kind=root
    --config.pretrain.stages[1].strength=0.7   -> ...strength.kind=constant, ...strength.start=0.7
  """
  given = [a for a in argv[1:] if a.startswith('--config=')]
  if len(given) != 1:
    sys.exit('error: give the config once: --config=configs/X.py[:arg] (a file) or '
             '--config=X[:arg] (an installed config, configs.X)')
  name, _, arg = given[0].split('=', 1)[1].partition(':')
  module = config_module(name)
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ValueError as e:  # a config argument: the message names it and what it allows
    _fail(str(e), _verbose(argv))
  rest = [argv[0]]
  for a in argv[1:]:
    if a in given:
      continue
    rest += _expand(config, a) if a.startswith('--config.') else [a]
  return config, rest


def config_module(name: str):
  """The config module of `--config=NAME`: a file (`configs/paper.py`), else an importable
  module (`configs.paper`), else `configs.NAME` (`paper`: a config of the installed
  package). SystemExit naming what was tried when none is found."""
  if name.endswith('.py') or os.sep in name or os.path.isfile(name):
    if not os.path.isfile(name):
      sys.exit(f'error: --config={name}: no such config file')
    folder = os.path.dirname(os.path.abspath(name))
    if os.path.isfile(os.path.join(folder, '__init__.py')):
      # a config inside a package (the checkout's configs/) imports its siblings as
      # `configs.common`: the checkout's own, before any installed copy
      sys.path.insert(0, os.path.dirname(folder))
    spec = importlib.util.spec_from_file_location('_config_module', name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  tried = [name] if name.startswith('configs.') else [name, f'configs.{name}']
  for candidate in (tried if '.' in name else tried[::-1]):
    try:
      return importlib.import_module(candidate)
    except ModuleNotFoundError as e:
      if e.name is None or not candidate.startswith(e.name):
        raise  # the config itself imports something missing: not a wrong name
  sys.exit(f'error: --config={name}: no such config file, nor config module '
           f'({" or ".join(tried)})')


def _expand(config, arg: str) -> list[str]:
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
      float(value)
      is_number = True
    except ValueError:
      is_number = False
    if is_number and 'start' in node.keys():  # a schedule given as a constant
      return [f'--config.{key}.kind=constant', f'--config.{key}.start={value}']
    return [f'--config.{key}.kind={value}']
  return [arg]


def user_error(e: BaseException) -> str | None:
  """The one-line message of an error the user can fix, None for any other (a bug: its
  traceback is printed)."""
  # imported here as in main: cxr_jax loads after platform.setup sets the XLA flags
  from cxr_jax import configuration
  from cxr_jax.data import errors, identity, splits, validate  # after platform.setup
  from cxr_jax.train import workdir  # after platform.setup
  if isinstance(e, (workdir.RunError, configuration.ConfigError, identity.DataIdentityError,
                    validate.DataValidationError, splits.PatientOverlapError,
                    errors.UnreadableImageError)):
    return str(e)
  if isinstance(e, OSError) and workdir.no_space(e):
    return f'no space left on device ({e}); free some space and re-run the same command to resume'
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, its errors (a config value of the wrong type, a missing
  --workdir) in one line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}')


def use_compilation_cache(directory: str) -> str:
  """Turns on JAX's persistent compilation cache in `directory` ('' leaves it off) unless
  JAX_COMPILATION_CACHE_DIR is set (it wins: the tests point it at a temporary folder so
  they never write into the user's cache); returns the folder in use ('' if none).

  A resumed run, a repeated one and an ablation in another workdir with the same shapes
  reuse the compiled programs (keyed by program, compiler version and device), and so do
  the jobs of one run that compile the same program. Every program is cached: JAX's
  default keeps out those that compiled in under a second, which on a GPU is most of a
  run's small programs (initialisation, evaluation, probes)."""
  import jax  # after platform.setup: XLA flags are read when jax starts
  env = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if env or not directory:
    return env or ''
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_compilation_cache_max_size', 4 * 2**30)  # LRU-evicted beyond
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  if 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES' not in os.environ:
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


def main(argv):
  del argv
  from cxr_jax import platform  # before jax: it sets the XLA flags
  platform.setup(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  use_compilation_cache(_CACHE_DIR.value)
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax and TFDS are chatty below ERROR
  logging.getLogger('cxr_jax').setLevel(logging.INFO)
  from cxr_jax import experiment  # after platform.setup (imports jax)
  try:
    experiment.run(flags.FLAGS.config, _WORKDIR.value)
  except Exception as e:  # pylint: disable=broad-except
    why = user_error(e)
    if why is None:
      raise
    # the message says what happened and what to do: no traceback. Exit at once: after a
    # full disk the libraries' exit handlers (TensorBoard's last flush, Orbax's abandoned
    # writes) would print tracebacks of their own for the same cause
    if _VERBOSE.value:
      traceback.print_exc()
    print(f'error: {why}', file=sys.stderr, flush=True)
    logging.shutdown()
    sys.stdout.flush()
    os._exit(1)
  print(f'report: {os.path.join(_WORKDIR.value, "report.md")}')


def run(argv: list[str] | None = None):
  """The command: loads the config, defines the --config flag over it, runs `main`."""
  config, argv = load_config(list(sys.argv if argv is None else argv))
  # sys_argv: ml_collections reads the overrides from sys.argv by default, where
  # --config=FILE (a config file's flag) makes it wait for a value it never gets here
  config_flags.DEFINE_config_dict('config', config, 'The run\'s config (--config=FILE[:ARG]).',
                                  lock_config=True, sys_argv=argv)
  app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
