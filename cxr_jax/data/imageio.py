"""Reading radiographs and masks from PNG/JPEG (and DICOM) files, and storage resizing.

Every builder turns its source files into the shared record layout (see `schema.py`):
a gray image and a lung mask, both [S, S, 1] uint8, with the aspect ratio kept (area
resize so that the long side is S, then zero padding centred to a square). This module
holds the pixel side of that contract so that all builders agree on it:

  read_gray(path)        -> float32 [H, W] in [0, 1]   (8/16-bit, gray/RGB/RGBA, DICOM)
  read_mask(path)        -> uint8   [H, W] in {0, 1}   (any non-black pixel is foreground)
  resize_pad(x, S)       -> [S, S] keeping aspect; area for images, nearest for masks
  to_uint8(x)            -> uint8 image from a [0, 1] float image
  load_for_model(path, S) -> uint8 [S, S, 1]: a file as preparation stores it and as
                           prediction (cxr_jax.cli.predict, load_model) reads it -- one function
  encode_item(item, S)   -> the stored record of one listed example (`ImageItem`)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import numpy as np
from PIL import Image

from cxr_jax.data import dicom  # pydicom itself is imported only to read a DICOM file
from cxr_jax.data.errors import PathLike, UnreadableImageError

# ITU-R BT.601 luma weights, the ones PIL's convert('L') uses, so an RGB copy of a gray
# radiograph gives back the same gray values.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)

DICOM_SUFFIXES = ('.dcm', '.dicom', '.dic')


def _open_pil(path: PathLike) -> Image.Image:
  """Opens and fully decodes an image, turning every decoder failure into one error type."""
  try:
    img = Image.open(path)
    # PIL decodes lazily; a truncated file only fails on load(), so force it here.
    img.load()
    return img
  except FileNotFoundError:
    raise
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on bad data.
    raise UnreadableImageError(path, f'{type(e).__name__}: {e}') from e


def pil_to_gray(img: Image.Image) -> np.ndarray:
  """Converts a decoded PIL image to one float32 gray channel in [0, 1].

  The range is that of the file's bit depth (255 for 8-bit, 65535 for 16-bit), not the
  image's own maximum, so that exposure differences between images survive.

  Args:
    img: a PIL image in any of the modes PNG/JPEG/GIF/WebP decoders produce.

  Returns:
    float32 array [H, W] in [0, 1].
  """
  mode = img.mode
  if mode in ('I;16', 'I;16B', 'I;16L', 'I;16N'):
    return np.asarray(img, dtype=np.float32) / 65535.0
  if mode == 'I':
    # 16-bit PNGs come back as 32-bit 'I' in recent Pillow versions; their values still
    # span the 16-bit range.
    arr = np.asarray(img, dtype=np.float32)
    return np.clip(arr / 65535.0, 0.0, 1.0)
  if mode == 'F':
    arr = np.asarray(img, dtype=np.float32)
    hi = 1.0 if arr.max(initial=0.0) <= 1.0 else (255.0 if arr.max() <= 255 else 65535.0)
    return np.clip(arr / hi, 0.0, 1.0)
  if mode == '1':
    return np.asarray(img, dtype=np.float32)
  if mode == 'L':
    return np.asarray(img, dtype=np.float32) / 255.0
  if mode == 'LA':
    return np.asarray(img, dtype=np.float32)[..., 0] / 255.0
  if mode in ('RGB', 'RGBA', 'RGBX'):
    # Alpha is dropped, not composited: radiographs saved as RGBA are opaque, and
    # compositing a transparent border onto black or white would invent pixels.
    arr = np.asarray(img, dtype=np.float32)[..., :3]
    return (arr @ _LUMA) / 255.0
  # Palette, CMYK, YCbCr, ...: let PIL map to RGB first, then take luminance.
  arr = np.asarray(img.convert('RGB'), dtype=np.float32)
  return (arr @ _LUMA) / 255.0


def read_gray(path: PathLike) -> np.ndarray:
  """Reads a radiograph as float32 [H, W] in [0, 1], with dark lungs (MONOCHROME2 sense).

  PNG/JPEG/GIF/WebP of 8 or 16 bits, gray, RGB or RGBA; DICOM files (by suffix) go through
  `cxr_jax.data.dicom.read_dicom` (VOI LUT, MONOCHROME1 inversion, BitsStored scaling).

  Raises:
    FileNotFoundError: if `path` does not exist.
    UnreadableImageError: if the file cannot be decoded.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'image file not found: {os.fspath(path)}')
  if os.fspath(path).lower().endswith(DICOM_SUFFIXES):
    return dicom.read_dicom(path)
  return pil_to_gray(_open_pil(path))


def mask_from_array(arr: np.ndarray) -> np.ndarray:
  """Binarises a mask array: any non-black pixel (in any colour channel) is foreground.

  Args:
    arr: [H, W] or [H, W, C] array of any dtype. For RGBA masks only the colour channels
      count, since the alpha of cropped mask PNGs is opaque everywhere.

  Returns:
    uint8 [H, W] with values in {0, 1}.
  """
  arr = np.asarray(arr)
  if arr.ndim == 3:
    channels = min(arr.shape[-1], 3) if arr.shape[-1] in (3, 4) else 1
    # OR of the channel planes: much faster than a reduction over the strided last axis.
    out = arr[..., 0] > 0
    for c in range(1, channels):
      out |= arr[..., c] > 0
    return out.astype(np.uint8)
  return (arr > 0).astype(np.uint8)


def read_mask(path: PathLike) -> np.ndarray:
  """Reads a mask file (0/255 gray, 0/1, or 3/4-channel colour) as uint8 [H, W] in {0, 1}."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'mask file not found: {os.fspath(path)}')
  img = _open_pil(path)
  if img.mode == 'P':
    img = img.convert('RGB')
  return mask_from_array(np.asarray(img))


def _scaled_shape(h: int, w: int, size: int) -> tuple[int, int]:
  """The (height, width) after scaling so that the long side is `size`, aspect kept."""
  scale = size / max(h, w)
  return max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))


def resize_pad(x: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
  """Resizes so the long side is `size` (aspect kept) and zero-pads, centred, to a square.

  Images use area averaging when shrinking (the mean of the source pixels under each
  output pixel, as OpenCV's INTER_AREA; no aliasing of rib edges or noise) and bilinear
  interpolation when enlarging. Masks use nearest neighbour so they stay binary.

  Args:
    x: [H, W] float32 image in [0, 1], or uint8 mask.
    size: the output side S.
    nearest: nearest-neighbour resampling (for masks and label maps).

  Returns:
    [S, S] array of x's dtype.
  """
  x = np.asarray(x)
  if x.ndim != 2:
    raise ValueError(f'resize_pad expects a [H, W] array, got shape {x.shape}')
  h, w = x.shape
  nh, nw = _scaled_shape(h, w, size)
  if (nh, nw) != (h, w):
    if nearest:
      img = Image.fromarray(x.astype(np.uint8))
      x = np.asarray(img.resize((nw, nh), Image.NEAREST)).astype(x.dtype)
    else:
      img = Image.fromarray(x.astype(np.float32))
      shrinking = nh < h or nw < w
      resample = Image.BOX if shrinking else Image.BILINEAR
      x = np.asarray(img.resize((nw, nh), resample)).astype(x.dtype)
  out = np.zeros((size, size), x.dtype)
  top, left = (size - nh) // 2, (size - nw) // 2
  out[top:top + nh, left:left + nw] = x
  return out


def to_uint8(x: np.ndarray) -> np.ndarray:
  """Maps a float image in [0, 1] to uint8 [0, 255], rounding to nearest."""
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def storage_image(gray: np.ndarray, size: int) -> np.ndarray:
  """The stored form of an image: [S, S, 1] uint8 from float32 [H, W] in [0, 1]."""
  return to_uint8(resize_pad(gray.astype(np.float32), size))[..., None]


def storage_mask(mask: np.ndarray | None, size: int, shape: tuple[int, int] | None = None
                 ) -> np.ndarray:
  """The stored form of a mask: [S, S, 1] uint8 in {0, 1}; zeros when `mask` is None.

  Args:
    mask: uint8 [h, w] mask in {0, 1}, or None.
    size: storage side S.
    shape: the (H, W) of the image the mask belongs to. Masks shipped at another size
      than their image (e.g. 256x256 masks for 299x299 images) are first resized to the
      image, so that both go through the same aspect-keeping resize and padding.
  """
  if mask is None:
    return np.zeros((size, size, 1), np.uint8)
  mask = (np.asarray(mask) > 0).astype(np.uint8)
  if shape is not None and tuple(mask.shape) != tuple(shape):
    img = Image.fromarray(mask)
    mask = np.asarray(img.resize((shape[1], shape[0]), Image.NEAREST))
  return resize_pad(mask, size, nearest=True)[..., None]


def load_with_shape(path: PathLike, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """A radiograph file in its stored form, and the (H, W) of the decoded file.

  The one preprocessing of both preparation (`encode_item`) and prediction
  (`load_for_model`): `read_gray` (DICOM VOI LUT / window, MONOCHROME1, bit depth; gray
  from RGB/RGBA; 8/16-bit PNG/JPEG), then `storage_image` (aspect-keeping area resize,
  centred zero padding, uint8)."""
  gray = read_gray(path)
  return storage_image(gray, size), tuple(gray.shape)


def load_for_model(path: PathLike, size: int) -> np.ndarray:
  """A file as a model trained on data prepared at storage size `size` sees it: uint8
  [size, size, 1], exactly the image preparation would store for it.

  Raises:
    FileNotFoundError, UnreadableImageError: naming the file at fault.
  """
  return load_with_shape(path, size)[0]


@dataclasses.dataclass(frozen=True)
class MaskPart:
  """One mask file that contributes to an example's mask (several parts are OR-ed).

  Attributes:
    path: absolute path of the mask image (any non-black pixel is foreground).
    offset: (left, top) where a mask cropped to its bounding box goes on the image
      canvas; None for a full-image mask, which is resized to the image if needed.
  """
  path: str
  offset: Optional[tuple[int, int]] = None


@dataclasses.dataclass
class ImageItem:
  """Everything needed to write one example, decided before any pixel is decoded.

  Builders list their dataset as ImageItems (parsing CSVs and folder names); the shared
  code then validates the files, decodes them (in worker processes when worthwhile) and
  writes the records. Kept free of TFDS so that worker processes import little.

  Attributes:
    id: source path relative to the manual_dir; unique; also the record key.
    image: absolute path of the image (PNG/JPEG/... or DICOM by suffix).
    split: the split it goes to.
    label: class index, -1 for unlabeled.
    patient_id: patient (or study) identifier; splits never share one.
    mask: parts of the lung mask (empty: no mask).
    extra_masks: further masks by feature name (e.g. 'infection_mask').
    extra: further feature values written as they are (view, boxes, targets...).
    row: where the item was listed, for error messages (e.g. 'train.csv line 7').
  """
  id: str
  image: str
  split: str = 'train'
  label: int = -1
  patient_id: str = ''
  mask: tuple[MaskPart, ...] = ()
  extra_masks: dict[str, tuple[MaskPart, ...]] = dataclasses.field(default_factory=dict)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  row: str = ''

  def files(self) -> list[str]:
    """Every file this item reads: the image first, then its mask files."""
    paths = [self.image] + [p.path for p in self.mask]
    for parts in self.extra_masks.values():
      paths.extend(p.path for p in parts)
    return paths


def load_mask(parts: tuple[MaskPart, ...], shape: tuple[int, int]) -> np.ndarray:
  """The union of mask parts on an image-sized canvas: uint8 [H, W] in {0, 1}.

  Full-image masks shipped at another resolution than their image (e.g. 256x256 masks
  of 299x299 images) are resized to the image with nearest neighbour; cropped masks are
  pasted at their (left, top) offset, clipped to the canvas.
  """
  h, w = shape
  canvas = np.zeros((h, w), np.uint8)
  for part in parts:
    m = read_mask(part.path)
    if part.offset is None:
      if m.shape != (h, w):
        m = np.asarray(Image.fromarray(m).resize((w, h), Image.NEAREST))
      canvas |= m
    else:
      left, top = (int(v) for v in part.offset)
      y0, x0 = max(top, 0), max(left, 0)
      y1, x1 = min(top + m.shape[0], h), min(left + m.shape[1], w)
      if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] |= m[y0 - top:y1 - top, x0 - left:x1 - left]
  return canvas


def encode_item(item: ImageItem, size: int) -> dict[str, Any]:
  """Decodes an item's files into the stored record (see `schema.core_features`).

  Raises:
    FileNotFoundError, UnreadableImageError: naming the file at fault.
  """
  image, shape = load_with_shape(item.image, size)  # the same function as prediction's
  record = {
      'image': image,
      'mask': storage_mask(load_mask(item.mask, shape) if item.mask else None, size),
      'has_mask': bool(item.mask),
      'label': int(item.label),
      'patient_id': str(item.patient_id),
      'id': item.id,
  }
  for name, parts in item.extra_masks.items():
    record[name] = storage_mask(load_mask(parts, shape) if parts else None, size)
  record.update(item.extra)
  return record


def encode_item_safe(args: tuple[ImageItem, int]) -> tuple[ImageItem, Any, Optional[str]]:
  """`encode_item` for worker pools: returns (item, record or None, error text or None).

  Errors come back as text rather than exceptions so that one bad file does not stop the
  pool and every problem can be reported together.
  """
  item, size = args
  try:
    return item, encode_item(item, size), None
  except (FileNotFoundError, UnreadableImageError) as e:
    return item, None, str(e)
