"""Score new chest X-rays with a trained classifier.

    python -m cxr_jax.cli.predict --model=MODEL_DIR_OR_WORKDIR --input=FILE|FOLDER|CSV \\
        --output=preds.csv [--gradcam=DIR] [--job=finetune/curricular/1/seed0] [--batch_size=32]

--model: an exported model folder (python -m cxr_jax.cli.export) or a run's workdir (its best
fine-tuned job by val score, as export chooses; --job picks another). --input: one image
file, a folder (its PNG/JPEG/DICOM/... files, recursively, sorted) or a CSV with a `path`
column (relative to the CSV's folder, or absolute). Every file goes through the
preprocessing preparation uses (`cxr_jax.data.imageio.load_for_model`).

The output CSV has one row per image: path, one probability column per class, the
predicted class and the model's job (a multi-label findings model: one sigmoid
probability per finding, and `predicted` lists the findings at p >= 0.5, '|'-separated). A file that cannot be read is listed with its reason
on stderr and in <output>.errors.csv; the others are still predicted; the exit code is 1
when any failed (0 otherwise). --gradcam=DIR writes one overlay PNG per image.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxr_jax import trained
from cxr_jax.explain import overlay

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.dcm', '.dicom', '.dic', '.bmp', '.tif',
                  '.tiff', '.webp', '.gif')


def list_inputs(path) -> list[Path]:
  """The image files an --input names (a file, a folder, or a CSV with a `path` column)."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f'--input {path} does not exist')
  if path.is_dir():
    return sorted(p for p in path.rglob('*') if p.is_file()
                  and p.suffix.lower() in IMAGE_SUFFIXES)
  if path.suffix.lower() == '.csv':
    with open(path, newline='') as f:
      reader = csv.DictReader(f)
      if 'path' not in (reader.fieldnames or []):
        raise ValueError(f'--input {path}: a CSV needs a `path` column, it has '
                         f'{reader.fieldnames}')
      return [p if p.is_absolute() else path.parent / p
              for p in (Path(row['path']) for row in reader if row['path'].strip())]
  return [path]


def open_model(model: str, job: str | None = None, batch_size: int = 32):
  """An exported folder (has model.json) or a workdir (`trained.from_workdir`)."""
  if (Path(model) / trained.MODEL_JSON).exists():
    if job:
      raise ValueError('--job applies to a workdir; --model is an exported model folder')
    return trained.load_model(model, batch_size=batch_size)
  if not (Path(model) / 'config.json').exists():
    raise ValueError(f'--model {model} is neither an exported model folder (model.json) '
                     'nor a workdir (config.json)')
  return trained.from_workdir(model, job, batch_size=batch_size)


def read_images(model, files) -> tuple[list[Path], list[np.ndarray], list[tuple[Path, str]]]:
  """(files read, their images, [(file, reason)] of those that failed)."""
  good, images, bad = [], [], []
  for f in files:
    try:
      images.append(model.preprocess(f))
      good.append(f)
    except Exception as e:  # pylint: disable=broad-except  # any bad file: listed, not fatal
      reason = str(e) if isinstance(e, (FileNotFoundError,)) else f'{type(e).__name__}: {e}'
      bad.append((f, reason.replace('\n', ' ')))
  return good, images, bad


def write_overlays(model, folder: Path, files, images, probs, maps):
  folder.mkdir(parents=True, exist_ok=True)
  seen = model.model_inputs(np.stack(images))
  names = set()
  for f, x, p, m in zip(files, seen, probs, maps):
    k = int(np.argmax(p))
    stem = f.stem
    while stem in names:  # same name in two folders
      stem += '_'
    names.add(stem)
    overlay.overlay_grid(str(folder / f'{stem}.png'), x[None, ..., 0], 
                         {f'predicted: {model.class_names[k]} ({p[k]:.2f})': m[None]},
                         cell_inches=3.0)


def run(model, files, output: Path, gradcam: Path | None = None, progress: bool = True
        ) -> list[tuple[Path, str]]:
  """Predicts `files` into `output` (and overlays into `gradcam`); returns the failures."""
  good, bad, probs = [], [], []
  bs = model.batch_size
  bar = tqdm(total=len(files), unit='image', disable=not progress, file=sys.stderr)
  for start in range(0, len(files), bs):  # read and predict batch by batch: bounded memory
    g, imgs, b = read_images(model, files[start:start + bs])
    bad += b
    if imgs:
      batch = np.stack(imgs)
      p = model.predict(batch)
      probs.append(p)
      if gradcam is not None:
        m = model.gradcam(batch)
        write_overlays(model, gradcam, g, imgs, p, m)
      good += g
    bar.update(len(files[start:start + bs]))
  bar.close()
  probs = np.concatenate(probs) if probs else np.zeros((0, len(model.class_names)))
  output.parent.mkdir(parents=True, exist_ok=True)
  with open(output, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['path'] + [f'prob_{c}' for c in model.class_names] + ['predicted', 'model'])
    for path, p in zip(good, probs):
      # multi-label: every finding at p >= 0.5 ('|'-separated, '' for none)
      predicted = ('|'.join(c for c, v in zip(model.class_names, p) if v >= 0.5)
                   if getattr(model, 'multilabel', False) else
                   model.class_names[int(np.argmax(p))])
      w.writerow([str(path)] + [f'{v:.8g}' for v in p] + [predicted, model.job])
  errors = Path(str(output) + '.errors.csv')
  if bad:
    with open(errors, 'w', newline='') as f:
      w = csv.writer(f)
      w.writerow(['path', 'reason'])
      w.writerows([str(p), r] for p, r in bad)
  elif errors.exists():
    errors.unlink()  # from an earlier run of the same output
  return bad


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m cxr_jax.cli.predict', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', required=True, help='exported model folder or workdir')
  parser.add_argument('--input', required=True, help='image file, folder, or CSV (`path`)')
  parser.add_argument('--output', required=True, help='predictions CSV')
  parser.add_argument('--gradcam', default=None, help='folder for Grad-CAM overlay PNGs')
  parser.add_argument('--job', default=None, help='a workdir\'s job (default: best by val)')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--no_progress', action='store_true')
  args = parser.parse_args(argv)
  try:
    files = list_inputs(args.input)
    model = open_model(args.model, args.job, args.batch_size)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'model: {model.job}; {len(files)} file(s)', file=sys.stderr)
  bad = run(model, files, Path(args.output),
            Path(args.gradcam) if args.gradcam else None, progress=not args.no_progress)
  for path, reason in bad:
    print(f'failed: {path}: {reason}', file=sys.stderr)
  print(f'wrote {len(files) - len(bad)} prediction(s) to {args.output}'
        + (f'; {len(bad)} file(s) failed, listed in {args.output}.errors.csv' if bad else ''),
        file=sys.stderr)
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main())
