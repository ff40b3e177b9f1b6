"""Export a fine-tuned classifier of a workdir as a self-contained model folder.

    python -m cxr_jax.cli.export --workdir=W [--job=finetune/curricular/1/seed0] --out=DIR [--onnx]

DIR gets `weights.msgpack`, `model.json` (architecture, input sizes, channels, class names,
preprocessing, provenance: the run's config, its sha256, the cxr_jax version and git
commit), `README.md` (the model card: training data, label fraction, regime, seed, test
metrics with patient-bootstrap 95% CIs, intended use) and, with --onnx, `model.onnx`.
Load it with `cxr_jax.load_model(DIR)`.

The default job (`trained.select_job`): among the protocol 'finetune' jobs, the one with the
highest `val_score` in its result.json (model selection on val, never on test); ties go to
the first in the report's order (regime, label fraction, seed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from flax import serialization

from cxr_jax import trained
from cxr_jax.eval import bootstrap
from cxr_jax.models import layers
from cxr_jax.report import loading

N_BOOT = 1000


def test_cis(result: dict, n_boot: int = N_BOOT) -> dict | None:
  """{metric: (lo, hi)}: patient-bootstrap 95% CIs of the job's test metrics (its
  test_predictions.npz), or None without the file."""
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
            'or `python -m cxr_jax.cli.predict --model=. --input=FOLDER --output=preds.csv`.',
            '', f'Preprocessing: {meta["preprocessing"]}', '']
  return '\n'.join(lines)


def write_onnx(model: trained.Model, path: Path, batch_size: int | None = None) -> Path:
  """model.onnx of `model.probs_function()` (input float32 [B, image_size, image_size, C]
  in [0, 1] = model.model_inputs(images)); a symbolic batch 'B' unless batch_size.
  Every backbone's stem max-pool is traced as `layers.max_pool_by_slices` (onnxruntime
  refuses the 4-D MaxPool of lax.reduce_window)."""
  import jax2onnx  # the optional 'onnx' extra
  b = 'B' if batch_size is None else int(batch_size)
  shape = (b, model.image_size, model.image_size, model.channels)
  with layers.pool_by_slices():
    proto = jax2onnx.to_onnx(model.probs_function(), [shape], model_name='cxr_jax_classifier',
                             input_names=['images'], output_names=['probs'])
  path.write_bytes(proto.SerializeToString())
  return path


def export(workdir, out, job: str | None = None, onnx: bool = False,
           n_boot: int = N_BOOT) -> Path:
  """Writes the model folder `out` of a workdir's job; returns `out`."""
  out = Path(out)
  meta, variables, result = trained.load_job(workdir, job)
  meta['n_boot'] = n_boot
  out.mkdir(parents=True, exist_ok=True)
  (out / trained.WEIGHTS).write_bytes(serialization.msgpack_serialize(variables))
  (out / trained.MODEL_JSON).write_text(json.dumps(meta, indent=2, default=str))
  (out / 'README.md').write_text(model_card(meta, test_cis(result, n_boot)))
  if onnx:
    write_onnx(trained.Model(meta, variables), out / 'model.onnx')
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m cxr_jax.cli.export', description=__doc__,
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
  meta = json.loads((out / trained.MODEL_JSON).read_text())
  print(f'exported {meta["provenance"]["job"]} to {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
