"""The paper config on a SIIM-FISABIO-RSNA layout (no lung masks) with lung masks predicted
by a trained segmenter: the report's attention table, end to end.

    python -m benchmarks.siim_predicted_masks --root=/tmp/siim_fixture --segmenter=runs/lungs \
        --workdir=/tmp/siim_attention

Writes a synthetic SIIM layout (phantom radiographs as DICOM, 4 classes, --studies
studies, plus test/ images) under --root, runs
`configs/paper.py:dataset=siim_covid19,stage1=none,runlocal=true` on it with
`--config.explain.masks=segmenter:<--segmenter>`, and prints the report's attention
section and the Dice of the predicted masks against the phantoms' true lung masks.
"""
import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from cxr_jax.data.builders import phantom
from tests import dicom_files


def write_layout(root: Path, studies: int, unlabeled: int, size: int) -> np.ndarray:
  """The layout and the true lung masks of the train images [studies, size, size]."""
  rng = np.random.default_rng(0)
  study_rows, image_rows, masks = [], [], []
  for i in range(studies):
    label = i % 4
    r = phantom.render(rng, label=label, size=size, confounder=-1)
    study, series, image = f'{i:012x}', f's{i:011x}', f'i{i:011x}'
    onehot = ['0'] * 4
    onehot[label] = '1'
    study_rows.append(f'{study}_study,' + ','.join(onehot))
    image_rows.append(f'{image}_image,,none 1 0 0 1 1,{study}')
    dicom_files.make_dicom(root / 'train' / study / series / f'{image}.dcm',
                           r['image'][..., 0] if r['image'].ndim == 3 else r['image'])
    masks.append(r['mask'][..., 0])
  for i in range(unlabeled):  # test/ images: the SSL stage's unlabeled split
    r = phantom.render(rng, label=0, size=size, confounder=-1)
    dicom_files.make_dicom(root / 'test' / f't{i:011x}' / f'u{i:011x}' / f'v{i:011x}.dcm',
                           r['image'][..., 0] if r['image'].ndim == 3 else r['image'])
  (root / 'train_study_level.csv').write_text(
      'id,Negative for Pneumonia,Typical Appearance,Indeterminate Appearance,'
      'Atypical Appearance\n' + '\n'.join(study_rows) + '\n')
  (root / 'train_image_level.csv').write_text(
      'id,boxes,label,StudyInstanceUID\n' + '\n'.join(image_rows) + '\n')
  return np.stack(masks)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--segmenter', required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--studies', type=int, default=48)
  parser.add_argument('--unlabeled', type=int, default=24)
  parser.add_argument('--size', type=int, default=128)
  args = parser.parse_args()
  root = Path(args.root)
  masks = write_layout(root, args.studies, args.unlabeled, args.size)
  subprocess.run([sys.executable, 'launch.py',
                  f'--config=configs/paper.py:dataset=siim_covid19,data_root={root},'
                  'stage1=none,runlocal=true',
                  f'--config.explain.masks=segmenter:{args.segmenter}',
                  f'--workdir={args.workdir}'], check=True)
  text = (Path(args.workdir) / 'report.md').read_text()
  start = text.index('## Attention: Grad-CAM')
  print(text[start:text.index('## ', start + 3)])
  from cxr_jax.cli import segment
  from cxr_jax.data import imageio  # noqa: F401  (the DICOM reader the builder uses)
  from cxr_jax.models import segmenter
  seg = segmenter.load(args.segmenter)
  import pydicom
  images = np.stack([pydicom.dcmread(p).pixel_array for p in
                     sorted((root / 'train').rglob('*.dcm'))])[..., None]
  d = segment.dice(seg.predict_masks(images), masks)
  print(f'Dice of predicted vs true phantom lung masks: {d.mean():.3f} '
        f'(min {d.min():.3f}, {len(d)} images)')


if __name__ == '__main__':
  main()
