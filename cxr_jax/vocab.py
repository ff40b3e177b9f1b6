"""The words a run and its report share, defined once.

Initialisation regimes, evaluation protocols, the folders their jobs write to and the
order and titles the report shows them in. The writer (`cxr_jax.finetuning`), the
reader (`cxr_jax.report`), the config checks and the configs all import these.
SSL method names live with the methods (`cxr_jax.ssl.METHODS`), ECE bins with the
metrics (`cxr_jax.eval.metrics.ECE_BINS`).
"""

# fine-tuning initialisations, in the order the report lists them (the baseline first).
# 'ssl': the target stage alone, its own steps; 'ssl_matched': the target stage alone for
# as many images as the whole curriculum (the compute-matched control of 'curricular')
REGIMES = ('scratch', 'imagenet', 'ssl', 'ssl_matched', 'curricular')
# the workdir folder of each single-stage regime's pretraining
SINGLE_STAGE_FOLDERS = {'ssl': 'pretrain_ssl', 'ssl_matched': 'pretrain_ssl_matched'}

# evaluation protocols, in report order, and the top-level workdir folder of each
PROTOCOLS = ('finetune', 'linear', 'knn')
PROTOCOL_FOLDERS = {'finetune': 'finetune', 'linear': 'linear_probe', 'knn': 'knn'}
PROTOCOL_TITLES = {'finetune': 'Fine-tuning', 'linear': 'Linear probe (frozen encoder)',
                   'knn': 'kNN (frozen encoder)'}


def regime_order(regime: str):
  """Sort key: known regimes in REGIMES order, unknown ones after, alphabetically."""
  return (REGIMES.index(regime), regime) if regime in REGIMES else (len(REGIMES), regime)


def protocol_order(protocol: str):
  """Sort key: known protocols in PROTOCOLS order, unknown ones after, alphabetically."""
  return ((PROTOCOLS.index(protocol), protocol) if protocol in PROTOCOLS
          else (len(PROTOCOLS), protocol))


def comma_list(text: str) -> list[str]:
  """'a, b,,c' -> ['a', 'b', 'c'] (how configs spell lists of names)."""
  return [t.strip() for t in text.split(',') if t.strip()]
