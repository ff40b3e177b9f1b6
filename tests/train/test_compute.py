"""FLOP counts of steps (XLA's cost analysis on the CPU backend) against hand counts, and
ssl_matched's length when matched by FLOPs."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax import monitoring

from configs import default
from cxr_jax import pretraining, regimes
from cxr_jax.curriculum import schedule
from cxr_jax.train import compute, sharding
from tests.test_experiment import tiny_config


class TwoConvs(nn.Module):
  padding: str = 'VALID'

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3), strides=2, padding=self.padding, use_bias=False)(x)
    return nn.Conv(16, (5, 5), padding=self.padding, use_bias=False)(x)


def _valid_taps(size: int, kernel: int, stride: int, padding: str) -> int:
  """Sum over output positions of one axis of the kernel taps that fall on real pixels
  (TF/flax 'SAME': the padding's smaller half before the image)."""
  if padding == 'VALID':
    out, before = (size - kernel) // stride + 1, 0
  else:
    out = -(-size // stride)
    before = max((out - 1) * stride + kernel - size, 0) // 2
  return sum(int(0 <= i * stride - before + d < size) for i in range(out) for d in range(kernel))


@pytest.mark.parametrize('padding', ['VALID', 'SAME'])
def test_conv_flops_equal_a_hand_count(padding):
  batch, size = 3, 20
  x = np.zeros((batch, size, size, 1), np.float32)
  net = TwoConvs(padding)
  params = net.init(jax.random.key(0), x)
  counted = compute.step_flops(lambda p, x: net.apply(p, x), params, x)
  # 2 FLOPs (multiply, add) per kernel tap on a real pixel, per input and output channel
  taps1 = _valid_taps(size, 3, 2, padding) ** 2
  size2 = (size - 3) // 2 + 1 if padding == 'VALID' else -(-size // 2)
  taps2 = _valid_taps(size2, 5, 1, padding) ** 2
  hand = 2 * batch * (taps1 * 1 * 8 + taps2 * 8 * 16)
  if padding == 'VALID':  # then the textbook 2·H_out·W_out·K·K·C_in·C_out per image holds
    out1, out2 = (size - 3) // 2 + 1, size2 - 4
    assert hand == 2 * batch * (out1 ** 2 * 9 * 1 * 8 + out2 ** 2 * 25 * 8 * 16)
  assert counted == hand


def test_a_48_px_step_costs_about_the_square_of_the_size_ratio_of_a_64_px_one():
  """Forward, backward and update of a conv net: about (48/64)^2 = 0.5625 of the 64 px
  step (a little less: the padded border, where taps fall off the image, is a larger part
  of a smaller map; 0.548 here)."""
  net = TwoConvs('SAME')
  params = net.init(jax.random.key(0), np.zeros((1, 64, 64, 1), np.float32))

  def step(p, x):
    grads = jax.grad(lambda p: jnp.mean(net.apply(p, x) ** 2))(p)
    return jax.tree_util.tree_map(lambda a, g: a - 0.1 * g, p, grads)
  f48, f64 = (compute.step_flops(step, params, np.zeros((4, s, s, 1), np.float32))
              for s in (48, 64))
  assert f48 / f64 == pytest.approx((48 / 64) ** 2, rel=0.05)
  assert f48 / f64 < (48 / 64) ** 2


def test_a_jitted_step_and_abstract_inputs_count_the_same():
  f = jax.jit(lambda a, b: a @ b)
  a, b = np.ones((8, 16), np.float32), np.ones((16, 4), np.float32)
  assert compute.step_flops(f, a, b) == compute.step_flops(
      f, jax.ShapeDtypeStruct(a.shape, a.dtype), jax.ShapeDtypeStruct(b.shape, b.dtype))
  assert compute.step_flops(f, a, b) == 2 * 8 * 16 * 4


def _per_size(size: int) -> float:  # a step whose cost goes with the pixels (made up)
  return 1000.0 * size * size


def _stage_total(pretrain):
  def total(index, steps):
    sizes = pretraining.image_sizes(pretrain.stages[index].image_size, steps, 'image_size')
    return sum(_per_size(int(s)) for s in sizes)
  return total


def test_matched_by_flops_gives_the_single_stage_the_curriculum_flops():
  """The demo's curriculum, 120 steps at 48 px then 150 at 64 px: 120 · 0.5625 + 150 =
  217.5 steps at 64 px, so 218 (by images it would be 270)."""
  config = default.get_config()
  config.pretrain.match = 'flops'
  assert regimes.matched_steps(config.pretrain, _stage_total(config.pretrain)) == 218
  assert math.ceil((120 * _per_size(48) + 150 * _per_size(64)) / _per_size(64)) == 218
  config.pretrain.match = 'images'
  assert regimes.matched_steps(config.pretrain) == 270
  config.pretrain.match = 'flops'
  with pytest.raises(ValueError, match="match='flops'"):
    regimes.matched_steps(config.pretrain)


def test_matched_by_flops_finds_the_fewest_steps_of_a_resized_stage():
  """A target stage with progressive resizing (32 -> 64 px over its steps): its mean cost
  per step depends on its length; the answer is the fewest steps reaching the curriculum's
  FLOPs, as a search over every length finds."""
  config = default.get_config()
  config.pretrain.match = 'flops'
  config.pretrain.stages[0].steps, config.pretrain.stages[1].steps = 12, 15  # a short search
  config.pretrain.stages[1].image_size = schedule('linear', 32, 64)
  total = _stage_total(config.pretrain)
  target = total(0, 12) + total(1, 15)
  n = regimes.matched_steps(config.pretrain, total)
  assert total(1, n) >= target and total(1, n - 1) < target
  assert n == next(m for m in range(1, 100) if total(1, m) >= target)
  assert n > 15  # the 48 px stage's FLOPs on top of its own
  matched = regimes.matched_config(config, total)
  assert matched.pretrain.stages[1].steps == n and config.pretrain.stages[1].steps == 15


def test_counts_are_reused_across_runs_through_the_cache_file(tmp_path, monkeypatch):
  """A second counter of the same stage key (a repeated run, another workdir) takes the
  count from the file beside the compilation cache instead of tracing again; another
  key counts afresh, and without a cache folder nothing is kept."""
  traced = []

  def fake_job_flops(job, sizes):
    traced.append((job, tuple(sizes)))
    return {int(s): 1000.0 * s for s in sizes}

  monkeypatch.setattr(compute, 'job_flops', fake_job_flops)
  folder = [str(tmp_path)]  # what jax.config.jax_compilation_cache_dir would say
  monkeypatch.setattr(compute, '_cache_folder', lambda: folder[0])

  def counter(key):
    return compute.StageFlops(build_job=lambda index: f'job{index}',
                              sizes_of=lambda index, steps: [48] * steps, key=lambda index: key)

  assert counter('k1').per_step(0, [48, 64]) == {48: 48000.0, 64: 64000.0}
  assert counter('k1').per_step(0, [64, 48]) == {48: 48000.0, 64: 64000.0}
  assert traced == [('job0', (48, 64))]  # the second counter traced nothing
  assert counter('k2').per_step(0, [48]) == {48: 48000.0}
  assert traced[-1] == ('job0', (48,))
  (tmp_path / compute.CACHE_FILE).write_text('{"torn')  # a torn file is only a miss
  assert counter('k1').per_step(0, [48]) == {48: 48000.0} and len(traced) == 3
  folder[0] = None
  counter('k3').per_step(0, [48])
  counter('k3').per_step(0, [48])
  assert len(traced) == 5


_traced = []  # (event, program) of JAX's compile events while a test listens
_listening = []


def _on_compile_event(event, seconds, **kwargs):
  del seconds
  if _listening:
    _traced.append((event.rsplit('/', 1)[-1], kwargs.get('fun_name')))


monitoring.register_event_duration_secs_listener(_on_compile_event)


def test_a_stage_on_cpu_counts_its_step_from_the_lowering_it_compiles(tmp_path, tiny_data_dir,
                                                                     monkeypatch):
  """A running stage's FLOPs per step, noted from the program its step compiles, equal the
  separate count of the same stage (`job_flops`: its own trace), and the step is traced and
  compiled once for both (the count costs no trace of its own); the counter of the run
  then finds the count without tracing."""
  monkeypatch.setattr(compute, '_lowered', {})
  monkeypatch.setattr(compute, '_cache_folder', lambda: None)
  config = tiny_config(tiny_data_dir)
  mesh = sharding.make_mesh()
  job = pretraining.pretrain_job(config, 1, None, mesh, tmp_path, tiny_data_dir)
  batch = sharding.to_global({k: np.zeros(v.shape, v.dtype)
                              for k, v in job.train_step.input_spec.items()}, mesh)
  state = job.init_state()
  _traced.clear()
  _listening.append(True)
  try:
    for _ in range(2):
      state, _ = job.train_step(state, batch)
  finally:
    _listening.clear()
  step_events = [e for e, name in _traced if name in ('step', 'jit(step)')]
  assert sorted(step_events) == ['backend_compile_duration', 'jaxpr_to_mlir_module_duration',
                                 'jaxpr_trace_duration']
  key = pretraining.flops_key(config, 1)
  noted = compute.cached_counts(key, [32])
  assert list(noted) == [32]
  assert noted[32] == compute.job_flops(job, [32])[32]
  counter = compute.StageFlops(build_job=lambda index: pytest.fail('traced again'),
                               sizes_of=lambda index, steps: [32] * steps,
                               key=lambda index: key)
  assert counter.per_step(1, [32], trace=False) == noted
  assert compute.StageFlops(build_job=None, sizes_of=None, key=lambda index: 'other').per_step(
      0, [32], trace=False) is None
