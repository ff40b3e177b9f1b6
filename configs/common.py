"""Pieces shared by the config files: data specs, stages, argument parsing."""
from __future__ import annotations

import ml_collections

from cxr_jax.curriculum import schedule
from cxr_jax.train.optim import optimizer_config  # noqa: F401  (re-exported for configs)


def parse_arg(arg: str | None, **defaults):
  """'dataset=phantom,seeds=3' -> ConfigDict of `defaults` updated by the pairs (big_vision style)."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (p.strip() for p in (arg or '').split(','))):
    key, _, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'config argument {key!r} is unknown; known: {sorted(defaults)}')
    out[key] = type(defaults[key])(value) if not isinstance(defaults[key], bool) else value.lower() in ('1', 'true', 'yes')
  return out


def data(name: str, split: str = 'train', options: str = '', manual_dir: str = '') -> ml_collections.ConfigDict:
  """A data spec: TFDS builder `name`, its split, builder-config options 'k=v,...', raw files."""
  return ml_collections.ConfigDict(dict(name=name, split=split, options=options, manual_dir=manual_dir))


def stage(name: str, data_spec, steps: int, batch_size: int, image_size=64,
          strength=1.0, temperature=0.2, ema_momentum=None, keep_head: bool = True,
          keep_optimizer: bool = False, keep_target: bool = True, positives: str = 'image',
          method: str = ''):
  """One pretraining stage; schedulable entries take a number or a `schedule(...)`.

  method: the SSL method or pretext task the stage runs (`cxr_jax.ssl.METHODS`); '' = the
    global config.pretrain.method. Its settings are config.pretrain.<method>. After a stage
    of another method only the encoder carries over: keep_head and keep_target are then
    ignored (a log line says so) and keep_optimizer=True is a config error.
  image_size: view size in px; a schedule gives progressive resizing (rounded to multiples
    of 8, one compilation per distinct size). Override with `...image_size.start=32`.
  keep_head: start the projector/predictor from the previous stage (else re-initialise).
  keep_optimizer: carry the previous stage's optimizer state (momenta) over.
  keep_target: carry the previous stage's EMA target network (BYOL, MoCo) over; else the
    target restarts as a copy of the carried-over online network.
  positives: 'image' (two views of one image) or 'patient' (view 2 from another image of
    the same patient when it has one, else from the same image; MICLe, Azizi et al. 2021).

  ema_momentum=None keeps the method's own rule for its target network (kind 'method'),
  e.g. BYOL's cosine increase from its ema_base to 1.
  """
  as_schedule = lambda v: (v if isinstance(v, ml_collections.ConfigDict) else
                           schedule('method', 0.0) if v is None else schedule('constant', v))
  return ml_collections.ConfigDict(dict(
      name=name, data=data_spec, steps=steps, batch_size=batch_size,
      image_size=as_schedule(float(image_size) if not isinstance(image_size, ml_collections.ConfigDict) else image_size),
      strength=as_schedule(strength), temperature=as_schedule(temperature),
      ema_momentum=as_schedule(ema_momentum), keep_head=keep_head,
      keep_optimizer=keep_optimizer, keep_target=keep_target, positives=positives,
      method=method))
