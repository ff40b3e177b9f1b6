"""Which pretraining each regime of a run runs: the regimes of config.finetune.inits, the
stages each one trains (`regime_plan`), and the length of a matched regime's one stage
(as many images or FLOPs as a whole curriculum: `matched_steps`, `matched_config`).

    curricular      config.pretrain.stages in order                  -> pretrain/
    ssl             the target stage alone, its own length            -> pretrain_ssl/
    ssl_matched     the target stage alone, matched to curricular     -> pretrain_ssl_matched/
    alone:<m>       the target stage alone running m, matched          -> pretrain_alone_<m>/
    curriculum:<n>  config.pretrain.curricula.<n> in order            -> pretrain_curriculum_<n>/
    ssl_matched:<n> the last stage of curriculum n alone, matched     -> pretrain_ssl_matched_<n>/
"""
from __future__ import annotations

import copy
import logging
import typing

import ml_collections

from cxr_jax import vocab
from cxr_jax.train import compute

log = logging.getLogger('cxr_jax')


def curricula(config) -> list[str]:
  """The names of config.pretrain.curricula (none in a config of before the key)."""
  return sorted(config.pretrain.get('curricula', None) or {})


def inits(config) -> list[str]:
  """The regimes of config.finetune.inits, in the config's order."""
  return vocab.comma_list(config.finetune.inits)


def protocols(config) -> list[str]:
  """The protocols of config.finetune.protocols, in the config's order."""
  return vocab.comma_list(config.finetune.protocols)


def ssl_stage_index(pretrain: ml_collections.ConfigDict) -> int:
  """The stage the 'ssl' regime runs alone: pretrain.ssl_stage, or the last."""
  names = [s.name for s in pretrain.stages]
  name = pretrain.ssl_stage or names[-1]
  if name not in names:
    raise ValueError(f'config.pretrain.ssl_stage={name!r} is not a stage; stages: {names}')
  return names.index(name)


MATCH = ('images', 'flops')


class Plan(typing.NamedTuple):
  """How a pretraining regime runs (`regime_plan`).
  config: the config whose stages `indices` it runs (the run's own, or a copy);
  folder: its workdir folder (vocab.pretrain_folder);
  reference: for a matched regime, the config whose whole curriculum its one stage is
    matched to (`matched_config(config, ..., reference=reference)` sets its length);
    None for the others."""
  config: ml_collections.ConfigDict
  indices: list
  folder: str
  reference: ml_collections.ConfigDict | None


def regime_plan(config: ml_collections.ConfigDict, regime: str) -> Plan:
  """The stages each pretraining regime runs (see vocab.FAMILIES):
    curricular      config.pretrain.stages in order                  -> pretrain/
    ssl             the target stage alone, its own length            -> pretrain_ssl/
    ssl_matched     the target stage alone, matched to curricular     -> pretrain_ssl_matched/
    alone:<m>       the target stage alone running m, matched to curricular
                                                                      -> pretrain_alone_<m>/
    curriculum:<n>  config.pretrain.curricula.<n> in order            -> pretrain_curriculum_<n>/
    ssl_matched:<n> the last stage of curriculum n alone, matched to it
                                                                      -> pretrain_ssl_matched_<n>/
  (the target stage: config.pretrain.ssl_stage, '' = the last). ValueError for a regime
  that pretrains nothing (scratch, imagenet) or is unknown."""
  folder = vocab.pretrain_folder(regime)
  family, name = vocab.split_regime(regime)
  if folder is None:
    raise ValueError(f'{regime!r} is not a pretraining regime')
  if regime == 'curricular':
    return Plan(config, list(range(len(config.pretrain.stages))), folder, None)
  if regime in ('ssl', 'ssl_matched'):
    return Plan(config, [ssl_stage_index(config.pretrain)], folder,
                config if regime == 'ssl_matched' else None)
  if family == 'alone':
    return Plan(alone_config(config, name), [0], folder, config)
  named = curriculum_config(config, name)
  if family == 'curriculum':
    return Plan(named, list(range(len(named.pretrain.stages))), folder, None)
  return Plan(named, [len(named.pretrain.stages) - 1], folder, named)


def curriculum_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A copy of `config` whose stage list is config.pretrain.curricula.<name> (its target
  stage, for ssl_matched:<name>, is its last)."""
  if name not in curricula(config):
    raise ValueError(f'{name!r} is not a curriculum of config.pretrain.curricula '
                     f'(it has {curricula(config) or "none"})')
  out = copy.deepcopy(config)  # deep: the stage lists' entries are ConfigDicts too
  out.pretrain.stages = list(out.pretrain.curricula[name])
  out.pretrain.ssl_stage = ''
  return out


def alone_config(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """A copy of `config` whose one stage is the target stage (config.pretrain.ssl_stage)
  running `method`: the alone:<method> regime, before `matched_config` sets its length."""
  out = copy.deepcopy(config)
  stage = out.pretrain.stages[ssl_stage_index(out.pretrain)]
  stage.method = method
  out.pretrain.stages = [stage]
  out.pretrain.ssl_stage = ''
  return out


def matched_steps(pretrain: ml_collections.ConfigDict, stage_total=None, reference=None,
                  reference_total=None) -> int:
  """A matched regime's steps: the ssl stage alone, run as long as the whole curriculum
  (`reference`'s stages, default pretrain's own; reference_total counts their FLOPs,
  default stage_total) by pretrain.match:
    'images': as many images, sum over stages of steps * batch_size, at its own batch
              size (rounded up to whole steps);
    'flops':  as many FLOPs, the curriculum's total over the FLOPs of one step of the ssl
              stage at its view size (rounded up; with a size schedule, the fewest steps
              whose total reaches it: `compute.matched_steps_by_flops`).
  stage_total(index, steps) -> FLOPs of stage `index` run for `steps` steps (its
  schedules stretched over them): `compute.StageFlops.stage_total`; needed for 'flops'."""
  index = ssl_stage_index(pretrain)
  target = pretrain.stages[index]
  stages = (reference if reference is not None else pretrain).stages
  if pretrain.get('match', 'images') == 'flops':  # a config.json of before the key: images
    if stage_total is None:
      raise ValueError("config.pretrain.match='flops' needs the stages' FLOP counts "
                       '(experiment.stage_flops)')
    total = reference_total or stage_total
    curriculum_flops = sum(total(i, s.steps) for i, s in enumerate(stages))
    return compute.matched_steps_by_flops(
        curriculum_flops, lambda n: stage_total(index, n), target.steps)
  images = sum(s.steps * s.batch_size for s in stages)
  return -(-images // target.batch_size)


def matched_config(config: ml_collections.ConfigDict, stage_total=None,
                   steps: int | None = None, reference=None,
                   reference_total=None) -> ml_collections.ConfigDict:
  """A copy of `config` whose ssl stage runs `matched_steps` (its schedules stretch over
  them, as they do over any stage's steps), or `steps` when given (a finished stage's
  length, from its compute.json); the matched regimes (`regime_plan`) run that stage.
  `reference`: the config whose curriculum to match (its .pretrain), default `config`."""
  out = copy.deepcopy(config)  # deep: the stage list's entries are ConfigDicts too
  stage = out.pretrain.stages[ssl_stage_index(out.pretrain)]
  if steps is None:
    steps = matched_steps(out.pretrain, stage_total,
                          None if reference is None else reference.pretrain, reference_total)
    log.info('matched: stage %s runs %d steps (config.pretrain.match=%r; %d alone)',
             stage.name, steps, config.pretrain.get('match', 'images'), stage.steps)
  stage.steps = steps
  return out
