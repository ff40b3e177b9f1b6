"""The embedded demo: a two-stage SimCLR curriculum on synthetic phantom radiographs, then
fine-tuning from scratch and from the curriculum's encoder on few labels.

    python launch.py --config=configs/default.py --workdir=runs/demo
    cxr-launch --config=default --workdir=runs/demo      # installed, outside a checkout

Expected (2-core CPU, jax 0.10.2): about 4-5 minutes; <workdir>/report.md shows curricular
SSL ahead of scratch in test macro AUROC over 3 seeds (numbers in README.md).
Multi-label variant: `configs/default.py:task=findings` builds the phantom with its four
findings (opacity, effusion, cardiomegaly, device; docs/phantom.md) and fine-tunes one
sigmoid per finding; the report then shows per-finding AUROC and the mean AUROC with CIs
(3 min 10 s on a quiet 2-core CPU VM with a warm compilation cache, README.md).
Study of curricula: `configs/default.py:curriculum=tasks` (docs/paper.md, "Task curriculum
vs its tasks alone"): the task curriculum rotation -> SimCLR (the regime curricular)
against each task alone at equal FLOPs (alone:rotation, alone:simclr), and today's stage
curriculum low_res -> full_res (curriculum:stages) against its ssl_matched control
(ssl_matched:stages), with scratch; monitors off.
Knobs worth trying: --config.pretrain.stages[1].steps=400, --config.finetune.num_seeds=5,
--config.phantom='size=64,num_train=200,...' (all phantom options: cxr_jax/data/builders/phantom.py).
"""
import ml_collections
from ml_collections import config_dict

from configs import common
from cxr_jax import curriculum
from cxr_jax.curriculum import schedule
from cxr_jax import ssl


TASKS = ('label', 'findings')
CURRICULA = ('stages', 'tasks')


def get_config(arg=None):
  a = common.parse_arg(arg, task='label', curriculum='stages')
  if a.task not in TASKS:
    raise ValueError(f'configs/default.py: task={a.task!r}; choose from {TASKS}')
  if a.curriculum not in CURRICULA:
    raise ValueError(f'configs/default.py: curriculum={a.curriculum!r}; choose from {CURRICULA}')
  c = ml_collections.ConfigDict()
  c.seed = 0                  # root of every random key of the run
  c.data_dir = ''             # TFDS data_dir; '' -> <workdir>/tfds
  c.worker_count = 0          # Grain worker processes per loader (0: in the main process)
  c.read_threads = 0          # Grain prefetch threads per loader (0: read in the loop, overlapped
                              # with the device step by JAX's async dispatch; raise for slow disks)
  c.image_cache = True        # pretraining and fine-tuning read a raw, uncompressed copy
                              # of the images (written once next to the dataset)
  c.checkpoint_every = 100    # steps between Orbax checkpoints (and at the end, and on SIGTERM)
  c.log_every = 10            # steps between metric lines
  c.allow_changes = ''        # comma-separated config keys (a key covers those under it) that
                              # may differ from the workdir's config.json when resuming, e.g.
                              # 'pretrain.optimizer.lr' after a divergence; recorded there
  c.augment_on = 'device'     # where pretraining cuts its views: 'device' (in the jit step)
                              # or 'host' (numpy, in the loader / Grain workers; same
                              # contract, docs/benchmarks.md compares their cost)
  c.eval_batch_size = 128     # global batch for prediction (val/test)
  # the phantom's builder options, shared by every data spec below (one dataset, several splits)
  c.phantom = ('size=64,num_unlabeled=2048,num_train=64,num_val=128,num_test=512,'
               'confounder_strength=0.8,seed=0')
  if a.task == 'findings':  # the phantom's independent findings, in `targets`
    c.phantom += ',findings=True'
  phantom = c.get_ref('phantom')

  c.model = ml_collections.ConfigDict(dict(
      name='resnet18',        # resnet18 | resnet34 | resnet50 | densenet121 | densenet169
      width=0.25,             # channel multiplier on the standard 64 base channels
      stem='imagenet',        # 'imagenet' (7x7/2 + max-pool); 'small' (3x3/1, no pool) for <= 32 px
      dtype='float32',        # compute dtype ('bfloat16' on GPU/TPU); parameters stay float32
      remat=False,            # recompute block activations in the backward pass (large images)
  ))

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.init = 'scratch'             # 'imagenet': stage 1 starts from finetune.imagenet_checkpoint
  c.pretrain.ssl_stage = ''               # the stage run alone for the 'ssl' and 'ssl_matched'
                                          # inits ('' = the last)
  c.pretrain.match = 'images'             # ssl_matched runs as long as the curriculum in
                                          # 'images' (steps x batch) or 'flops' (XLA's count)
  c.pretrain.method = 'simclr'            # the stages' method unless a stage names its own
                                          # (stages[i].method): simclr | moco | byol |
                                          # barlow_twins | vicreg, or a pretext task:
                                          # rotation | jigsaw | relative_position | inpainting
  for name in ssl.METHODS:                # each method's hyperparameters: config.pretrain.<name>,
    c.pretrain[name] = ssl.get_method(name).DEFAULTS.copy_and_resolve_references()
  # each method's optimizer recipe: config.pretrain.<name>.optimizer overrides
  # config.pretrain.optimizer for the stages that run it. Barlow Twins and VICReg were
  # measured best at lr 3e-3 at demo size (docs/methods.md); the others keep 1e-3
  c.pretrain.barlow_twins.optimizer.lr = 3e-3
  c.pretrain.vicreg.optimizer.lr = 3e-3
  # demo-sized recipes (README, "Per SSL method"): a 270-step run needs a faster target
  # network than BYOL's 0.996 (made for runs of 10^5 steps: its time constant, 250 steps,
  # is the whole run); 0.99 is BYOL's value for shorter runs and small batches
  c.pretrain.byol.ema_base = 0.99
  # MoCo: v3 (in-batch negatives, symmetric loss, BN projector of 3 layers, predictor, key
  # encoder rate 0.99 -> 1 along a cosine: the v3 paper's recipe at our widths). v2's
  # queue learned too little in 270 steps (its loss stayed near ln K) and lost to scratch
  # even with rate 0.99 and a queue of 1024: loss 6.64 against ln(K+1) = 6.93 (README)
  c.pretrain.moco.update(dict(variant='v3', proj_layers=3, proj_bn=True, ema_base=0.99,
                              ema_cosine=True))
  c.pretrain.monitor_every = 50           # steps between kNN / linear-probe monitors (0: off)
  # AdamW: LARS (SimCLR's choice) is built for large batches and long schedules; its
  # trust ratio (1e-3) moves weights too little in a few hundred steps
  c.pretrain.optimizer = common.optimizer_config(
      'adamw', lr=1e-3, base_batch_size=128, lr_scaling='linear', warmup_steps=10,
      weight_decay=1e-4)
  # the curriculum: low resolution and gentle views first, then full resolution, stronger
  # views. Phantoms are alike (pixel correlation 0.9 between different images): at
  # strength 1 two views of one image differ as much as two images, and SimCLR stays at
  # chance; 0.2-0.5 leaves the instance recognisable. A stage's positives='patient' takes
  # view 2 from another image of the same patient (the phantom's images_per_patient option
  # makes patients with follow-ups); default 'image'.
  c.pretrain.stages = stage_curriculum(phantom)
  # named curricula, each a stage list like stages above: the regimes curriculum:<name>
  # and ssl_matched:<name> of config.finetune.inits (none here; curriculum=tasks has one)
  c.pretrain.curricula = ml_collections.ConfigDict()

  # data-difficulty curriculum inside each stage (Hacohen & Weinshall 2019): batches drawn
  # from the easiest g(t) fraction of the stage's data; kind 'none' = uniform shuffling
  c.curriculum = ml_collections.ConfigDict()
  c.curriculum.pacing = curriculum.pacing('none', start=0.2, full_at=0.5)
  c.curriculum.difficulty = 'entropy'     # entropy | contrast | metadata:<field>

  c.finetune = ml_collections.ConfigDict()
  c.finetune.data = ml_collections.ConfigDict(dict(
      name='phantom', options=phantom, manual_dir='',
      train_split='train', val_split='val', test_split='test',
      # '' = the single `label` (softmax); 'all' or comma-separated names of the builder's
      # findings = multi-label on `targets` (one sigmoid each, NaN targets masked out)
      findings='all' if a.task == 'findings' else ''))
  c.finetune.inits = 'scratch,curricular'  # comma-separated: scratch, imagenet, ssl,
                                            # ssl_matched (the ssl stage alone for as many
                                            # images as the curriculum), curricular,
                                            # alone:<method>, curriculum:<name>,
                                            # ssl_matched:<name> (docs/paper.md)
  c.finetune.protocols = 'finetune'         # comma-separated: finetune, linear, knn
  c.finetune.imagenet_checkpoint = ''       # a converted .msgpack (python -m cxr_jax.cli.convert)
  c.finetune.label_fractions = (1.0,)       # fractions of the train split's patients
  c.finetune.num_seeds = 3
  c.finetune.steps = 200
  c.finetune.batch_size = 32
  c.finetune.image_size = 64
  c.finetune.strength = 0.3                 # light augmentation while fine-tuning
  c.finetune.eval_every = 25                # steps between val evaluations (model selection)
  c.finetune.optimizer = common.optimizer_config(
      'adamw', lr=1e-3, base_batch_size=32, lr_scaling='none', warmup_steps=10,
      weight_decay=1e-4)

  c.explain = ml_collections.ConfigDict()
  c.explain.enabled = False                 # Grad-CAM lung-attention shares on test (needs masks)
  c.explain.extra_masks = ''                # comma-separated extra mask fields of the dataset
  c.explain.num_overlays = 2                # overlay examples per class in the report
  # encoder stage (ResNet stage / DenseNet block) Grad-CAM looks at: 'auto' = the deepest
  # whose map is at least 8x8 (stage 2 at 64 px, 3 at 128-255 px with the imagenet stem),
  # 0 = the last, or 1-4 (a field of any type: it takes the word or a number)
  c.explain.stage = config_dict.FieldReference('auto', field_type=object)
  c.explain.finding = ''                    # multi-label tasks: the finding Grad-CAM explains
                                            # (absent vs present; '' = the first of
                                            # config.finetune.data.findings)
  c.explain.umap = False                    # save each regime's test-split embeddings
                                            # (<workdir>/embeddings/<init>.npz) and draw
                                            # their UMAP in the report (umap-learn extra)
  c.explain.randomise = ''                  # Grad-CAM randomisation sanity tests, comma-
                                            # separated: head, full (re-initialised weights)
  # the images to explain: a data spec like finetune.data; name '' = finetune.data's test
  # split. Another (masked) dataset measures lung shares of a model trained without masks
  c.explain.data = ml_collections.ConfigDict(dict(
      name='', options='', manual_dir='', split='test'))
  c.explain.masks = 'dataset'               # lung masks: 'dataset' (its own) or
                                            # 'segmenter:<folder>' (python -m cxr_jax.cli.segment)
  if a.curriculum == 'tasks':
    task_study(c, phantom)
  return c


def stage_curriculum(phantom):
  """This project's curriculum of one method (SimCLR): low resolution and gentle views
  first, then full resolution, stronger views."""
  return [
      common.stage('low_res', common.data('phantom', 'unlabeled', phantom), steps=120,
                   batch_size=128, image_size=48, strength=schedule('linear', 0.2, 0.4),
                   temperature=0.2),
      common.stage('full_res', common.data('phantom', 'unlabeled', phantom), steps=150,
                   batch_size=128, image_size=64, strength=0.5, temperature=0.2),
  ]


def task_study(c, phantom):
  """curriculum=tasks: a curriculum of pretext tasks (Sirotkin et al. 2021's meaning of
  'curricular'), rotation prediction then SimCLR, against each task alone at equal FLOPs,
  and the stage curriculum against its FLOP-matched control. The task curriculum is the
  stage curriculum with its first stage's method swapped to rotation (same steps, size,
  views' strength), so the two curricula differ in that stage's task only.
  ssl_matched (the SimCLR stage matched to the task curriculum) would be alone:simclr
  again, so it is left out."""
  stages = stage_curriculum(phantom)  # names kept: stage folders say which step it is
  stages[0].method, stages[1].method = 'rotation', 'simclr'
  c.pretrain.stages = stages
  c.pretrain.curricula.stages = stage_curriculum(phantom)
  c.pretrain.match = 'flops'
  c.pretrain.monitor_every = 0  # monitors off: they cost time and change no result
  c.finetune.inits = ('scratch,alone:rotation,alone:simclr,curricular,ssl_matched:stages,'
                      'curriculum:stages')
