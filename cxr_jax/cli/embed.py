"""Embeddings of a dataset split by a trained encoder of a workdir:

    python -m cxr_jax.cli.embed --workdir=W (--stage=NAME [--folder=pretrain|pretrain_ssl|...] |
        --job=finetune/<init>/<fraction>/seed<k>) --data=BUILDER:SPLIT [--data_dir=...] \\
        [--options=k=v,...] [--image_size=PX] --out=emb.npz

--stage: the encoder of the stage's last Orbax checkpoint, which must be at the stage's
final step (a finished stage; nothing is trained here): `trained.from_stage` rebuilds the
SSL model from W/config.json and restores the weights from that checkpoint directly.
--job: the encoder of a finished fine-tuning cell's best weights (model selection on val,
its best.msgpack), through `trained.from_workdir`. Neither reads the labelled splits nor
compiles a training step.

Writes `out` (np.savez_compressed):
  embeddings  [N, C] float32  the encoder's pooled features (`inference.make_features`)
  labels      [N] int         the records' labels (absent when the split has none)
  ids         [N]             the records' 'id' field, else their indices in the split
  patient_ids [N] str         the records' patient_id (absent when the split has none)

The images are resized to `--image_size` (default: the stage's last view size, as its
kNN / linear monitors see them; for --job, config.finetune.image_size). `--data_dir` defaults to the run's (config.data_dir, else
W/tfds); `--options` to config.phantom for the phantom builder, else none.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import ml_collections
import numpy as np
from tqdm import tqdm

from cxr_jax import trained
from cxr_jax.data import pipeline
from cxr_jax.files import save_npz
from cxr_jax.train import inference
from cxr_jax.train import sharding


def job_encoder(workdir: Path, job: str):
  """(classifier, its best {'params', 'batch_stats'} (model selection on val), the
  fine-tuning image size) of a finished fine-tuning cell 'finetune/<init>/<fraction>/seed<k>'
  (`trained.from_workdir`)."""
  parts = job.strip('/').split('/')
  if len(parts) != 4 or parts[0] != 'finetune' or not parts[3].startswith('seed'):
    raise SystemExit(f'--job={job!r}: give finetune/<init>/<fraction>/seed<k>')
  try:
    model = trained.from_workdir(workdir, job)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(str(e)) from None
  return model.module, model.variables, model.image_size


def embed_split(extract, variables, source, batch_size: int, desc: str = 'embed'):
  """(embeddings [N, C] float32, the records' other fields) of a split, a batch at a time
  (the images of one batch in memory), with a progress bar over the batches."""
  n = len(source)
  out = []
  for start in tqdm(range(0, n, batch_size), desc=desc, unit='batch'):
    chunk = pipeline.Subset(source, np.arange(start, min(start + batch_size, n)))
    images = pipeline.read_all(chunk, ('image',), batch_size=batch_size)['image']
    out.append(np.asarray(extract(variables, images), np.float32))
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def split_fields(builder, source) -> dict:
  """labels, ids (the 'id' field, else indices) and patient_ids of a split's records."""
  features = builder.info.features
  fields = tuple(f for f in ('label', 'id', 'patient_id') if f in features)
  meta = pipeline.read_all(source, fields) if fields and len(source) else {}
  out = {'ids': meta.get('id', np.arange(len(source)))}
  if 'label' in meta:
    out['labels'] = meta['label']
  if 'patient_id' in meta:
    out['patient_ids'] = meta['patient_id']
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  which = parser.add_mutually_exclusive_group(required=True)
  which.add_argument('--stage', help='a pretraining stage of the run')
  which.add_argument('--job', help='a fine-tuning cell: finetune/<init>/<fraction>/seed<k> '
                     '(its best weights, as selected on val)')
  parser.add_argument('--folder', default='pretrain',
                      help="the stage's folder: pretrain (curricular), pretrain_ssl (ssl), "
                      'pretrain_ssl_matched (ssl_matched), pretrain_alone_<method>, '
                      'pretrain_curriculum_<name>, pretrain_ssl_matched_<name>')
  parser.add_argument('--data', required=True, help='BUILDER:SPLIT, e.g. phantom:test')
  parser.add_argument('--data_dir', default='', help="TFDS data_dir (default: the run's)")
  parser.add_argument('--options', default=None, help="the builder's options 'k=v,...'")
  parser.add_argument('--image_size', type=int, default=0,
                      help="input size (default: the stage's last view size)")
  parser.add_argument('--batch_size', type=int, default=0,
                      help='images per batch (default: config.eval_batch_size)')
  parser.add_argument('--out', required=True, help='the .npz to write')
  args = parser.parse_args(argv)

  workdir = Path(args.workdir)
  config = trained.config_from_json(workdir / 'config.json')
  name, _, split = args.data.partition(':')
  if not name or not split:
    raise SystemExit(f'--data={args.data!r}: give BUILDER:SPLIT, e.g. phantom:test')
  data_dir = Path(args.data_dir or config.data_dir or workdir / 'tfds')
  options = args.options if args.options is not None else (
      config.get('phantom', '') if name == 'phantom' else '')
  spec = ml_collections.ConfigDict(dict(name=name, split=split, options=options, manual_dir=''))
  builder = pipeline.get_builder(spec, data_dir, key='--data')
  source = pipeline.get_source(builder, split, key='--data')

  mesh = sharding.make_mesh()
  if args.stage:
    try:
      model, variables, size = trained.from_stage(workdir, args.stage, args.folder, config)
    except ValueError as e:
      raise SystemExit(str(e)) from None
    what = f'{args.folder}/{args.stage}'
  else:
    model, variables, size = job_encoder(workdir, args.job)
    what = args.job
  batch_size = args.batch_size or config.eval_batch_size
  extract = inference.make_features(model, args.image_size or size, mesh, batch_size,
                                    encoder_only=args.job is not None)
  arrays = dict(embeddings=embed_split(extract, variables, source, batch_size,
                                       f'{what} {args.data}'),
                **split_fields(builder, source))
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  save_npz(out, **arrays)
  print(json.dumps({'out': str(out), **{k: list(v.shape) for k, v in arrays.items()}}))


if __name__ == '__main__':
  main()
