"""The words a run and its report share, defined once.

Initialisation regimes, evaluation protocols, the folders their jobs write to and the
order and titles the report shows them in. The writer (`cxr_jax.finetuning`), the
reader (`cxr_jax.report`), the config checks and the configs all import these.
SSL method names live with the methods (`cxr_jax.ssl.METHODS`), ECE bins with the
metrics (`cxr_jax.eval.metrics.ECE_BINS`).
"""

# fine-tuning initialisations, in the order the report lists them (the baseline first);
# the families below add alone:<method>, curriculum:<name> and ssl_matched:<name>.
# 'ssl': the target stage alone, its own steps; 'ssl_matched': the target stage alone for
# as many images as the whole curriculum (the compute-matched control of 'curricular')
REGIMES = ('scratch', 'imagenet', 'ssl', 'ssl_matched', 'curricular')
# the workdir folder of each single-stage regime's pretraining
SINGLE_STAGE_FOLDERS = {'ssl': 'pretrain_ssl', 'ssl_matched': 'pretrain_ssl_matched'}
# regime families, '<family>:<name>' (regimes.regime_plan runs them):
#   alone:<method>      the curriculum's target stage (config.pretrain.ssl_stage) alone, from
#                       scratch, running <method>, as long as the curriculum in images or
#                       FLOPs (config.pretrain.match): each task of a task curriculum alone
#   curriculum:<name>   the named curriculum config.pretrain.curricula.<name>, a stage list
#                       like config.pretrain.stages (the 'curricular' regime)
#   ssl_matched:<name>  that curriculum's last stage alone, as long as the whole of it: its
#                       compute-matched control, as ssl_matched is curricular's
FAMILIES = ('alone', 'curriculum', 'ssl_matched')
FAMILY_FOLDERS = {'alone': 'pretrain_alone_', 'curriculum': 'pretrain_curriculum_',
                  'ssl_matched': 'pretrain_ssl_matched_'}
# the report's order: each task alone before the curriculum made of them; a named
# curriculum's control just before it (a paired row reads "curriculum − control")
_ORDER = ('scratch', 'imagenet', 'ssl', 'ssl_matched', 'alone', 'curricular', 'named')

# evaluation protocols, in report order, and the top-level workdir folder of each
PROTOCOLS = ('finetune', 'linear', 'knn')
PROTOCOL_FOLDERS = {'finetune': 'finetune', 'linear': 'linear_probe', 'knn': 'knn'}
PROTOCOL_TITLES = {'finetune': 'Fine-tuning', 'linear': 'Linear probe (frozen encoder)',
                   'knn': 'kNN (frozen encoder)'}


def split_regime(regime: str) -> tuple[str, str]:
  """'alone:rotation' -> ('alone', 'rotation'); 'scratch' -> ('scratch', '')."""
  family, _, name = regime.partition(':')
  return family, name


def pretrain_folder(regime: str) -> str | None:
  """The workdir folder of a regime's pretraining (None: scratch and imagenet pretrain
  nothing here; also None for a name that is no regime)."""
  if regime == 'curricular':
    return 'pretrain'
  if regime in SINGLE_STAGE_FOLDERS:
    return SINGLE_STAGE_FOLDERS[regime]
  family, name = split_regime(regime)
  return FAMILY_FOLDERS[family] + name if family in FAMILY_FOLDERS and name else None


def regime_of_folder(folder: str) -> str | None:
  """The inverse of `pretrain_folder`: 'pretrain_alone_rotation' -> 'alone:rotation'."""
  if folder == 'pretrain':
    return 'curricular'
  for regime, name in SINGLE_STAGE_FOLDERS.items():
    if folder == name:
      return regime
  # longest prefix first: 'pretrain_ssl_matched_' is not read as another family's
  for family, prefix in sorted(FAMILY_FOLDERS.items(), key=lambda kv: -len(kv[1])):
    if folder.startswith(prefix) and len(folder) > len(prefix):
      return f'{family}:{folder[len(prefix):]}'
  return None


def regime_order(regime: str):
  """Sort key: scratch, imagenet, ssl, ssl_matched, alone:<method> (by method),
  curricular, then each named curriculum (by name) after its ssl_matched:<name>; unknown
  regimes after all of them, alphabetically."""
  if regime in REGIMES:
    return (_ORDER.index(regime), '', 0)
  family, name = split_regime(regime)
  if family == 'alone' and name:
    return (_ORDER.index('alone'), name, 0)
  if family in ('curriculum', 'ssl_matched') and name:
    return (_ORDER.index('named'), name, int(family == 'curriculum'))
  return (len(_ORDER), regime, 0)


def protocol_order(protocol: str):
  """Sort key: known protocols in PROTOCOLS order, unknown ones after, alphabetically."""
  return ((PROTOCOLS.index(protocol), protocol) if protocol in PROTOCOLS
          else (len(PROTOCOLS), protocol))


def comma_list(text: str) -> list[str]:
  """'a, b,,c' -> ['a', 'b', 'c'] (how configs spell lists of names)."""
  return [t.strip() for t in text.split(',') if t.strip()]
