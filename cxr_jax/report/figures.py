"""The report's figures (PNG, matplotlib on the Agg backend: files only, no window)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_jax import vocab
from cxr_jax.explain import analysis


def _plt():
  import matplotlib  # heavy: only where figures are drawn
  matplotlib.use('Agg')  # files only; never opens a window
  from matplotlib import pyplot as plt
  return plt


def _save(plt, fig, path: Path) -> Path:
  """Lays out, writes (creating the folder) and closes `fig`."""
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path


def figure_auroc_vs_fraction(path: Path, rows: list[dict]) -> Path | None:
  """Macro AUROC (seed-mean, 95% CI bars) against label fraction, a line per regime.

  Args:
    path: output PNG.
    rows: dicts with 'protocol', 'init', 'fraction', 'mean', 'lo', 'hi' (NaN: no CI;
      then ± std bars from 'std').
  """
  if not rows:
    return None
  plt = _plt()
  protocols = sorted({r['protocol'] for r in rows}, key=vocab.protocol_order)
  fig, axes = plt.subplots(1, len(protocols), figsize=(4.5 * len(protocols), 3.6), dpi=120,
                           squeeze=False)
  fractions = sorted({r['fraction'] for r in rows})
  log = len(fractions) > 1 and fractions[-1] / fractions[0] >= 10
  for ax, protocol in zip(axes[0], protocols):
    inits = sorted({r['init'] for r in rows if r['protocol'] == protocol},
                   key=vocab.regime_order)
    for j, init in enumerate(inits):
      rs = sorted((r for r in rows if r['protocol'] == protocol and r['init'] == init),
                  key=lambda r: r['fraction'])
      # a small horizontal offset per regime keeps overlapping error bars readable
      off = (j - (len(inits) - 1) / 2) * 0.04
      x = np.array([r['fraction'] for r in rs]) * (10 ** off if log else 1)
      if not log:
        x = x + off * (fractions[-1] - fractions[0] + 0.1) / 2
      y = np.array([r['mean'] for r in rs])
      lo = np.array([r['lo'] if np.isfinite(r['lo']) else r['mean'] - r['std'] for r in rs])
      hi = np.array([r['hi'] if np.isfinite(r['hi']) else r['mean'] + r['std'] for r in rs])
      err = np.nan_to_num(np.stack([y - lo, hi - y]), nan=0.0).clip(min=0)
      ax.errorbar(x, y, yerr=err, marker='o', capsize=3, label=init)
    if log:
      ax.set_xscale('log')
    ax.set_xticks(fractions)
    ax.set_xticklabels([f'{f:g}' for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel('label fraction (of training patients)')
    ax.set_ylabel('test macro AUROC')
    ax.set_title(vocab.PROTOCOL_TITLES.get(protocol, protocol), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle('Macro AUROC vs label fraction (mean over seeds, 95% patient-bootstrap CI)',
               fontsize=9)
  return _save(plt, fig, path)


def figure_attention(path: Path, rows: list[dict]) -> Path | None:
  """Bars of the Grad-CAM lung share per regime, grouped by label fraction (95% CI).

  Args:
    path: output PNG.
    rows: dicts with 'protocol', 'init', 'fraction' and (mean, lo, hi) tuples under
      'pred' and 'true'.
  """
  if not rows:
    return None
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120, sharey=True)
  labels = sorted({(r['protocol'], r['fraction']) for r in rows},
                  key=lambda k: (vocab.protocol_order(k[0]), k[1]))
  inits = sorted({r['init'] for r in rows}, key=vocab.regime_order)
  width = 0.8 / max(1, len(inits))
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax, which, title in zip(axes, ('pred', 'true'), ('predicted class', 'true class')):
    for j, init in enumerate(inits):
      xs, ys, errs = [], [], [[], []]
      for i, key in enumerate(labels):
        r = next((r for r in rows if (r['protocol'], r['fraction']) == key and
                  r['init'] == init), None)
        if r is None or r.get(which) is None:
          continue
        mean, lo, hi = r[which][:3]
        xs.append(i + (j - (len(inits) - 1) / 2) * width)
        ys.append(mean)
        errs[0].append(max(0.0, mean - lo) if np.isfinite(lo) else 0.0)
        errs[1].append(max(0.0, hi - mean) if np.isfinite(hi) else 0.0)
      ax.bar(xs, ys, width * 0.95, yerr=errs, capsize=3, label=init,
             color=colors[j % len(colors)])
    ax.axhline(1.0, color='k', ls='--', lw=0.8, label='uniform map')
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([f'{f:g}' + ('' if p == 'finetune' else f'\n{p}') for p, f in labels])
    ax.set_xlabel('label fraction')
    ax.set_title(f'Grad-CAM lung share, {title}', fontsize=10)
    ax.grid(axis='y', alpha=0.3)
  axes[0].set_ylabel('attention share in lungs (1 = uniform)')
  axes[1].legend(fontsize=8)
  return _save(plt, fig, path)


def figure_overlays(path: Path, atts: dict[str, dict], class_names, max_rows: int = 12):
  """Side-by-side Grad-CAM overlays of the fixed sample, one column per regime.

  Args:
    path: output PNG.
    atts: regime -> its group's `loading.load_attention` dict (the first seed's maps are
      shown).
    class_names: K names for the row labels.
    max_rows: at most this many images.
  """
  atts = {k: v for k, v in atts.items() if v['arrays'][0].get('overlay_index') is not None
          and v['arrays'][0]['overlay_index'].size}
  if not atts:
    return None
  first = next(iter(atts.values()))['arrays'][0]
  idx = first['overlay_index'][:max_rows]
  cams = {}
  for init, att in atts.items():
    a = att['arrays'][0]
    if np.array_equal(a['overlay_index'][:len(idx)], idx):
      cams[f'{init} (seed {att["seeds"][0]})'] = a['overlay_cam_pred'][:len(idx)]
  labels = first['labels'][idx]
  titles = []
  for i, y in zip(idx, labels):
    name = class_names[int(y)] if int(y) < len(class_names) else str(int(y))
    titles.append(f'#{int(i)} {name}')
  return analysis.save_overlays(str(path), first['overlay_image'][:len(idx)], cams,
                                masks=first['overlay_mask'][:len(idx)], titles=titles,
                                cell_inches=1.6, dpi=100)


def umap_available() -> bool:
  """Whether umap-learn (the optional `umap` extra) can be imported."""
  try:
    import umap  # noqa: F401  pylint: disable=unused-import
  except ImportError:
    return False
  return True


def figure_umap(path: Path, embeddings: dict[str, dict], n_neighbors: int = 15,
                seed: int = 0) -> Path | None:
  """One 2-D UMAP scatter per regime of its encoder's test embeddings, coloured by class.

  Args:
    path: output PNG.
    embeddings: regime -> `loading.load_embeddings` dict ('embeddings' [N, C], 'labels'
      [N], 'class_names' [K]), in report order.
    n_neighbors: UMAP's neighbourhood size (at most N - 1).
    seed: UMAP's random_state (a fixed seed: reproducible, single-threaded).

  Raises:
    ImportError: umap-learn is not installed (`pip install cxr_jax[umap]`).
  """
  embeddings = {k: v for k, v in embeddings.items() if len(v['embeddings']) >= 3}
  if not embeddings:
    return None
  import umap  # optional: umap-learn
  plt = _plt()
  n = len(embeddings)
  fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), dpi=120, squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  for ax, (init, e) in zip(axes[0], embeddings.items()):
    x = np.asarray(e['embeddings'], np.float64)
    k = max(2, min(n_neighbors, len(x) - 1))
    xy = umap.UMAP(n_neighbors=k, min_dist=0.1, random_state=seed, n_jobs=1).fit_transform(x)
    labels = np.asarray(e['labels']).astype(int)
    names = list(e.get('class_names', []))
    for c in np.unique(labels):
      name = names[c] if c < len(names) else str(c)
      sel = labels == c
      ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, color=colors[c % len(colors)],
                 label=name, linewidths=0)
    ax.set_title(f'{init} encoder', fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0][-1].legend(fontsize=7, markerscale=2, loc='best')
  fig.suptitle('UMAP of the test embeddings before fine-tuning, by class', fontsize=9)
  return _save(plt, fig, path)
