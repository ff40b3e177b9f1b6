"""The paper's study as one config: initialisation regimes x label fractions x seeds, three
evaluation protocols, CIs, paired tests and the lung-attention analysis
(de Andrés Tamé et al. 2023, "Self-Supervised Curricular Deep Learning for Chest X-Ray
Image Classification"; docs/paper.md explains each part).

Phantom study (default; synthetic radiographs with a confounding marker in train/val):

    python launch.py --config=configs/paper.py --workdir=runs/paper_phantom
    python launch.py --config=configs/paper.py:method=byol,seeds=5 --workdir=runs/paper_byol

  Tiny ResNet-18 (width 0.25, as configs/default.py) at 64 px; regimes scratch, ssl,
  ssl_matched (stage 2 alone for as many images as the curriculum: 270 steps),
  curricular; label fractions 0.25 and 1.0 of the 128 training patients; 3 seeds;
  fine-tune, linear and kNN protocols; Grad-CAM lung and lesion shares on the 512
  unconfounded test images.
  Expected runtime: 13 minutes on a quiet 2-core CPU (jax 0.10.2) measured before
  ssl_matched joined the default regimes; it adds a 270-step stage and 18 evaluation
  jobs (about a third more; not re-measured).
  Expected result: ssl and curricular above scratch in fine-tuned test macro AUROC; every
  regime drops ~0.2 AUROC from the confounded val split to test (README.md has the table).
  Smoke test (seconds to a minute, every code path): `...:runlocal=true`.

Real data (meant for one GPU; prepare the data first, see docs/datasets.md):

    ARGS=dataset=siim_covid19,data_root=/data/siim,natural_dir=/data/natural
    ARGS=$ARGS,imagenet=/ckpt/imagenet_resnet50.msgpack
    python launch.py --config=configs/paper.py:$ARGS --workdir=runs/paper_siim

  ResNet-50 at 224 px. Curriculum: stage 1 `natural` on a generic natural-image folder
  (`image_folder` at natural_dir; stage1=cxr_collection uses the ieee8023 collection at
  stage1_dir instead; stage1=none drops it), stage 2 `cxr` on the target's unlabeled
  chest X-rays. Regimes scratch, ssl (stage 2 alone, from scratch), ssl_matched (stage 2
  alone for as many images as both stages), curricular, and
  imagenet when `imagenet=` names a converted checkpoint (python -m
  cxr_jax.models.convert, see docs/paper.md); stage1_init=imagenet starts the curriculum
  from it. Label fractions 0.01, 0.1, 1.0; 3 seeds.
  Expected runtime: not yet measured (on one H100: not yet measured).

Arguments (`--config=configs/paper.py:k=v,k=v`; lists use '+' because ',' separates
arguments):
  dataset      phantom | siim_covid19 | covid_qu_ex | covid19_radiography | cxr_collection
  method       simclr | moco | byol | barlow_twins | vicreg
  backbone     resnet18 | resnet34 | resnet50 ('' = resnet18 on the phantom, else resnet50)
  fractions    label fractions, e.g. 0.01+0.1+1.0 ('' = the dataset's default)
  seeds        seeds per (regime, fraction)
  inits        regimes, e.g. scratch+ssl+curricular ('' = scratch, ssl, ssl_matched,
               curricular, plus imagenet when a checkpoint is given)
  protocols    finetune+linear+knn (any subset)
  imagenet     path of a converted ImageNet encoder (.msgpack); '' = no imagenet regime
  stage1_init  scratch | imagenet (start the curriculum's first stage from `imagenet`)
  stage1       image_folder | cxr_collection | none (real data only)
  data_root    manual_dir of the target dataset's raw files (real data)
  natural_dir  manual_dir of the natural images for stage 1 (image_folder layout)
  stage1_dir   manual_dir of cxr_collection when stage1=cxr_collection
  data_dir     TFDS data_dir of prepared datasets ('' = <workdir>/tfds)
  size         input side in pixels (0 = configs/default.py's 64 on the phantom, 224 on
               real data)
  stem         phantom only: imagenet | small ('' = configs/default.py's). Grad-CAM sees the
               last stage's map: 2x2 at 64 px with the imagenet stem, so the phantom study
               takes stage 3's 4x4 map there (config.explain.stage=3); 8x8 at the last
               stage with stem=small, at ~16x the compute of the encoder's early stages.
  runlocal     shrink everything to a seconds-long smoke run
Single fields can still be overridden after, e.g. --config.finetune.steps=500.
"""
import ml_collections

from configs import common
from configs import default
from cxr_jax.curriculum import schedule
from cxr_jax.ssl import METHODS, get_method

PHANTOM = ('size=64,num_unlabeled=2048,num_train=128,num_val=128,num_test=512,'
           'confounder_strength=0.8,seed=0')
PHANTOM_LOCAL = ('size=32,num_unlabeled=64,num_train=16,num_val=16,num_test=32,'
                 'confounder_strength=0.8,seed=0')

# Per real dataset: the split holding its unlabeled (or label-free usable) images for
# the SSL stage, and the extra masks its records carry (feature '<name>_mask').
REAL = {
    'siim_covid19': dict(ssl_split='unlabeled', extra_masks=''),
    'covid_qu_ex': dict(ssl_split='train', extra_masks=''),
    'covid19_radiography': dict(ssl_split='train', extra_masks=''),
    'cxr_collection': dict(ssl_split='unlabeled', extra_masks='device,opacity'),
}


def _list(text: str, sep: str = '+') -> list[str]:
  return [t.strip() for t in text.split(sep) if t.strip()]


def get_config(arg=None):
  a = common.parse_arg(
      arg, dataset='phantom', method='simclr', backbone='', fractions='', seeds=3, inits='',
      protocols='finetune+linear+knn', imagenet='', stage1_init='scratch',
      stage1='image_folder', data_root='', natural_dir='', stage1_dir='', data_dir='',
      size=0, stem='', runlocal=False)
  if a.method not in METHODS:
    raise ValueError(f'configs/paper.py: method={a.method!r}; choose from {METHODS}')
  if a.dataset != 'phantom' and a.dataset not in REAL:
    raise ValueError(f'configs/paper.py: dataset={a.dataset!r}; choose from '
                     f"{['phantom'] + sorted(REAL)}")
  if a.stage1_init not in ('scratch', 'imagenet'):
    raise ValueError(f'configs/paper.py: stage1_init={a.stage1_init!r}; scratch or imagenet')
  if a.stage1_init == 'imagenet' and not a.imagenet:
    raise ValueError('configs/paper.py: stage1_init=imagenet needs imagenet=<converted '
                     'checkpoint .msgpack> (python -m cxr_jax.models.convert)')

  c = default.get_config()  # the phantom demo; the study changes fields, keeps the rest
  c.data_dir = a.data_dir
  c.pretrain.method = a.method

  if a.dataset == 'phantom':
    _phantom(c, a)
  else:
    _real(c, a)

  # -- the study: regimes x label fractions x seeds x protocols
  inits = _list(a.inits) or ['scratch', 'ssl', 'ssl_matched', 'curricular']
  if not a.inits and len(c.pretrain.stages) < 2:  # one stage: ssl_matched would be ssl again
    inits.remove('ssl_matched')
  if a.imagenet and not a.inits:
    inits.insert(1, 'imagenet')
  if 'imagenet' in inits and not a.imagenet:
    raise ValueError('configs/paper.py: the imagenet regime needs imagenet=<converted '
                     'checkpoint .msgpack> (nothing can be downloaded at run time)')
  c.finetune.inits = ','.join(inits)          # comma-separated: scratch, imagenet, ssl, ssl_matched, curricular
  if a.fractions:
    c.finetune.label_fractions = tuple(float(f) for f in _list(a.fractions))
  c.finetune.num_seeds = a.seeds
  c.finetune.protocols = ','.join(_list(a.protocols))  # finetune, linear, knn
  c.finetune.imagenet_checkpoint = a.imagenet  # converted encoder (cxr_jax.models.convert)
  c.pretrain.init = a.stage1_init             # 'imagenet': curricular stage 1 starts from it
  c.pretrain.ssl_stage = ''                   # the stage run alone as 'ssl' ('' = the last)
  if a.imagenet:
    # converted ImageNet weights exist only for the full-width ResNet with the 7x7 stem
    c.model.width = 1.0
    c.model.stem = 'imagenet'

  c.explain.enabled = True                    # Grad-CAM/occlusion attention per fine-tuning job
  c.explain.num_overlays = 2                  # overlay images per class (same images for all)
  c.explain.umap = True                       # embeddings/<init>.npz + the report's UMAP figure
  if a.dataset == 'phantom':
    # dataset fields holding masks: lesion = the opacities. (The confounding marker's
    # region, cxr_jax.explain.analysis.marker_region_masks, is not a stored field.)
    c.explain.extra_masks = 'lesion,marker'
  else:
    c.explain.extra_masks = REAL[a.dataset]['extra_masks']

  if a.runlocal:
    _shrink(c, a)
  return c


def _phantom(c, a):
  """The confounder study on phantoms, sized for a 2-core CPU (model, curriculum and
  image sizes as in configs/default.py)."""
  c.phantom = PHANTOM  # a FieldReference: every phantom data spec follows it
  c.model.name = a.backbone or 'resnet18'
  if a.stem:
    c.model.stem = a.stem
  if a.size:
    c.pretrain.stages[-1].image_size = schedule('constant', a.size)
    c.finetune.image_size = a.size
  c.finetune.label_fractions = (0.25, 1.0)
  # The last stage's map is 2x2 at 64 px with the imagenet stem: too coarse for Grad-CAM to
  # tell lungs from borders. Stage 3's 4x4 map (16 px cells) can, at no training cost.
  c.explain.stage = 3 if (c.model.stem == 'imagenet' and c.finetune.image_size <= 64) else 0


def _real(c, a):
  """A two-stage curriculum on real chest X-rays at 224 px, ResNet-50: for a GPU."""
  spec = REAL[a.dataset]
  size = a.size or 224
  c.model.update(dict(name=a.backbone or 'resnet50', width=1.0, stem='imagenet',
                      dtype='float32'))
  c.checkpoint_every = 1000
  c.log_every = 50
  c.eval_batch_size = 256
  c.worker_count = 8
  c.pretrain.monitor_every = 2000
  for name in METHODS:  # the methods' own defaults: the demo's recipes are for 270 steps
    c.pretrain[name] = get_method(name).DEFAULTS.copy_and_resolve_references()
  c.pretrain.optimizer = common.optimizer_config(
      'lars', lr=0.3, base_batch_size=256, lr_scaling='linear', warmup_steps=1000,
      weight_decay=1e-6)
  target = common.data(a.dataset, spec['ssl_split'], '', a.data_root)
  stages = []
  if a.stage1 == 'image_folder':
    stages.append(common.stage('natural', common.data('image_folder', 'train', '',
                                                      a.natural_dir),
                               steps=20_000, batch_size=256, image_size=size,
                               strength=1.0, temperature=0.2))
  elif a.stage1 == 'cxr_collection':
    stages.append(common.stage('natural', common.data('cxr_collection', 'train', '',
                                                      a.stage1_dir),
                               steps=10_000, batch_size=256, image_size=size,
                               strength=1.0, temperature=0.2))
  elif a.stage1 != 'none':
    raise ValueError(f'configs/paper.py: stage1={a.stage1!r}; image_folder, cxr_collection '
                     'or none')
  # the target domain: gentle views first, then full strength (a within-stage curriculum)
  stages.append(common.stage('cxr', target, steps=20_000, batch_size=256, image_size=size,
                             strength=schedule('linear', 0.5, 1.0), temperature=0.2))
  c.pretrain.stages = stages
  c.finetune.data = ml_collections.ConfigDict(dict(
      name=a.dataset, options='', manual_dir=a.data_root,
      train_split='train', val_split='val', test_split='test'))
  c.finetune.label_fractions = (0.01, 0.1, 1.0)
  c.finetune.steps = 5000
  c.finetune.batch_size = 64
  c.finetune.image_size = size
  c.finetune.strength = 0.3
  c.finetune.eval_every = 250
  c.finetune.optimizer = common.optimizer_config(
      'adamw', lr=3e-4, base_batch_size=64, lr_scaling='none', warmup_steps=200,
      weight_decay=1e-4)


def _shrink(c, a):
  """runlocal: every code path in seconds (numbers meaningless)."""
  if a.dataset == 'phantom':
    c.phantom = PHANTOM_LOCAL
  c.model.width = 0.125 if not a.imagenet else c.model.width
  for stage in c.pretrain.stages:
    stage.steps, stage.batch_size = 4, 16
    stage.image_size = schedule('constant', 32)
  c.pretrain[a.method].proj_hidden_dim = 32
  c.pretrain[a.method].proj_dim = 16
  c.pretrain.monitor_every = 0
  c.finetune.steps, c.finetune.eval_every, c.finetune.batch_size = 4, 2, 8
  c.finetune.image_size = 32
  c.finetune.num_seeds = 1
  c.eval_batch_size = 16
  c.checkpoint_every = c.log_every = 2
  c.worker_count = 0
