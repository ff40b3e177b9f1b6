"""Export a fine-tuned classifier of a workdir as a self-contained model folder.

    python -m cxr_jax.export --workdir=W [--job=finetune/curricular/1/seed0] --out=DIR [--onnx]

DIR gets `weights.msgpack`, `model.json` (architecture, input sizes, channels, class names,
preprocessing, provenance: the run's config, its sha256, the cxr_jax version and git
commit), `README.md` (the model card: training data, label fraction, regime, seed, test
metrics with patient-bootstrap 95% CIs, intended use) and, with --onnx, `model.onnx`.
Load it with `cxr_jax.load_model(DIR)`.

The default job (`select_job`): among the protocol 'finetune' jobs, the one with the
highest `val_score` in its result.json (model selection on val, never on test); ties go to
the first in the report's order (regime, label fraction, seed).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cxr_jax import exported

N_BOOT = 1000


def _results(workdir: Path) -> list[dict]:
  from cxr_jax.report import loading
  results = [r for r in loading.load_results(workdir) if r['protocol'] == 'finetune']
  return [r for rs in loading.group_results(results).values() for r in rs]  # report order


def _job_name(result: dict, workdir: Path) -> str:
  return Path(result['_dir']).relative_to(workdir).as_posix()


def select_job(workdir, job: str | None = None) -> dict:
  """The result.json dict (with '_dir') of `job`, or of the best fine-tuned job by
  val_score (ties: the first in report order)."""
  workdir = Path(workdir)
  results = _results(workdir)
  if job:
    job = job.strip('/')
    for r in results:
      if _job_name(r, workdir) == job:
        return r
    names = ', '.join(_job_name(r, workdir) for r in results) or 'none'
    raise ValueError(f'--job={job}: no finished fine-tuning job of that name in {workdir} '
                     f'(finished finetune jobs: {names})')
  if not results:
    raise ValueError(f'{workdir} has no finished fine-tuning job (a finetune/<init>/'
                     '<fraction>/seed<k>/result.json); only protocol finetune jobs export')
  score = lambda r: (float(r['val_score']) if r.get('val_score') is not None
                     and np.isfinite(float(r['val_score'])) else -np.inf)
  return max(results, key=score)  # max keeps the first of ties: report order


def code_version() -> dict:
  """{'cxr_jax': version, 'git_commit': hash or None} of the code running now."""
  try:
    from importlib import metadata
    version = metadata.version('cxr_jax')
  except Exception:  # not installed: read setup.cfg beside the package
    version = None
    cfg = Path(__file__).resolve().parents[1] / 'setup.cfg'
    if cfg.exists():
      for line in cfg.read_text().splitlines():
        if line.replace(' ', '').startswith('version='):
          version = line.split('=', 1)[1].strip()
          break
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=Path(__file__).resolve().parent,
                            capture_output=True, text=True, timeout=10).stdout.strip() or None
  except Exception:
    commit = None
  return {'cxr_jax': version, 'git_commit': commit}


def load_job(workdir, job: str | None = None) -> tuple[dict, dict, dict]:
  """(model.json dict, variables, result dict) of a workdir's job (default: `select_job`)."""
  from cxr_jax import finetuning
  workdir = Path(workdir)
  result = select_job(workdir, job)
  name = _job_name(result, workdir)
  weights = Path(result['_dir']) / finetuning.BEST_WEIGHTS
  if not weights.exists() or 'image_shape' not in result:
    raise FileNotFoundError(
        f'{name}: no {finetuning.BEST_WEIGHTS} (or no image_shape in its result.json): '
        'the job was run by a cxr_jax that did not keep its selected weights. Delete its '
        f'result.json ({Path(result["_dir"]) / "result.json"}) and run the same command '
        'again to redo that job, then export.')
  config_path = workdir / 'config.json'
  config_bytes = config_path.read_bytes()
  config = json.loads(config_bytes)
  shape = [int(d) for d in result['image_shape']]
  meta = {
      'format': 'cxr_jax model 1',
      'architecture': dict(config['model']),
      'num_classes': len(result['class_names']),
      'class_names': list(result['class_names']),
      'image_size': int(config['finetune']['image_size']),
      'storage_size': shape[0],
      'channels': shape[-1],
      'input': 'uint8 [N, storage_size, storage_size, channels] from preprocess(path)',
      'preprocessing': exported.PREPROCESSING,
      'task': result.get('task', 'label'),  # 'findings': multi-label, one sigmoid each
      'output': ('sigmoid probabilities [N, num_classes], one per finding, columns in '
                 'class_names order' if result.get('task') == 'findings' else
                 'softmax probabilities [N, num_classes], columns in class_names order'),
      'training': {k: result.get(k) for k in ('protocol', 'init', 'label_fraction', 'seed',
                                              'num_train', 'best_step', 'val_score')},
      'data': dict(config['finetune']['data']),
      'test': result['test'],
      'provenance': {'job': name, 'workdir': str(workdir.resolve()),
                     'config_sha256': hashlib.sha256(config_bytes).hexdigest(),
                     'config': config, **code_version()},
  }
  variables = finetuning.load_weights(weights)
  return meta, variables, result


def test_cis(result: dict, n_boot: int = N_BOOT) -> dict | None:
  """{metric: (lo, hi)}: patient-bootstrap 95% CIs of the job's test metrics (its
  test_predictions.npz), or None without the file."""
  from cxr_jax.eval import bootstrap
  from cxr_jax.report import loading
  p = loading.load_npz(Path(result['_dir']) / 'test_predictions.npz')
  if p is None:
    return None
  probs = np.asarray(p['probs'], np.float64)[:, None, :]  # one "seed"
  labels = np.asarray(p['labels'])  # multi-label targets [N, F] stay float (NaN)
  labels = labels.astype(np.float64) if labels.ndim == 2 else labels.astype(np.int64)
  return bootstrap.seed_mean_cis(labels, probs,
                                 np.asarray(p['patient_id']), n_boot, seed=0)


def model_card(meta: dict, cis: dict | None) -> str:
  t, d, prov = meta['training'], meta['data'], meta['provenance']
  regime = t['init']
  lines = [
      f'# cxr_jax classifier: {", ".join(meta["class_names"])}', '',
      f'Exported from job `{prov["job"]}` of workdir `{prov["workdir"]}` '
      f'(cxr_jax {prov["cxr_jax"]}, git {prov["git_commit"] or "unknown"}; config sha256 '
      f'`{prov["config_sha256"][:16]}...`).', '',
      '## Intended use', '',
      'Research only: studying self-supervised pretraining and fine-tuning on chest '
      'X-rays. **Not a medical device; not for diagnosis, triage or any clinical '
      'decision.** Its behaviour on data unlike its training data is unknown.', '',
      '## Training', '',
      f'- data: `{d.get("name")}` options `{d.get("options", "") or "(defaults)"}`, '
      f'train split `{d.get("train_split")}`, model selection on `{d.get("val_split")}`, '
      f'tested on `{d.get("test_split")}`',
      f'- regime (initialisation): {regime}; protocol: {t["protocol"]}',
      f'- label fraction: {t["label_fraction"]:g} ({t["num_train"]} training images); '
      f'seed {t["seed"]}',
      f'- selected at step {t["best_step"]} by val score {t["val_score"]:.4f}',
      f'- architecture: {meta["architecture"].get("name")} width '
      f'{meta["architecture"].get("width")}, stem {meta["architecture"].get("stem")}; '
      f'input {meta["storage_size"]} px stored, {meta["image_size"]} px seen, '
      f'{meta["channels"]} channel(s)', '',
      '## Test metrics', '',
      (f'95% CIs: percentile patient bootstrap ({meta.get("n_boot", N_BOOT)} resamples) of '
       'this model\'s test predictions.' if cis else 'No test_predictions.npz: no CIs.'), '',
      '| metric | value | 95% CI |', '| --- | --- | --- |',
  ]
  for m, v in meta['test'].items():
    if '/' in m or v is None:
      continue
    ci = cis.get(m) if cis else None
    ci_text = f'[{ci[0]:.3f}, {ci[1]:.3f}]' if ci and np.all(np.isfinite(ci)) else ''
    lines.append(f'| {m} | {v:.4f} | {ci_text} |')
  lines += ['', '## Use', '', '```python', 'import cxr_jax',
            "model = cxr_jax.load_model('.')",
            "probs = model.predict(model.preprocess('image.png')[None])", '```', '',
            'or `python -m cxr_jax.predict --model=. --input=FOLDER --output=preds.csv`.',
            '', f'Preprocessing: {meta["preprocessing"]}', '']
  return '\n'.join(lines)


def _max_pool_by_slices(x):
  """The ResNet stem's 3x3 stride-2 max-pool (-inf padding 1) as the max of its 9 strided
  taps: the same values as `resnet.max_pool_3x3_s2`, whose lax.reduce_window jax2onnx
  turns into a 4-D ONNX MaxPool over (B, H, W, C) that onnxruntime refuses ("Unsupported
  pooling size")."""
  import jax.numpy as jnp
  from jax import lax
  b, h, w, c = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  taps = [lax.slice(xp, (0, i, j, 0), (b, i + 2 * (ho - 1) + 1, j + 2 * (wo - 1) + 1, c),
                    (1, 2, 2, 1)) for i in range(3) for j in range(3)]
  out = taps[0]
  for t in taps[1:]:
    out = jnp.maximum(out, t)
  return out


@contextlib.contextmanager
def _onnx_friendly_ops():
  """While tracing for ONNX: the stem's max-pool by slices (see `_max_pool_by_slices`)."""
  from cxr_jax.models import resnet
  original = resnet.max_pool_3x3_s2
  resnet.max_pool_3x3_s2 = _max_pool_by_slices
  try:
    yield
  finally:
    resnet.max_pool_3x3_s2 = original


def write_onnx(model: exported.Model, path: Path, batch_size: int | None = None) -> Path:
  """model.onnx of `model.probs_function()` (input float32 [B, image_size, image_size, C]
  in [0, 1] = model.model_inputs(images)); a symbolic batch 'B' unless batch_size."""
  import jax2onnx
  b = 'B' if batch_size is None else int(batch_size)
  shape = (b, model.image_size, model.image_size, model.channels)
  with _onnx_friendly_ops():
    proto = jax2onnx.to_onnx(model.probs_function(), [shape], model_name='cxr_jax_classifier',
                             input_names=['images'], output_names=['probs'])
  path.write_bytes(proto.SerializeToString())
  return path


def export(workdir, out, job: str | None = None, onnx: bool = False,
           n_boot: int = N_BOOT) -> Path:
  """Writes the model folder `out` of a workdir's job; returns `out`."""
  from flax import serialization
  out = Path(out)
  meta, variables, result = load_job(workdir, job)
  meta['n_boot'] = n_boot
  out.mkdir(parents=True, exist_ok=True)
  (out / exported.WEIGHTS).write_bytes(serialization.msgpack_serialize(variables))
  (out / exported.MODEL_JSON).write_text(json.dumps(meta, indent=2, default=str))
  (out / 'README.md').write_text(model_card(meta, test_cis(result, n_boot)))
  if onnx:
    write_onnx(exported.Model(meta, variables), out / 'model.onnx')
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m cxr_jax.export', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--job', default=None,
                      help='e.g. finetune/curricular/1/seed0 (default: best val_score)')
  parser.add_argument('--out', required=True)
  parser.add_argument('--onnx', action='store_true', help='also write model.onnx (jax2onnx)')
  args = parser.parse_args(argv)
  try:
    out = export(args.workdir, args.out, args.job, args.onnx)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  meta = json.loads((out / exported.MODEL_JSON).read_text())
  print(f'exported {meta["provenance"]["job"]} to {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
