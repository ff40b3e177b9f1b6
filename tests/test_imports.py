"""The import graph of cxr_jax (every import statement, function-local ones included):
no circle, no import of a module in a higher layer (the layers of docs/architecture.md),
and function-local imports only of the optional or heavy modules listed here."""
import ast
import functools
import pathlib


PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'cxr_jax'

# docs/architecture.md's layers, top to bottom. A module belongs to the layer of its longest
# matching prefix; it may import its own layer (without a circle) and any layer below.
LAYERS = [
    # the user's commands (and the package's lazy `cxr_jax.load_model`; `python -m
    # cxr_jax.report`, the report command by its old name)
    ['cxr_jax', 'cxr_jax.cli', 'cxr_jax.report.__main__'],
    ['cxr_jax.trained'],                           # rebuilding a trained model
    ['cxr_jax.experiment'],                        # the plan
    ['cxr_jax.configuration', 'cxr_jax.pretraining', 'cxr_jax.finetuning',
     'cxr_jax.report'],
    ['cxr_jax.regimes'],                           # which stages each pretraining regime runs
    ['cxr_jax.attention_job'],                     # the Grad-CAM job of a fine-tuning cell
    ['cxr_jax.train'],                             # loop, state, inference, optim, sharding
    ['cxr_jax.ssl', 'cxr_jax.explain', 'cxr_jax.eval'],
    ['cxr_jax.models'],
    ['cxr_jax.data', 'cxr_jax.curriculum'],
    # leaves any layer may use: words, platform set-up, the workdir's guards and atomic
    # writes, weight and array files
    ['cxr_jax.vocab', 'cxr_jax.platform', 'cxr_jax.train.workdir', 'cxr_jax.files'],
]

# What may be imported inside a function, and why (the only reasons: an optional extra
# stays optional, or a heavy import stays out of `import cxr_jax` and of Grain workers).
LOCAL_OK = {
    'torch': 'optional: checkpoint conversion',
    'safetensors': 'optional: checkpoint conversion',
    'jax2onnx': "optional 'onnx' extra",
    'onnx': "optional 'onnx' extra",
    'onnxruntime': "optional 'onnx' extra",
    'umap': 'optional: the report UMAP figure',
    'pydicom': 'optional: only to read a DICOM file',
    'cv2': 'optional: host augmentation',
    'matplotlib': 'heavy: only where figures are drawn',
    'scipy': 'heavy: only for one statistic of the report',
    'tensorflow_datasets': 'heavy (seconds): only where a dataset is opened or prepared',
    'cxr_jax.data.builders': 'imports tensorflow_datasets (and registers the builders)',
    'cxr_jax.data.prepare': 'imports tensorflow_datasets',
    'tensorboardX': 'heavy: only where a metrics writer is made',
    'array_record': 'only where an image cache is written',
    'grain': 'host augmentation also runs in Grain workers, imported lazily there',
    'jax': "platform.py sets XLA flags before jax starts; pacing's sampler runs in Grain "
           'workers without jax',
    'importlib': "only to read the installed package's version",
    'cxr_jax.trained': '`import cxr_jax` stays light: cxr_jax.load_model imports it',
}

# Modules that may import project modules inside a function, and why.
LOCAL_PROJECT_OK = {
    'cxr_jax.cli.launch': 'jax may start only after platform.setup sets the XLA flags '
                          '(and jax.distributed): the modules that import it load after',
}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _modules() -> dict:
  return {_module_name(p): p for p in PACKAGE.rglob('*.py')}


def _imports(name: str, path: pathlib.Path, modules: dict):
  """(imported module, line, function-local, commented) of every import statement in the
  file; commented: a '#' on its lines or on the line above."""
  text = path.read_text()
  lines = text.splitlines()
  tree = ast.parse(text)
  top = {id(n) for n in tree.body}
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        pkg = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(pkg + ([node.module] if node.module else []))
      # `from package import submodule` imports the submodule
      targets = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base
                 for a in node.names]
    else:
      continue
    commented = any('#' in lines[i] for i in range(max(0, node.lineno - 2), node.end_lineno))
    for target in targets:
      yield target, node.lineno, id(node) not in top, commented


def _layer(name: str) -> int:
  best, level = -1, None
  for i, layer in enumerate(LAYERS):
    for prefix in layer:
      if (name == prefix or name.startswith(prefix + '.')) and len(prefix) > best:
        best, level = len(prefix), i
  return level


@functools.lru_cache(maxsize=None)
def _graph():
  modules = _modules()
  edges = {}
  for name, path in modules.items():
    for target, line, local, commented in _imports(name, path, modules):
      edges.setdefault(name, []).append((target, line, local, commented))
  return modules, edges


def test_every_module_has_a_layer():
  modules, _ = _graph()
  assert [m for m in modules if _layer(m) is None] == []


def test_function_local_imports_only_of_optional_or_heavy_modules_with_a_comment():
  _, edges = _graph()
  bad = [f'{src}:{line} imports {target} inside a function'
         for src, targets in edges.items() for target, line, local, _ in targets
         if local and not any(target == ok or target.startswith(ok + '.') for ok in LOCAL_OK)
         and not (src in LOCAL_PROJECT_OK and target.startswith('cxr_jax'))]
  assert bad == []
  silent = [f'{src}:{line} imports {target} inside a function without a comment saying why'
            for src, targets in edges.items() for target, line, local, commented in targets
            if local and not commented]
  assert silent == []


def test_no_import_goes_up_a_layer():
  modules, edges = _graph()
  bad = [f'{src}:{line} (layer {_layer(src)}) imports {target} (layer {_layer(target)})'
         for src, targets in edges.items() for target, line, _, _ in targets
         if target in modules and target != src and _layer(target) < _layer(src)
         and not (src == 'cxr_jax' and target == 'cxr_jax.trained')]
  assert bad == []


def test_no_import_circle():
  modules, edges = _graph()
  graph = {src: sorted({t for t, _, _, _ in targets if t in modules and t != src
                        # a package's __init__ re-exporting its submodules is not a cycle
                        and not t.startswith(src + '.')})
           for src, targets in edges.items()}
  # a submodule importing a name from its package's __init__ would be a circle, and is
  # one here: the package's edges are kept for everyone else
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = 'open'
    stack.append(node)
    for nxt in graph.get(node, ()):
      if state.get(nxt) == 'open':
        cycles.append(' -> '.join(stack[stack.index(nxt):] + [nxt]))
      elif nxt not in state:
        visit(nxt, stack)
    stack.pop()
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node, [])
  assert cycles == []


def test_the_old_circles_are_gone():
  """explain -> segment -> finetuning -> explain and resnet <-> densenet, by name."""
  _, edges = _graph()
  targets = lambda m: {t for t, *_ in edges.get(m, ())}
  assert not any(t.startswith('cxr_jax.explain') for t in targets('cxr_jax.finetuning')
                 if t != 'cxr_jax.explain')
  assert 'cxr_jax.models.densenet' not in targets('cxr_jax.models.resnet')
  assert 'cxr_jax.models.resnet' not in targets('cxr_jax.models.densenet')
  assert not any(t.startswith('cxr_jax.cli') or t == 'cxr_jax.finetuning'
                 for m in edges if m.startswith('cxr_jax.explain') for t in targets(m))


def test_the_commands_are_in_cli_and_nothing_below_imports_them():
  """Every module with a command line (`if __name__ == '__main__'`) is in cxr_jax/cli/
  (or is `python -m cxr_jax.report`'s shim), and no module outside cli/ imports cli/."""
  modules, edges = _graph()
  commands = [m for m, p in modules.items() if "__name__ == '__main__'" in p.read_text()]
  assert [m for m in commands if not m.startswith('cxr_jax.cli.')] == []
  shims = {'cxr_jax.report.__main__'}
  assert [f'{src} imports {t}' for src, targets in edges.items()
          if not src.startswith('cxr_jax.cli') and src not in shims
          for t, *_ in targets if t.startswith('cxr_jax.cli')] == []
