"""The attention analysis of one fine-tuning cell: which images, which lung masks.

The job around the `cxr_jax.explain` library (which knows no configs, datasets or
segmenters): it reads the images and their lung masks once per run (`explain_set`) and
analyses one fine-tuned classifier (`explain_cell`); `cxr_jax.finetuning.explain` calls it.

config.explain chooses:
  data   a data spec (name, options, manual_dir, split) of the images to explain; an empty
         name means the fine-tuning set's test split. Another dataset lets a model trained
         on a set without masks be measured on one with masks. When that set's class names
         are not the fine-tuning set's, its labels mean nothing to the model: only the
         predicted class is explained (true-class shares NaN, no per-class overlays).
  masks  'dataset': the set's own 'mask' field; 'segmenter:<folder>': lung masks predicted
         by a trained U-Net (`python -m cxr_jax.cli.segment`, `models/segmenter.py`), for sets
         without masks.
  randomise  the Grad-CAM randomisation sanity tests to run (`cxr_jax.explain.sanity`).
  stage  the encoder stage whose map Grad-CAM reads: 'auto' (`cam_stage`: the deepest
         whose map is at least 8x8), 0 (the last) or 1-4.

With no lung masks at all (masks='dataset' on a set without them) nothing is written and
the report says so. `<cell>/attention.npz` (written by `cxr_jax.finetuning.explain`) holds `analysis.attention_analysis`'s arrays
plus 'mask_source' and 'explain_data' (strings) for the report.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import numpy as np

from cxr_jax import vocab
from cxr_jax.data import pipeline
from cxr_jax.data import schema
from cxr_jax.explain import analysis
from cxr_jax.explain import sanity
from cxr_jax.models import segmenter

log = logging.getLogger('cxr_jax')


@dataclasses.dataclass
class ExplainSet:
  """The images one run's cells are explained on (read once per run)."""
  name: str                  # '<dataset>:<split>'
  images: np.ndarray         # [N, H, W, C]
  labels: np.ndarray | None  # [N], or None when the classes are not the model's
  patient_id: np.ndarray     # [N]
  masks: np.ndarray | None   # [N, H, W(, 1)] lung masks, or None: none available
  mask_source: str           # 'dataset' | 'segmenter:<folder>' | 'none'
  extra: dict                # name -> [N, H, W(, 1)] (config.explain.extra_masks)


def _extra_masks(extra_masks: str, builder, source, size: int) -> dict:
  """config.explain.extra_masks (comma-separated) -> name -> [N, H, W(, 1)] masks."""
  has = lambda f: f in builder.info.features
  extra = {}
  for name in vocab.comma_list(extra_masks):
    if name == 'marker' and has('confounder'):
      # the phantom's burned-in marker: the region where it can sit, per image
      corner = pipeline.read_all(source, ('confounder',))['confounder']
      extra[name] = analysis.marker_region_masks(corner, size)
    elif has(name) or has(f'{name}_mask'):  # 'device' names device_mask
      field = name if has(name) else f'{name}_mask'
      extra[name] = pipeline.read_all(source, (field,))[field]
    else:
      raise ValueError(f'config.explain.extra_masks: the dataset {builder.name!r} has no '
                       f'field {name!r} (nor {name}_mask); it has '
                       f'{sorted(builder.info.features)}')
  return extra


def explain_set(explain_config, data, data_dir: Path, test_split: str,
                batch_size: int) -> ExplainSet:
  """The images, labels and lung masks to explain (module docstring), from `data`
  (a `finetuning.EvalData` whose test split is `test_split`) or explain_config.data
  (config.explain); `batch_size` of the segmenter's predictions."""
  spec = explain_config.data
  if not spec.name:
    builder, source = data.builder, data.test_source
    name = f'{data.builder.name}:{test_split}'
    images, labels, patient_id = data.test['image'], data.test['label'], data.test['patient_id']
  else:
    key = 'config.explain.data'
    builder = pipeline.get_builder(spec, data_dir, key=key)
    source = pipeline.get_source(builder, spec.split, f'{key}.split')
    name = f'{builder.name}:{spec.split}'
    got = pipeline.read_all(source, ('image', 'label', 'patient_id'))
    images, patient_id = got['image'], got['patient_id']
    # a findings model's classes are findings: another set's single labels are not them
    same_classes = (not getattr(data, 'multilabel', False) and
                    tuple(schema.class_names(builder)) == tuple(data.class_names))
    labels = got['label'] if same_classes else None
    if images.shape[-1] != data.channels:
      raise ValueError(f'{key}: {name} has {images.shape[-1]}-channel images; the model '
                       f'was fine-tuned on {data.channels}-channel images')
  kind, folder = segmenter.mask_choice(explain_config.masks)
  if kind == 'segmenter':
    masks = segmenter.load(folder).predict_masks(images, batch_size=batch_size)
  elif 'mask' in builder.info.features:
    masks = (data.test['mask'] if not spec.name and 'mask' in data.test
             else pipeline.read_all(source, ('mask',))['mask'])
  else:
    masks = None
  source_name = explain_config.masks if masks is not None else 'none'
  extra = (_extra_masks(explain_config.extra_masks, builder, source, images.shape[1])
           if masks is not None else {})
  return ExplainSet(name=name, images=images, labels=labels, patient_id=patient_id,
                    masks=masks, mask_source=source_name, extra=extra)


# the encoders' downsampling before stage 1, by stem; each later stage halves the map
STEM_STRIDE = {'imagenet': 4, 'small': 1}
MIN_CAM_SIDE = 8  # a coarser map cannot tell the lungs from their borders (4x4 at 128 px)
NUM_STAGES = 4    # ResNet stages, DenseNet blocks


def cam_stage(setting, image_size: int, stem: str, min_side: int = MIN_CAM_SIDE) -> int | None:
  """The encoder stage Grad-CAM reads for config.explain.stage=`setting`: None for the
  last stage (setting 0, or 'auto' when the last stage's map is at least min_side wide),
  else the stage number. 'auto' takes the deepest stage whose map at `image_size` is at
  least `min_side` wide (stage s's map: image_size / (stem stride * 2^(s-1)), rounded up
  as the encoders pad), and stage 1 when none is."""
  if setting != 'auto':
    return int(setting) or None
  stride = STEM_STRIDE[stem]
  for stage in range(NUM_STAGES, 0, -1):
    if -(-image_size // (stride * 2 ** (stage - 1))) >= min_side:
      return None if stage == NUM_STAGES else stage
  return 1


def explain_cell(explain_config, model, variables, images: ExplainSet, image_size: int,
                 batch_size: int, where: str, stem: str = 'imagenet') -> dict | None:
  """Grad-CAM attention (and the sanity tests explain_config.randomise names; config.explain)
  of one fine-tuned classifier on `images` at its input size `image_size`: the arrays of
  attention.npz, or None when there are no lung masks (`where` names the cell in the
  log)."""
  if images.masks is None:
    log.info('%s: no lung masks for %s (config.explain.masks=%r); no attention analysis',
             where, images.name, explain_config.masks)
    return None
  variables = jax.device_get(variables)
  input_shape = (1, image_size, image_size, images.images.shape[-1])
  randomised = {kind: sanity.randomised_variables(model, variables, kind, 1_000 + i,
                                                  input_shape)
                for i, kind in enumerate(vocab.comma_list(explain_config.randomise))}
  result = analysis.attention_analysis(
      model, variables, images.images, images.masks, images.labels,
      image_size, extra_masks=images.extra or None,
      batch_size=batch_size, overlay_per_class=explain_config.num_overlays,
      patient_id=images.patient_id,
      stage=cam_stage(explain_config.stage, image_size, stem),
      randomised=randomised or None)
  result['mask_source'] = np.asarray(images.mask_source)
  result['explain_data'] = np.asarray(images.name)
  return result
