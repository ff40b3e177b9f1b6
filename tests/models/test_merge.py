"""Carried weights are merged strictly: every leaf present, none in excess, same shapes."""
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models.merge import merge_strict


def _tree(width=4):
  return {'encoder': {'conv': {'kernel': jnp.zeros((3, 3, 1, width))},
                      'bn': {'scale': jnp.ones((width,))}},
          'head': {'kernel': jnp.zeros((width, 2), jnp.float32)}}


def test_every_leaf_comes_from_the_source_as_a_copy_in_the_fresh_dtype():
  given = {'encoder': {'conv': {'kernel': np.full((3, 3, 1, 4), 2.0, np.float64)},
                       'bn': {'scale': np.full((4,), 3.0)}},
           'head': {'kernel': np.full((4, 2), 5.0)}}
  out = merge_strict(_tree(), given, 'the source')
  assert list(out) == ['encoder', 'head'] and list(out['encoder']) == ['conv', 'bn']
  np.testing.assert_array_equal(out['encoder']['conv']['kernel'], 2.0)
  assert out['head']['kernel'].dtype == jnp.float32
  assert out['head']['kernel'] is not given['head']['kernel']


@pytest.mark.parametrize('given, message', [
    ({'encoder': {'conv': {'kernel': np.zeros((3, 3, 1, 4))}}, 'head': {'kernel': np.zeros((4, 2))}},
     'encoder/bn is missing'),
    (dict(_tree(), extra={'w': np.zeros(1)}), 'extra is unexpected'),
    (_tree(width=8), r'encoder/conv/kernel is \(3, 3, 1, 8\), the model has \(3, 3, 1, 4\)'),
])
def test_a_missing_extra_or_reshaped_leaf_is_an_error_naming_it(given, message):
  with pytest.raises(ValueError, match=f'the source does not fit the model: {message}'):
    merge_strict(_tree(), given, 'the source')
