"""The plan of one run: pretraining curriculum -> fine-tuning grid -> report.

    run(config, workdir)
      validate the config; lock the workdir (one run at a time); refuse a workdir that
      holds another config's run (unless config.allow_changes accepts the difference);
      open every dataset and split the run reads
      pretrain: the curriculum's stages in order, each from the previous stage's network
                -> <workdir>/pretrain/<stage>/          (cxr_jax.pretraining)
                the 'ssl' regime: its one stage alone, from scratch
                -> <workdir>/pretrain_ssl/<stage>/
                the 'ssl_matched' regime: that stage alone for as many images as the
                whole curriculum -> <workdir>/pretrain_ssl_matched/<stage>/
      embeddings (config.explain.umap): each regime's test-split features
                -> <workdir>/embeddings/<init>.npz      (finetuning.save_embeddings)
      evaluate: protocol x init x label fraction x seed, each cell a job
                -> <workdir>/<protocol folder>/<init>/<fraction>/seed<k>/  (cxr_jax.finetuning)
      report:   <workdir>/report.md                     (cxr_jax.report)

Every job skips itself when its outputs are complete and resumes from its latest
checkpoint when they are not, so re-running the same command after a crash, a kill or a
pre-emption finishes the work without redoing it.
"""
from __future__ import annotations

from pathlib import Path

import jax
import ml_collections

from cxr_jax import configuration
from cxr_jax import finetuning
from cxr_jax import pretraining
from cxr_jax import report
from cxr_jax import vocab
from cxr_jax.train import loop
from cxr_jax.train import sharding
from cxr_jax.train import state as state_lib
from cxr_jax.train import workdir as workdir_lib


def run(config: ml_collections.ConfigDict, workdir) -> list[dict]:
  """Runs (or resumes) the whole plan in `workdir`; returns the evaluation results."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  configuration.validate(config)
  with workdir_lib.lock(workdir, active=jax.process_index() == 0):
    return _run(config, workdir)


def _run(config, workdir: Path) -> list[dict]:
  fresh = not (workdir / 'config.json').exists()
  configuration.check_or_write_config(config, workdir)
  data_dir = Path(config.data_dir) if config.data_dir else workdir / 'tfds'
  try:
    configuration.check_data(config, data_dir)
  except Exception:
    if fresh and jax.process_index() == 0:
      # nothing ran under this config: the corrected command must not be refused as a
      # change of the run
      (workdir / 'config.json').unlink(missing_ok=True)
    raise
  mesh = sharding.make_mesh()
  writer = loop.MetricWriter(workdir)
  inits = configuration.inits(config)
  try:
    encoders = pretrained_encoders(config, inits, mesh, writer, workdir, data_dir)
    data = finetuning.EvalData(config.finetune.data, data_dir, config.image_cache)
    programs = finetuning.Programs(config.model, config.finetune, len(data.class_names),
                                   config.eval_batch_size, mesh, multilabel=data.multilabel)
    if config.explain.umap:  # the regimes' test embeddings, for the report's UMAP figure
      for init in inits:
        finetuning.save_embeddings(config, programs, init, encoders[init], data, workdir)
    results = []
    for protocol in configuration.protocols(config):
      for init in inits:
        for fraction in map(float, config.finetune.label_fractions):
          for seed in finetuning.seeds(protocol, init, fraction, config.finetune.num_seeds):
            results.append(finetuning.finetune_job(
                config, programs, protocol, init, fraction, seed, encoders[init], data, mesh,
                writer, workdir))
  finally:
    writer.close()
  if jax.process_index() == 0:
    report.write_report(workdir)
  return results


def pretrained_encoders(config, inits, mesh, writer, workdir: Path, data_dir: Path) -> dict:
  """{init: the encoder it fine-tunes from (`state.encoder_variables`), None for scratch}."""
  imagenet = None
  if 'imagenet' in inits or config.pretrain.init == 'imagenet':
    imagenet = state_lib.load_imagenet_encoder(config.finetune.imagenet_checkpoint,
                                               config.model.name)
  encoders = {'scratch': None, 'imagenet': imagenet}
  if 'curricular' in inits:
    encoders['curricular'] = state_lib.encoder_variables(pretraining.run_curriculum(
        config, mesh, writer, workdir, data_dir,
        imagenet=imagenet if config.pretrain.init == 'imagenet' else None))
  if 'ssl' in inits:  # one SSL stage on the target data, from scratch
    encoders['ssl'] = state_lib.encoder_variables(pretraining.run_curriculum(
        config, mesh, writer, workdir, data_dir,
        [configuration.ssl_stage_index(config.pretrain)], folder=vocab.SINGLE_STAGE_FOLDERS['ssl']))
  if 'ssl_matched' in inits:  # the same stage, as many images as the curriculum sees
    matched = configuration.matched_config(config)
    encoders['ssl_matched'] = state_lib.encoder_variables(pretraining.run_curriculum(
        matched, mesh, writer, workdir, data_dir,
        [configuration.ssl_stage_index(matched.pretrain)],
        folder=vocab.SINGLE_STAGE_FOLDERS['ssl_matched']))
  return encoders
