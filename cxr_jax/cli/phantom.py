"""The phantom's contact sheet and its renderer's speed:

    python -m cxr_jax.cli.phantom --contact_sheet=docs/phantom.png [--size=128]
    python -m cxr_jax.cli.phantom --benchmark   # images per CPU-second, one core

(`cxr-phantom ...` once installed.) The renderer: `cxr_jax/data/phantom_render.py`.
"""
import argparse

import numpy as np

from cxr_jax.data.phantom_render import CLASS_NAMES, NUM_MARKERS, benchmark, render


def contact_sheet(path: str, size: int = 128, per_class: int = 4, seed: int = 0) -> None:
  """Saves a PNG grid of phantoms: one row per class, `per_class` columns.

  Lung mask outlines are drawn in cyan, lesion outlines in red, markers in yellow. The
  markers cycle through none and 0..3 along rows and columns, so every corner shows.
  """
  import matplotlib  # heavy: only for the contact sheet
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # heavy: only for the contact sheet

  fig, axes = plt.subplots(len(CLASS_NAMES), per_class, squeeze=False,
                           figsize=(1.9 * per_class + 0.4, 1.9 * len(CLASS_NAMES)))
  for k, name in enumerate(CLASS_NAMES):
    for j in range(per_class):
      marker = ((j + k) % (NUM_MARKERS + 1)) - 1
      out = render(np.random.default_rng([seed, 99, k, j]), k, size, marker)
      ax = axes[k, j]
      ax.imshow(out['image'][..., 0], cmap='gray', vmin=0, vmax=255)
      for key, colour in (('mask', 'cyan'), ('lesion', 'red'), ('marker', 'yellow')):
        if out[key].any():
          ax.contour(out[key][..., 0], levels=[0.5], colors=colour, linewidths=0.6)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(f'sev {out["severity"]:.2f}, marker {marker}', fontsize=7)
      if j == 0:
        ax.set_ylabel(name, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=72)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--contact_sheet', help='write a contact sheet PNG to this path')
  parser.add_argument('--size', type=int, default=128, help='contact sheet image size')
  parser.add_argument('--benchmark', action='store_true', help='print images/s')
  args = parser.parse_args(argv)
  if args.contact_sheet:
    contact_sheet(args.contact_sheet, size=args.size)
    print(f'wrote {args.contact_sheet}')
  if args.benchmark:
    for s in (64, 128, 256):
      print(f'{s:4d} px: {benchmark(s, n=2000 * 64 // s):7.0f} images per CPU-second')


if __name__ == '__main__':
  main()
