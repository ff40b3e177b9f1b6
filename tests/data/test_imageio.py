"""Image decoding and storage resizing: bit depths, colour modes, aspect, masks."""
import numpy as np
import pytest
from PIL import Image

from cxr_jax.data import imageio


def _gradient(h=20, w=30, hi=255, dtype=np.uint8):
  return np.tile(np.linspace(0, hi, w), (h, 1)).round().astype(dtype)


def test_8bit_gray_png_keeps_values(tmp_path):
  x = _gradient()
  Image.fromarray(x).save(tmp_path / 'a.png')
  out = imageio.read_gray(tmp_path / 'a.png')
  assert out.dtype == np.float32 and out.shape == (20, 30)
  np.testing.assert_allclose(out, x / 255.0, atol=1e-6)


def test_16bit_png_scaled_by_bit_depth_not_max(tmp_path):
  # A 16-bit image that only reaches 4095 (12-bit data) must stay dark, not be stretched.
  x = _gradient(hi=4095, dtype=np.uint16)
  Image.fromarray(x).save(tmp_path / 'a16.png')
  out = imageio.read_gray(tmp_path / 'a16.png')
  np.testing.assert_allclose(out, x / 65535.0, atol=1e-6)
  assert out.max() == pytest.approx(4095 / 65535.0)


def test_rgb_and_rgba_give_luminance(tmp_path):
  x = _gradient()
  rgb = np.stack([x, x, x], -1)
  rgba = np.concatenate([rgb, np.full(x.shape + (1,), 255, np.uint8)], -1)
  Image.fromarray(rgb).save(tmp_path / 'rgb.jpg', quality=100)
  Image.fromarray(rgba).save(tmp_path / 'rgba.png')
  np.testing.assert_allclose(imageio.read_gray(tmp_path / 'rgba.png'), x / 255.0, atol=1e-5)
  np.testing.assert_allclose(imageio.read_gray(tmp_path / 'rgb.jpg'), x / 255.0, atol=0.03)
  # Pure colours weigh as BT.601 luma, the weights of PIL's convert('L').
  red = np.zeros((4, 4, 3), np.uint8)
  red[..., 0] = 255
  Image.fromarray(red).save(tmp_path / 'red.png')
  assert imageio.read_gray(tmp_path / 'red.png')[0, 0] == pytest.approx(0.299, abs=1e-5)


def test_resize_pad_keeps_aspect_and_centres():
  x = np.ones((100, 50), np.float32)  # tall: long side 100 -> 20, width 10
  out = imageio.resize_pad(x, 20)
  assert out.shape == (20, 20)
  np.testing.assert_array_equal(out[:, :5], 0)  # padding left
  np.testing.assert_array_equal(out[:, 15:], 0)  # padding right
  np.testing.assert_allclose(out[:, 5:15], 1)


def test_area_resize_averages():
  x = np.zeros((4, 4), np.float32)
  x[::2, ::2] = 1.0  # one bright pixel in every 2x2 block
  np.testing.assert_allclose(imageio.resize_pad(x, 2), 0.25, atol=1e-6)


def test_orientation_preserved():
  x = np.zeros((40, 60), np.float32)
  x[:10, :10] = 1.0  # marker top-left
  out = imageio.storage_image(x, 30)
  assert out.shape == (30, 30, 1) and out.dtype == np.uint8
  # 60 -> 30 wide, 40 -> 20 high, padded 5 rows top and bottom.
  assert out[5:10, 0:5, 0].min() == 255
  assert out[5:10, 25:30, 0].max() == 0 and out[20:25, 0:5, 0].max() == 0


def test_storage_mask_nearest_and_resized_to_image():
  mask = np.zeros((256, 256), np.uint8)
  mask[:, :128] = 1
  out = imageio.storage_mask(mask, 64, shape=(299, 299))
  assert set(np.unique(out)) == {0, 1}
  assert out[:, :30].all() and not out[:, 34:].any()
  np.testing.assert_array_equal(imageio.storage_mask(None, 8), np.zeros((8, 8, 1)))


def test_mask_from_rgb_and_rgba(tmp_path):
  m = np.zeros((6, 6, 4), np.uint8)
  m[..., 3] = 255  # opaque alpha everywhere: alpha must not count as foreground
  m[2:4, 2:4, 0] = 187
  Image.fromarray(m).save(tmp_path / 'm.png')
  out = imageio.read_mask(tmp_path / 'm.png')
  assert out.sum() == 4 and out[2, 2] == 1


def test_cropped_mask_pasted_at_offset(tmp_path):
  Image.fromarray(np.full((3, 2), 255, np.uint8)).save(tmp_path / 'crop.png')
  canvas = imageio.load_mask((imageio.MaskPart(str(tmp_path / 'crop.png'), (5, 1)),), (10, 8))
  assert canvas.sum() == 6 and canvas[1:4, 5:7].all()
  # Crops reaching past the canvas are clipped, not an error.
  canvas = imageio.load_mask((imageio.MaskPart(str(tmp_path / 'crop.png'), (7, 8)),), (10, 8))
  assert canvas.sum() == 2


def test_corrupt_and_missing_files(tmp_path):
  Image.fromarray(_gradient()).save(tmp_path / 'ok.png')
  data = (tmp_path / 'ok.png').read_bytes()
  (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
  with pytest.raises(imageio.UnreadableImageError, match='cut.png'):
    imageio.read_gray(tmp_path / 'cut.png')
  with pytest.raises(FileNotFoundError, match='nope.png'):
    imageio.read_gray(tmp_path / 'nope.png')
