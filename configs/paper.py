"""The paper's study as one config: initialisation regimes x label fractions x seeds, three
evaluation protocols, CIs, paired tests and the lung-attention analysis
(de Andrés Tamé et al. 2023, "Self-Supervised Curricular Deep Learning for Chest X-Ray
Image Classification"; docs/paper.md explains each part).

Phantom study (default; synthetic radiographs with a confounding marker in train/val):

    python launch.py --config=configs/paper.py --workdir=runs/paper_phantom
    python launch.py --config=configs/paper.py:method=byol,seeds=5 --workdir=runs/paper_byol
    cxr-launch --config=paper:method=byol --workdir=W   # installed, outside a checkout

  Tiny ResNet-18 (width 0.25, as configs/default.py) at 64 px; regimes scratch, ssl,
  ssl_matched (stage 2 alone for as many images as the curriculum: 270 steps),
  curricular; label fractions 0.25 and 1.0 of the 128 training patients; 3 seeds;
  fine-tune, linear and kNN protocols; Grad-CAM lung and lesion shares on the 512
  unconfounded test images.
  Expected runtime: 12 min 59 s wall with all four regimes (quiet 2-core Intel Xeon VM, CPU
  only, jax 0.10.2, compilation cache warm, 2026-12-01; docs/paper.md).
  Expected result: ssl and curricular above scratch in fine-tuned test macro AUROC; every
  regime drops ~0.2 AUROC from the confounded val split to test (README.md has the table).
  Smoke test (every code path, numbers meaningless): `...:runlocal=true`; 5 min 46 s wall
  with a warm compilation cache, 17 min 12 s with an empty one (2-core AMD EPYC VM, CPU
  only, cores shared with other jobs, jax 0.10.2, 2026-12-04, commit 0f25758).
  Attention at 8x8 Grad-CAM (128 px phantom, stage 3), trimmed to fit a 2-core CPU:
    python launch.py --config=configs/paper.py:size=128,protocols=finetune,fractions=1.0,inits=scratch+curricular \
      --workdir=runs/paper_phantom128
  Expected runtime: about 45 minutes on a 2-core CPU shared with other jobs (README.md).

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
  python -m cxr_jax.cli.convert, see docs/paper.md); stage1_init=imagenet starts the curriculum
  from it. Label fractions 0.01, 0.1, 1.0; 3 seeds.
  Expected runtime: not yet measured (on one H100: not yet measured).

Multi-label findings (CheXpert's 5 competition findings, NIH's 14; docs/datasets.md):

    python launch.py --workdir=runs/chexpert5 --config="configs/paper.py:dataset=chexpert_cxr,\
data_root=/data/CheXpert-v1.0-small,findings=Atelectasis+Cardiomegaly+Consolidation+Edema+Pleural Effusion"
    python launch.py --config=configs/paper.py:dataset=nih_cxr14,data_root=/data/nih,findings=all \
        --workdir=runs/nih14

Arguments (`--config=configs/paper.py:k=v,k=v`; lists use '+' because ',' separates
arguments):
  dataset      phantom, or any registered builder (cxr_jax/data/builders/): siim_covid19,
               covid_qu_ex, covid19_radiography, cxr_collection, kermany_pneumonia,
               rsna_pneumonia, nih_cxr14, chexpert_cxr, covidx, image_folder. The SSL
               stage reads the builder's SSL_SPLIT ('unlabeled' where it has one, else
               'train') and the attention analysis its EXTRA_MASKS (cxr_jax/data/schema.py)
  findings     '' = the single label; 'all' or '+'-separated names of the builder's
               findings (`targets`) = multi-label fine-tuning, one sigmoid per finding
               (the phantom: its four findings, opacity+effusion+cardiomegaly+device)
  options      builder options of the target dataset, '+'-separated, e.g.
               uncertainty=zeros+size=320 (CheXpert's U-Zeros policy; real data only)
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
               real data); on the phantom also the side it is rendered at, and the last
               pretraining stage's size. size=128 gives 8x8 Grad-CAM maps (stage 3)
  stem         phantom only: imagenet | small ('' = configs/default.py's). Grad-CAM sees the
               last stage's map: 2x2 at 64 px with the imagenet stem, so the phantom study
               takes stage 3's 4x4 map there (config.explain.stage=3); 8x8 at the last
               stage with stem=small, at ~16x the compute of the encoder's early stages.
  curriculum   stages (default): the regime curricular is the stage curriculum above (one
               method; this project's design) | tasks: a curriculum of pretext tasks, one
               stage per task (the authors' earlier paper's meaning, Sirotkin et al. 2021,
               arXiv 2112.12086), and the regimes scratch, alone:<task> for each task (the
               target stage alone running it, as many FLOPs as the task curriculum),
               curricular (the task curriculum), curriculum:stages (the stage curriculum)
               and ssl_matched:stages (its FLOP-matched control), plus imagenet when given;
               docs/paper.md, "Task curriculum vs its tasks alone"
  tasks        curriculum=tasks: the tasks in order, '+'-separated, e.g. rotation+jigsaw+simclr
               (default rotation+<method>; `python -m cxr_jax.order_tasks` proposes an
               order). Each task's stage is a copy of the stage curriculum's target-domain
               stage (data, size, views' strength, steps) running that task
  runlocal     shrink everything to a smoke run through every code path (minutes on 2 cores)
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


def real_builder(name: str):
  """The registered builder class `name` (not the phantom), or an error listing them.
  Its SSL_SPLIT and EXTRA_MASKS (cxr_jax/data/schema.py) replace a table here."""
  from cxr_jax.data import pipeline
  import cxr_jax.data.builders  # noqa: F401  (registers them)
  import tensorflow_datasets as tfds
  known = sorted(n for n in pipeline._our_builders() if n != 'phantom')  # pylint: disable=protected-access
  if name not in known:
    raise ValueError(f'configs/paper.py: dataset={name!r}; choose from '
                     f"{['phantom'] + known}")
  return tfds.builder_cls(name)


def _list(text: str, sep: str = '+') -> list[str]:
  return [t.strip() for t in text.split(sep) if t.strip()]


def get_config(arg=None):
  a = common.parse_arg(
      arg, dataset='phantom', method='simclr', backbone='', fractions='', seeds=3, inits='',
      protocols='finetune+linear+knn', imagenet='', stage1_init='scratch',
      stage1='image_folder', data_root='', natural_dir='', stage1_dir='', data_dir='',
      size=0, stem='', findings='', options='', curriculum='stages', tasks='',
      runlocal=False)
  if a.method not in METHODS:
    raise ValueError(f'configs/paper.py: method={a.method!r}; choose from {METHODS}')
  builder = real_builder(a.dataset) if a.dataset != 'phantom' else None
  if a.options and a.dataset == 'phantom':
    raise ValueError('configs/paper.py: options= sets a real dataset\'s builder options; the '
                     "phantom's are --config.phantom='size=64,...' (cxr_jax/data/builders/phantom.py)")
  if a.stage1_init not in ('scratch', 'imagenet'):
    raise ValueError(f'configs/paper.py: stage1_init={a.stage1_init!r}; scratch or imagenet')
  if a.stage1_init == 'imagenet' and not a.imagenet:
    raise ValueError('configs/paper.py: stage1_init=imagenet needs imagenet=<converted '
                     'checkpoint .msgpack> (python -m cxr_jax.cli.convert)')

  if a.curriculum not in ('stages', 'tasks'):
    raise ValueError(f'configs/paper.py: curriculum={a.curriculum!r}; stages or tasks')
  if a.tasks and a.curriculum != 'tasks':
    raise ValueError('configs/paper.py: tasks= needs curriculum=tasks')
  tasks = _list(a.tasks) or ['rotation', a.method]
  for task in tasks:
    if task not in METHODS:
      raise ValueError(f'configs/paper.py: tasks: {task!r} is not a method; choose from '
                       f'{METHODS}')
  if len(set(tasks)) != len(tasks):
    raise ValueError(f'configs/paper.py: tasks={a.tasks!r}: each task once')

  c = default.get_config()  # the phantom demo; the study changes fields, keeps the rest
  c.data_dir = a.data_dir
  c.pretrain.method = a.method

  if a.dataset == 'phantom':
    _phantom(c, a)
  else:
    _real(c, a, builder)

  # -- the study: regimes x label fractions x seeds x protocols
  inits = _list(a.inits) or ['scratch', 'ssl', 'ssl_matched', 'curricular']
  if not a.inits and len(c.pretrain.stages) < 2:  # one stage: ssl_matched would be ssl again
    inits.remove('ssl_matched')
  if a.curriculum == 'tasks':
    _task_curriculum(c, tasks)
    inits = _list(a.inits) or ['scratch', *(f'alone:{t}' for t in tasks), 'curricular',
                               'ssl_matched:stages', 'curriculum:stages']
  if a.imagenet and not a.inits:
    inits.insert(1, 'imagenet')
  if 'imagenet' in inits and not a.imagenet:
    raise ValueError('configs/paper.py: the imagenet regime needs imagenet=<converted '
                     'checkpoint .msgpack> (nothing can be downloaded at run time)')
  if a.dataset != 'phantom':
    _check_sources(a, inits)
  c.finetune.inits = ','.join(inits)          # comma-separated: scratch, imagenet, ssl, ssl_matched, curricular
  if a.fractions:
    c.finetune.label_fractions = tuple(float(f) for f in _list(a.fractions))
  c.finetune.num_seeds = a.seeds
  c.finetune.protocols = ','.join(_list(a.protocols))  # finetune, linear, knn
  c.finetune.imagenet_checkpoint = a.imagenet  # converted encoder (python -m cxr_jax.cli.convert)
  c.pretrain.init = a.stage1_init             # 'imagenet': curricular stage 1 starts from it
  if a.curriculum != 'tasks':
    c.pretrain.ssl_stage = ''                 # the stage run alone as 'ssl' ('' = the last)
  if a.imagenet:
    # converted ImageNet weights exist only for the full-width ResNet with the 7x7 stem
    c.model.width = 1.0
    c.model.stem = 'imagenet'

  c.explain.enabled = True                    # Grad-CAM/occlusion attention per fine-tuning job
  c.explain.num_overlays = 2                  # overlay images per class (same images for all)
  c.explain.umap = True                       # embeddings/<init>.npz + the report's UMAP figure
  c.explain.randomise = 'head,full'           # Grad-CAM randomisation sanity tests
  if a.dataset == 'phantom':
    # dataset fields holding masks: lesion = the opacities. (The confounding marker's
    # region, cxr_jax.explain.analysis.marker_region_masks, is not a stored field.)
    c.explain.extra_masks = 'lesion,marker'
  else:
    from cxr_jax.data import schema
    c.explain.extra_masks = schema.extra_masks(builder)

  if a.runlocal:
    _shrink(c, a)
  if a.findings:  # multi-label: one sigmoid per finding of the builder's `targets`
    c.finetune.data.findings = a.findings.replace('+', ',')
    if a.dataset == 'phantom':
      c.phantom = c.phantom + ',findings=True'
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
    # rendered at that size (not a 64 px phantom upsampled), the marker and lesions with it
    c.phantom = PHANTOM.replace('size=64,', f'size={a.size},')
  c.finetune.label_fractions = (0.25, 1.0)
  # The last stage's map is 2x2 at 64 px with the imagenet stem: too coarse for Grad-CAM to
  # tell lungs from borders. Stage 3's map (4x4 at 64 px, 8x8 at 128 px) can, at no
  # training cost.
  c.explain.stage = 3 if (c.model.stem == 'imagenet' and c.finetune.image_size <= 128) else 0


def _task_curriculum(c, tasks: list[str]):
  """curriculum=tasks: the stage curriculum moves to config.pretrain.curricula.stages and
  config.pretrain.stages becomes one stage per task, each a copy of the target-domain
  stage (the stage curriculum's last) running that task; FLOP-matched controls."""
  target = c.pretrain.stages[-1]
  c.pretrain.curricula.stages = list(c.pretrain.stages)
  stages = []
  for task in tasks:
    # the same data spec object: its options stay the phantom's FieldReference
    stage = ml_collections.ConfigDict({k: target[k] for k in target.keys()})
    stage.name, stage.method = task, task
    stage.keep_optimizer = False  # a change of method hands over the encoder only
    stages.append(stage)
  c.pretrain.stages = stages
  c.pretrain.ssl_stage = ''  # each task alone runs the target stage: the last
  c.pretrain.match = 'flops'


def _real(c, a, builder):
  """A two-stage curriculum on real chest X-rays at 224 px, ResNet-50: for a GPU."""
  from cxr_jax.data import schema
  size = a.size or 224
  options = ','.join(_list(a.options))
  # 'auto': bfloat16 compute on a GPU/TPU (parameters stay float32; agreement with
  # float32 tested in tests/train/test_mixed_precision.py), float32 on CPU
  c.model.update(dict(name=a.backbone or 'resnet50', width=1.0, stem='imagenet',
                      dtype='auto'))
  c.checkpoint_every = 1000
  c.log_every = 50
  c.eval_batch_size = 256
  c.worker_count = -1  # from the host's cores: min(cores - 1, 8), 0 on <= 2 cores
  c.pretrain.monitor_every = 2000
  for name in METHODS:  # the methods' own defaults: the demo's recipes are for 270 steps
    c.pretrain[name] = get_method(name).DEFAULTS.copy_and_resolve_references()
  c.pretrain.optimizer = common.optimizer_config(
      'lars', lr=0.3, base_batch_size=256, lr_scaling='linear', warmup_steps=1000,
      weight_decay=1e-6)
  target = common.data(a.dataset, schema.ssl_split(builder), options, a.data_root)
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
      name=a.dataset, options=options, manual_dir=a.data_root,
      train_split='train', val_split='val', test_split='test', findings=''))
  c.finetune.label_fractions = (0.01, 0.1, 1.0)
  c.finetune.steps = 5000
  c.finetune.batch_size = 64
  c.finetune.image_size = size
  c.finetune.strength = 0.3
  c.finetune.eval_every = 250
  c.finetune.optimizer = common.optimizer_config(
      'adamw', lr=3e-4, base_batch_size=64, lr_scaling='none', warmup_steps=200,
      weight_decay=1e-4)


def _check_sources(a, inits: list[str]):
  """Real data comes from raw folders (prepared on first use) or from data_dir, where it
  was prepared before: a run that has neither fails here, naming the arguments to give,
  not later in the data pipeline."""
  if a.data_dir:  # may hold the prepared data; the pipeline names what it lacks
    return
  missing = []
  if not a.data_root:
    missing.append(f'dataset={a.dataset} needs data_root=<the folder of its raw files>')
  if 'curricular' in inits and a.stage1 == 'image_folder' and not a.natural_dir:
    missing.append('stage1=image_folder (the default) needs natural_dir=<a folder of '
                   'natural images>; or stage1=none (no natural-image stage), or '
                   'stage1=cxr_collection with stage1_dir=<its folder>')
  if 'curricular' in inits and a.stage1 == 'cxr_collection' and not a.stage1_dir:
    missing.append('stage1=cxr_collection needs stage1_dir=<the folder of the collection>; '
                   'or stage1=none')
  if missing:
    raise ValueError('configs/paper.py: ' + '; '.join(missing) + ' (or data_dir=<the TFDS '
                     'folder where they are prepared>)')


def _shrink(c, a):
  """runlocal: every code path at the smallest sizes (numbers meaningless)."""
  if a.dataset == 'phantom':
    c.phantom = PHANTOM_LOCAL
  c.model.width = 0.125 if not a.imagenet else c.model.width
  for stage in [*c.pretrain.stages, *c.pretrain.curricula.get('stages', [])]:
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
