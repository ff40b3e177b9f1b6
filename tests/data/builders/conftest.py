"""Helpers for the builder tests: synthetic chest images, PNG writing, build-and-read."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL = Path(__file__).resolve().parents[3] / '..' / 'shared' / 'data' / 'real'
SIZE = 32  # storage size in tests: small and fast


class Helpers:
  """Fixture makers shared by the builder tests (exposed through the `h` fixture)."""

  REAL = REAL
  SIZE = SIZE

  @staticmethod
  def chest(h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    """uint8 [h, w] chest-like image: dark lungs, bright mediastinum, a bright
    top-left marker so that flips and transposes are caught."""
    rng = np.random.default_rng(seed)
    x = np.full((h, w), 90, np.float64)
    x[h // 6:h * 5 // 6, w // 8:w * 3 // 8] = 30  # lung (image left)
    x[h // 6:h * 5 // 6, w * 5 // 8:w * 7 // 8] = 30  # lung (image right)
    x[:, w * 7 // 16:w * 9 // 16] = 210  # mediastinum
    x[:h // 8, :w // 8] = 255  # orientation marker
    x += rng.normal(0, 2, x.shape)
    return np.clip(x, 0, 255).round().astype(np.uint8)

  @staticmethod
  def lung_mask(h: int = 48, w: int = 40, value: int = 255) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 6:h * 5 // 6, w // 8:w * 3 // 8] = value
    m[h // 6:h * 5 // 6, w * 5 // 8:w * 7 // 8] = value
    return m

  @staticmethod
  def save(path, arr, mode: str | None = None) -> Path:
    """Writes arr as an image; mode 'RGB'/'RGBA' expands a gray array to colour."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(arr)
    if mode == 'RGB':
      arr = np.stack([arr] * 3, -1)
    elif mode == 'RGBA':
      arr = np.concatenate([np.stack([arr] * 3, -1), np.full(arr.shape + (1,), 255,
                                                                np.uint8)], -1)
    Image.fromarray(arr).save(path, **({'quality': 98} if path.suffix in ('.jpg', '.jpeg')
                                       else {}))
    return path

  @staticmethod
  def write(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path

  @staticmethod
  def lungs_and_mediastinum(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean gray inside the lung mask, and in a strip midway between the lungs (the
    mediastinum) over the upper-middle rows of the lungs."""
    img, m = image[..., 0].astype(float), mask[..., 0] > 0
    rows = np.where(m.any(1))[0]
    band = slice(rows[0] + (rows[-1] - rows[0]) // 4, rows[0] + (rows[-1] - rows[0]) // 2)
    xs = np.where(m[band].any(0))[0]
    mid, half = (xs[0] + xs[-1]) // 2, max(1, img.shape[1] // 32)
    return img[m].mean(), img[band, mid - half:mid + half].mean()

  @staticmethod
  def real_or_skip(*parts) -> Path:
    """A folder of ../shared/data/real, or skip the test when it is absent."""
    path = REAL.joinpath(*parts)
    if not path.exists():
      pytest.skip(f'real data folder {path} absent (see ../shared/data/real/README.md)')
    return path

  @staticmethod
  def records(source) -> list[dict]:
    return [source[i] for i in range(len(source))]

  @staticmethod
  def by_id(records) -> dict:
    return {r['id'].decode(): r for r in records}

  @staticmethod
  def check_orientation(image: np.ndarray) -> None:
    """The stored chest keeps its marker top-left and dark lungs beside the mediastinum."""
    img = image[..., 0].astype(float)
    nz = np.argwhere(img > 0)
    (top, left), (bottom, right) = nz.min(0), nz.max(0) + 1
    h, w = bottom - top, right - left
    corner = img[top:top + max(1, h // 10), left:left + max(1, w // 10)].mean()
    other = img[bottom - max(1, h // 10):bottom, right - max(1, w // 10):right].mean()
    assert corner > 200 > other, (corner, other)
    mid = img[top + h // 3:top + 2 * h // 3, left + w * 15 // 32:left + w * 17 // 32].mean()
    lung = img[top + h // 3:top + 2 * h // 3, left + w // 5:left + w * 3 // 10].mean()
    assert mid > lung + 80, (mid, lung)


@pytest.fixture
def h():
  return Helpers


@pytest.fixture
def build(tmp_path):
  """build(name, manual_dir, config=None, **options) -> (builder, {split: records})."""
  from cxr_jax.data import prepare

  calls = []

  def _build(name, manual_dir, config=None, **options):
    options.setdefault('size', SIZE)
    # A fresh data_dir per call: TFDS reuses a prepared config whatever its manual_dir.
    calls.append(name)
    data_dir = tmp_path / ('tfds' if len(calls) == 1 else f'tfds{len(calls)}')
    builder = prepare.prepare(name, str(data_dir), manual_dir=str(manual_dir),
                              config=config, workers=1, **options)
    sources = builder.as_data_source()
    return builder, {s: Helpers.records(src) for s, src in sources.items()}

  return _build
