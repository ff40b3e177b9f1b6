"""Tests for cxr_jax.curriculum: schedules and pacing functions against their formulas."""
import math

import numpy as np
import pytest

from cxr_jax import curriculum

N = 100  # steps in the stage


def _values(spec, steps=(0, 1, 13, 25, 50, 74, 75, 99, 100, 150)):
  f = curriculum.make_schedule(spec, N)
  return steps, [float(f(t)) for t in steps]


def test_constant_and_plain_number():
  _, values = _values(curriculum.schedule('constant', 0.3, 0.9))
  np.testing.assert_allclose(values, 0.3, rtol=1e-6)
  _, values = _values(0.7)
  np.testing.assert_allclose(values, 0.7, rtol=1e-6)
  assert curriculum.schedule('linear', 0.4).end == 0.4  # end defaults to start


def test_linear():
  steps, values = _values(curriculum.schedule('linear', 0.2, 1.0))
  expected = [0.2 + 0.8 * min(t, N) / N for t in steps]
  np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_cosine():
  steps, values = _values(curriculum.schedule('cosine', 0.1, 0.9))
  expected = [0.9 + (0.1 - 0.9) * 0.5 * (1 + math.cos(math.pi * min(t, N) / N)) for t in steps]
  np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7)
  # the BYOL EMA rule is this schedule from tau_base to 1
  f = curriculum.make_schedule(curriculum.schedule('cosine', 0.996, 1.0), N)
  np.testing.assert_allclose(float(f(50)), 0.998, rtol=1e-7)


def test_step():
  # 4 levels start, start + d, start + 2d, end, d = (end - start) / 3, changing at
  # round(N i / 4) for i = 1, 2, 3
  steps, values = _values(curriculum.schedule('step', 0.0, 0.9, steps=4))
  edges = [25, 50, 75]
  expected = [0.3 * sum(t >= e for e in edges) for t in steps]
  np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7)
  assert values[steps.index(74)] == pytest.approx(0.6)
  assert values[steps.index(75)] == pytest.approx(0.9)


def test_exponential():
  steps, values = _values(curriculum.schedule('exponential', 0.1, 1.0))
  expected = [0.1 * 10 ** (min(t, N) / N) for t in steps]
  np.testing.assert_allclose(values, expected, rtol=1e-5)
  np.testing.assert_allclose(values[steps.index(50)], math.sqrt(0.1), rtol=1e-5)
  steps, values = _values(curriculum.schedule('exponential', 2.0, 0.5))  # decreasing
  np.testing.assert_allclose(values, [2.0 * 0.25 ** (min(t, N) / N) for t in steps], rtol=1e-5)


@pytest.mark.parametrize('start,end', [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_exponential_needs_positive_values(start, end):
  with pytest.raises(ValueError, match='exponential'):
    curriculum.make_schedule(curriculum.schedule('exponential', start, end), N,
                             name='x.temperature')


def test_unknown_kind_names_the_key():
  with pytest.raises(ValueError, match='stage.strength.kind'):
    curriculum.make_schedule(curriculum.schedule('quadratic', 0, 1), N, name='stage.strength')


# --- pacing functions (Hacohen & Weinshall 2019; Platanios et al. 2019) ---

def test_pacing_hand_values():
  g = curriculum.pacing_fraction
  # linear, s = 0.2, T = 100: 0.2 + 0.8 t / 100
  assert g('linear', 0, 0.2, 100) == pytest.approx(0.2)
  assert g('linear', 50, 0.2, 100) == pytest.approx(0.6)
  assert g('linear', 100, 0.2, 100) == 1.0 and g('linear', 400, 0.2, 100) == 1.0
  # root (p = 2), s = 0.2: sqrt(0.04 + 0.96 t / 100)
  assert g('root', 50, 0.2, 100) == pytest.approx(math.sqrt(0.52))
  assert g('root', 25, 0.2, 100) == pytest.approx(math.sqrt(0.28))
  assert g('root', 50, 0.2, 100, power=3) == pytest.approx((0.008 + 0.992 / 2) ** (1 / 3))
  # step, s = 0.1, x2: J = ceil(log2 10) = 4 jumps, one every T / 4 = 25 steps
  for t, expected in [(0, 0.1), (24, 0.1), (25, 0.2), (49, 0.2), (50, 0.4), (74, 0.4),
                      (75, 0.8), (99, 0.8), (100, 1.0), (1000, 1.0)]:
    assert g('step', t, 0.1, 100, increase=2.0) == pytest.approx(expected), t
  # step, s = 0.25, x2: J = 2 jumps at 50 and 100 (exact powers reach 1 at T, not before)
  assert [g('step', t, 0.25, 100) for t in (0, 49, 50, 99, 100)] == pytest.approx(
      [0.25, 0.25, 0.5, 0.5, 1.0])
  # exponential, s = 0.25: 0.25^(1 - t/100)
  assert g('exponential', 0, 0.25, 100) == pytest.approx(0.25)
  assert g('exponential', 50, 0.25, 100) == pytest.approx(0.5)
  assert g('exponential', 100, 0.25, 100) == pytest.approx(1.0)
  # none, and T <= 0: everything visible
  assert g('none', 0, 0.1, 100) == 1.0 and g('linear', 0, 0.1, 0) == 1.0


@pytest.mark.parametrize('kind', ['linear', 'root', 'step', 'exponential'])
def test_pacing_is_monotone_and_vectorised(kind):
  t = np.arange(0, 130)
  values = curriculum.pacing_fraction(kind, t, 0.1, 100)
  assert values.shape == t.shape
  assert np.all(np.diff(values) >= 0) and values[0] == pytest.approx(0.1)
  assert np.all(values[:100] < 1.0) and np.all(values[100:] == 1.0)
  scalars = [curriculum.pacing_fraction(kind, int(s), 0.1, 100) for s in t]
  np.testing.assert_allclose(values, scalars)


def test_make_pacing_uses_the_stage_fraction_and_validates():
  f = curriculum.make_pacing(curriculum.pacing('linear', start=0.5, full_at=0.5), num_steps=200)
  assert f(0) == 0.5 and f(50) == pytest.approx(0.75) and f(100) == 1.0
  assert curriculum.make_pacing(None, 10)(0) == 1.0
  for bad in [curriculum.pacing('exponential', start=0.0), curriculum.pacing('step', increase=1.0),
              curriculum.pacing('linear', start=1.5), curriculum.pacing('cubic')]:
    with pytest.raises(ValueError, match='curriculum.pacing'):
      curriculum.make_pacing(bad, 100, name='curriculum.pacing')
