"""Self-supervised methods: one module per method, all with the same small interface.

Two kinds of method share it: the two-view methods (SimCLR, MoCo, BYOL, Barlow Twins,
VICReg: two augmented views of each image, a loss between their embeddings) and the
pretext tasks of `PRETEXT_TASKS` (rotation, jigsaw, relative position, inpainting: the
method builds its own inputs and targets from a batch of images: rotated copies and
their labels, shuffled tiles and the permutation's index, masked images and the pixels
to reconstruct).

A method module (`cxr_jax/ssl/<name>.py`) defines:

  DEFAULTS: ml_collections.ConfigDict
      the method's hyperparameters (become `config.pretrain.<name>`), e.g. projector
      sizes, plus `optimizer`: overrides of `config.pretrain.optimizer` for the stages
      that run this method (e.g. {'lr': 3e-3}; empty = the global optimizer unchanged;
      `optimizer_config` below applies them).
  build_model(encoder, cfg) -> flax module
      the online network; its param tree has an 'encoder' subtree (copied between stages
      and into fine-tuning) and whatever heads the method needs. Called on whole images,
      `model.apply(variables, images, train=False)` returns a dict whose 'features' are
      the encoder's pooled features [B, C] (the online monitors and `embed` use them), and
      `model.init` on whole images creates every parameter (heads included).
  VIEWS_PER_IMAGE: int                                          (optional, default 2)
      the network inputs one image becomes (rotation 4, jigsaw 9 tiles, inpainting 1):
      the compute account's view count.
  make_inputs(rng, images, hp, image_size, cfg) -> dict        (optional)
      builds the loss's inputs and targets on the device from a batch of images
      [B, H, W, C] float32 in [0, 1]: rng a PRNG key of this step, image_size the
      stage's (static) view size of this step, hp as below. Without it the inputs are
      the two augmented views {'view1', 'view2'} ([B, S, S, C] each) of
      `common.two_view_inputs` (`data.augment.two_views`). Only two-view methods run with
      config.augment_on='host' or a stage's positives='patient' (the loader then brings
      the views, or the second image).
  init_extra(params, batch_stats, cfg) -> pytree
      method state besides the online parameters: target network (BYOL, MoCo), queue
      (MoCo v2)...; {} when there is none.
  loss_fn(model, params, batch_stats, extra, inputs, hp, cfg)
      -> (loss, (new_batch_stats, metrics, aux))
      inputs: the dict of `make_inputs` (global, batch-sharded arrays). `hp` holds this
      step's scheduled scalars (hp['temperature'], hp['strength'], hp['ema_momentum'],
      hp['progress'] in [0,1]...) as traced values, so schedules never recompile.
      `metrics` is a dict of scalars only (logged as they are, 'loss' among them); `aux`
      a dict of arrays: aux['features'] are encoder features [B, C], one row per image
      (two-view methods: of view 1; pretext tasks: of the image's first input), plus
      whatever update_extra needs (MoCo v2: aux['keys'], the normalised keys [B, D]).
  update_extra(extra, params, batch_stats, hp, cfg, aux) -> extra
      called after the optimizer update with the updated params and batch stats and the
      `aux` of loss_fn (EMA of the target, enqueue of keys); returns `extra` unchanged
      when the method has none.
  check(cfg, image_size, key)                                   (optional)
      raises ValueError naming `key` (config.pretrain.<name>) when the settings cannot
      work at a view size of `image_size` px (e.g. jigsaw tiles too small).

Every pretraining stage runs one method: `config.pretrain.stages[i].method`, or
`config.pretrain.method` when the stage names none (`stage_method`).

Shared pieces: `common` (L2 normalisation, the projector model and two-view loss of the
methods without a target, the default two-view inputs), `momentum` (the EMA target
network of BYOL and MoCo, and the rule for its rate) and `pretext` (the classifier
model and tile cutting of the pretext tasks).

Everything is jit-compiled over a batch-sharded global batch, so reductions over the
batch axis (negatives, BatchNorm statistics, cross-correlations) are global, never
per-device.
"""
import importlib

from cxr_jax.ssl import common

TWO_VIEW_METHODS = ('simclr', 'moco', 'byol', 'barlow_twins', 'vicreg')
PRETEXT_TASKS = ('rotation', 'jigsaw', 'relative_position', 'inpainting')
METHODS = TWO_VIEW_METHODS + PRETEXT_TASKS


def get_method(name: str, key: str = 'config.pretrain.method'):
  """The method module `cxr_jax.ssl.<name>`; a clear error names `key` and the valid ones."""
  if name not in METHODS:
    raise ValueError(f'{key} must be one of {METHODS}, got {name!r}')
  return importlib.import_module(f'cxr_jax.ssl.{name}')


def stage_method(pretrain, index: int) -> str:
  """The method stage `index` of `config.pretrain` runs: its own `method`, or the
  global `pretrain.method` when it names none ('')."""
  return pretrain.stages[index].get('method', '') or pretrain.method


def make_inputs(method):
  """The method's `make_inputs`, or the two augmented views of the two-view methods."""
  return getattr(method, 'make_inputs', common.two_view_inputs)


def optimizer_config(pretrain, name: str):
  """`pretrain.optimizer` with the method's own overrides (`pretrain.<name>.optimizer`)
  applied on top: the optimizer of the stages that run method `name`."""
  out = pretrain.optimizer.copy_and_resolve_references()
  overrides = pretrain[name].get('optimizer', None)
  for field, value in (overrides.items() if overrides is not None else ()):
    if field not in out:
      raise ValueError(f'config.pretrain.{name}.optimizer.{field}: not an optimizer setting; '
                       f'config.pretrain.optimizer has {sorted(out.keys())}')
    out[field] = value
  return out


def optimizer_key(pretrain, name: str, field: str) -> str:
  """The config key that sets optimizer `field` for method `name` (for messages)."""
  overrides = pretrain[name].get('optimizer', None)
  if overrides is not None and field in overrides:
    return f'pretrain.{name}.optimizer.{field}'
  return f'pretrain.optimizer.{field}'
