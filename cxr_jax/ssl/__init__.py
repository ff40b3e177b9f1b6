"""Self-supervised methods: one module per method, all with the same small interface.

A method module (`cxr_jax/ssl/<name>.py`) defines:

  DEFAULTS: ml_collections.ConfigDict
      the method's hyperparameters (become `config.pretrain.<name>`), e.g. projector sizes.
  build_model(encoder, cfg) -> flax module
      the online network; its param tree has an 'encoder' subtree (copied between stages
      and into fine-tuning) and whatever heads the method needs.
  init_extra(params, batch_stats, cfg) -> pytree
      method state besides the online parameters: target network (BYOL, MoCo), queue
      (MoCo v2)...; {} when there is none.
  loss_fn(model, params, batch_stats, extra, view1, view2, hp, cfg)
      -> (loss, (new_batch_stats, metrics, aux))
      view1, view2: [B, H, W, C] global (batch-sharded) arrays. `hp` holds this step's
      scheduled scalars (hp['temperature'], hp['ema_momentum'], hp['progress'] in [0,1]...)
      as traced values, so schedules never recompile. `metrics` is a dict of scalars only
      (logged as they are, 'loss' among them); `aux` a dict of arrays: aux['features'] are
      the encoder's pooled features of view1 [B, C] (for online monitors), plus whatever
      update_extra needs (MoCo v2: aux['keys'], the normalised keys [B, D]).
  update_extra(extra, params, batch_stats, hp, cfg, aux) -> extra
      called after the optimizer update with the updated params and batch stats and the
      `aux` of loss_fn (EMA of the target, enqueue of keys); returns `extra` unchanged
      when the method has none.

Shared pieces: `common` (L2 normalisation, the projector model and two-view loss of the
methods without a target) and `momentum` (the EMA target network of BYOL and MoCo, and
the rule for its rate).

Everything is jit-compiled over a batch-sharded global batch, so reductions over the
batch axis (negatives, BatchNorm statistics, cross-correlations) are global, never
per-device.
"""
import importlib

METHODS = ('simclr', 'moco', 'byol', 'barlow_twins', 'vicreg')


def get_method(name: str):
  """The method module `cxr_jax.ssl.<name>`; a clear error names the valid ones."""
  if name not in METHODS:
    raise ValueError(f'config.pretrain.method must be one of {METHODS}, got {name!r}')
  return importlib.import_module(f'cxr_jax.ssl.{name}')
