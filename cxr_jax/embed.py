"""Embeddings of a dataset split by a trained encoder of a workdir:

    python -m cxr_jax.embed --workdir=W (--stage=NAME [--folder=pretrain|pretrain_ssl|pretrain_ssl_matched] |
        --job=finetune/<init>/<fraction>/seed<k>) --data=BUILDER:SPLIT [--data_dir=...] \\
        [--options=k=v,...] [--image_size=PX] --out=emb.npz

--stage: the encoder of the stage's last Orbax checkpoint, which must be at the stage's
final step (a finished stage; nothing is trained here). The stage's Job is rebuilt from
W/config.json (`pretraining.pretrain_job`) for the shape of its state, and `loop.run_job`
returns the restored state at once.
--job: the encoder of a finished fine-tuning cell's best weights (model selection on val,
kept in its last checkpoint), restored the same way through the cell's own Job.

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

import numpy as np

from cxr_jax import configuration
from cxr_jax import vocab


def config_from_json(path: Path):
  """The ConfigDict of a workdir's config.json (without its 'amendments')."""
  import ml_collections
  from cxr_jax import configuration

  def convert(value):
    if isinstance(value, dict):
      return ml_collections.ConfigDict({k: convert(v) for k, v in value.items()})
    if isinstance(value, list):
      return [convert(v) for v in value]
    return value

  saved = configuration.read_config_json(Path(path))
  saved.pop('amendments', None)
  return convert(saved)


class _NoWriter:
  """run_job's metric writer for a finished job: it never writes (nothing is trained)."""

  def write(self, *args, **kwargs):
    del args, kwargs

  def close(self):
    pass


def stage_encoder(config, workdir: Path, stage: str, folder: str, mesh, data_dir: Path):
  """(SSL model, its trained {'params', 'batch_stats'}, the stage's last view size) of a
  finished stage of the workdir."""
  from cxr_jax import pretraining
  from cxr_jax.train import loop
  if folder == vocab.SINGLE_STAGE_FOLDERS['ssl_matched']:  # that regime's stage ran longer
    steps = None
    if config.pretrain.get('match', 'images') == 'flops':  # its length: in its compute.json
      from cxr_jax.train import compute
      record = compute.read_record(workdir / folder / stage)
      if record is None:
        raise SystemExit(f'{folder}/{stage} has no {compute.FILE}: its length (matched by '
                         'FLOPs) is unknown')
      steps = record['steps']
    config = configuration.matched_config(config, steps=steps)
  names = [s.name for s in config.pretrain.stages]
  if stage not in names:
    raise SystemExit(f'--stage={stage!r} is not a stage of {workdir}; stages: {names}')
  index = names.index(stage)
  spec = config.pretrain.stages[index]
  directory = workdir / folder / stage
  steps = loop.saved_steps(directory)
  if not steps or steps[-1] < spec.steps:
    raise SystemExit(f'{folder}/{stage} is not finished: its last checkpoint is at step '
                     f'{steps[-1] if steps else "none"} of {spec.steps} (under '
                     f'{loop.checkpoint_dir(directory)})')
  config = config.copy_and_resolve_references()
  config.pretrain.monitor_every = 0  # the job's monitors would read the labeled data
  job = pretraining.pretrain_job(config, index, None, mesh, workdir, data_dir, folder)
  state = loop.run_job(job, _NoWriter())  # returns the restored state: the stage is done
  from cxr_jax import ssl
  from cxr_jax.train import state as state_lib
  method = ssl.get_method(config.pretrain.method)
  model = method.build_model(state_lib.encoder_from_config(config.model),
                             config.pretrain[config.pretrain.method])
  size = int(pretraining.image_sizes(spec.image_size, spec.steps, 'image_size')[-1])
  return model, {'params': state.params, 'batch_stats': state.batch_stats}, size


def job_encoder(config, workdir: Path, job: str, mesh, data_dir: Path):
  """(classifier, its best {'params', 'batch_stats'} (model selection on val), the
  fine-tuning image size) of a finished fine-tuning cell 'finetune/<init>/<fraction>/seed<k>'."""
  from cxr_jax import finetuning
  parts = job.strip('/').split('/')
  if len(parts) != 4 or parts[0] != 'finetune' or not parts[3].startswith('seed'):
    raise SystemExit(f'--job={job!r}: give finetune/<init>/<fraction>/seed<k>')
  directory = workdir / job.strip('/')
  weights = directory / finetuning.BEST_WEIGHTS
  if not (directory / 'result.json').exists() or not weights.exists():
    raise SystemExit(f'{job} is not finished, or was run by a cxr_jax that did not keep its '
                     f'selected weights: no {weights} (or no result.json beside it)')
  data = finetuning.EvalData(config.finetune.data, data_dir, config.image_cache)
  programs = finetuning.Programs(config.model, config.finetune, len(data.class_names),
                                 config.eval_batch_size, mesh)
  best = finetuning.load_weights(weights)
  return programs.model, best, config.finetune.image_size


def embed_split(extract, variables, source, batch_size: int, desc: str = 'embed'):
  """(embeddings [N, C] float32, the records' other fields) of a split, a batch at a time
  (the images of one batch in memory), with a progress bar over the batches."""
  from tqdm import tqdm
  from cxr_jax.data import pipeline
  n = len(source)
  out = []
  for start in tqdm(range(0, n, batch_size), desc=desc, unit='batch'):
    chunk = pipeline.Subset(source, np.arange(start, min(start + batch_size, n)))
    images = pipeline.read_all(chunk, ('image',), batch_size=batch_size)['image']
    out.append(np.asarray(extract(variables, images), np.float32))
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def split_fields(builder, source) -> dict:
  """labels, ids (the 'id' field, else indices) and patient_ids of a split's records."""
  from cxr_jax.data import pipeline
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
  parser.add_argument('--folder', default='pretrain', choices=('pretrain', 'pretrain_ssl', 'pretrain_ssl_matched'),
                      help="the stage's folder: pretrain (curricular) or pretrain_ssl (ssl), pretrain_ssl_matched (ssl_matched)")
  parser.add_argument('--data', required=True, help='BUILDER:SPLIT, e.g. phantom:test')
  parser.add_argument('--data_dir', default='', help="TFDS data_dir (default: the run's)")
  parser.add_argument('--options', default=None, help="the builder's options 'k=v,...'")
  parser.add_argument('--image_size', type=int, default=0,
                      help="input size (default: the stage's last view size)")
  parser.add_argument('--batch_size', type=int, default=0,
                      help='images per batch (default: config.eval_batch_size)')
  parser.add_argument('--out', required=True, help='the .npz to write')
  args = parser.parse_args(argv)

  import ml_collections
  from cxr_jax import finetuning
  from cxr_jax.data import pipeline
  from cxr_jax.train import inference
  from cxr_jax.train import sharding

  workdir = Path(args.workdir)
  config = config_from_json(workdir / 'config.json')
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
    model, variables, size = stage_encoder(config, workdir, args.stage, args.folder, mesh,
                                           data_dir)
    what = f'{args.folder}/{args.stage}'
  else:
    model, variables, size = job_encoder(config, workdir, args.job, mesh, data_dir)
    what = args.job
  batch_size = args.batch_size or config.eval_batch_size
  extract = inference.make_features(model, args.image_size or size, mesh, batch_size,
                                    encoder_only=args.job is not None)
  arrays = dict(embeddings=embed_split(extract, variables, source, batch_size,
                                       f'{what} {args.data}'),
                **split_fields(builder, source))
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  finetuning.save_npz(out, **arrays)
  print(json.dumps({'out': str(out), **{k: list(v.shape) for k, v in arrays.items()}}))


if __name__ == '__main__':
  main()
