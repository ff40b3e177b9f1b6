"""DICOM radiographs -> float gray images, the way radiologists would see them.

The pixel values stored in a DICOM file are not display values. In order:

  1. stored values -> modality values: the Modality LUT (a LUT sequence, or Rescale
     Slope/Intercept);
  2. modality values -> display values: the VOI LUT (a LUT sequence, or the window
     centre/width with its LINEAR / LINEAR_EXACT / SIGMOID function), when present;
  3. scaled to [0, 1] by the range those steps can produce, derived from BitsStored (and
     the LUT descriptors) -- never by the image's own min/max, which would make every
     image's contrast different and amplify noise in under-exposed films;
  4. MONOCHROME1 (white = low values) inverted so that lungs are dark and bone is bright,
     as in MONOCHROME2 and in every PNG/JPEG dataset.

Compressed transfer syntaxes (JPEG lossless, JPEG-LS, JPEG 2000...) are decoded by
pydicom's pixel-data plugins; when none is installed for a file the error names the
packages to install. Files written without the DICOM file meta header (no preamble,
no transfer syntax) are read with `force=True` and their encoding guessed.

pydicom is an optional dependency (`pip install cxr_jax[dicom]`).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from cxr_jax.data.errors import PathLike, UnreadableImageError


class MissingDicomPluginError(UnreadableImageError):
  """The file's transfer syntax needs a pixel-data plugin that is not installed."""


def _pydicom():
  try:
    import pydicom  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        'reading DICOM files needs pydicom: pip install "cxr_jax[dicom]" '
        '(or pip install pydicom)') from e
  return pydicom


def _lut_functions():
  """apply_modality_lut / apply_voi_lut from pydicom 3 (pixels) or 2.x (handlers)."""
  try:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut  # pydicom >= 3
  except ImportError:  # pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut  # optional: pydicom
  return apply_modality_lut, apply_voi_lut


def _missing_plugins(transfer_syntax) -> Optional[list[str]]:
  """Packages that would decode `transfer_syntax`, or None when a decoder is installed.

  Only pydicom >= 3 can say this up front; with pydicom 2.x None is returned and a decode
  failure is reported as is.
  """
  try:
    from pydicom.pixels import get_decoder  # pylint: disable=import-outside-toplevel
    decoder = get_decoder(transfer_syntax)
  except Exception:  # pydicom 2.x, or a syntax pydicom has no decoder for at all.
    return None
  if decoder.is_available:
    return None
  return list(decoder.missing_dependencies) or [
      'pylibjpeg with pylibjpeg-libjpeg / pylibjpeg-openjpeg', 'python-gdcm']


def read_header(path: PathLike, stop_before_pixels: bool = False):
  """Reads a DICOM dataset, also when the file has no preamble or file meta header.

  Returns:
    a pydicom Dataset whose `file_meta.TransferSyntaxUID` is always set.

  Raises:
    FileNotFoundError: the file does not exist.
    UnreadableImageError: the file is not DICOM or is truncated in its header.
  """
  pydicom = _pydicom()
  if not os.path.exists(path):
    raise FileNotFoundError(f'DICOM file not found: {os.fspath(path)}')
  try:
    # force=True: some exported files lack the 128-byte preamble and "DICM" magic.
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
  except Exception as e:
    raise UnreadableImageError(path, f'not a readable DICOM file ({type(e).__name__}: {e})'
                               ) from e
  if len(ds) == 0:
    raise UnreadableImageError(path, 'not a DICOM file (no data elements found)')
  meta = getattr(ds, 'file_meta', None)
  if meta is None or 'TransferSyntaxUID' not in meta:
    # Without file meta, pydicom has guessed the encoding while parsing; pixel decoding
    # needs it spelled out as a transfer syntax.
    from pydicom.dataset import FileMetaDataset  # pylint: disable=import-outside-toplevel
    from pydicom import uid  # pylint: disable=import-outside-toplevel
    if meta is None:
      ds.file_meta = meta = FileMetaDataset()
    encoding = getattr(ds, 'original_encoding', None)  # (is_implicit_VR, is_little_endian)
    if encoding is None:
      encoding = (getattr(ds, 'is_implicit_VR', True), getattr(ds, 'is_little_endian', True))
    implicit, little = encoding
    if implicit in (None, True):
      meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
    elif little in (None, True):
      meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    else:
      meta.TransferSyntaxUID = uid.ExplicitVRBigEndian
  return ds


def _stored_pixels(ds, path: PathLike) -> np.ndarray:
  """Decodes the stored pixel values of the first frame, naming missing plugins."""
  if 'PixelData' not in ds:
    raise UnreadableImageError(path, 'DICOM file has no Pixel Data element')
  syntax = ds.file_meta.TransferSyntaxUID
  if getattr(syntax, 'is_compressed', False):
    missing = _missing_plugins(syntax)
    if missing:
      raise MissingDicomPluginError(
          path, f'pixel data uses the compressed transfer syntax {syntax.name} ({syntax}), '
          'which no installed pixel-data plugin decodes; install one of: '
          + '; '.join(missing))
  try:
    arr = ds.pixel_array
  except Exception as e:
    raise UnreadableImageError(path, f'cannot decode pixel data ({type(e).__name__}: {e})'
                               ) from e
  frames = int(ds.get('NumberOfFrames', 1) or 1)
  if frames > 1:
    arr = arr[0]  # Radiographs are single-frame; keep the first frame of any cine.
  if arr.ndim != 2:
    raise UnreadableImageError(path, f'expected a 2-D gray image, got pixel array of shape '
                               f'{arr.shape}')
  return arr


def _apply_voi_lut_table(arr: np.ndarray, item, ds) -> np.ndarray:
  """Maps values through a VOI LUT Sequence item (PS3.3 C.11.2.1.1).

  Done here rather than with pydicom's apply_voi_lut, which indexes in the LUT's own
  dtype and so wraps input values above 255 for 8-bit tables with more than 256 entries.
  """
  entries, first_map, _ = (int(v) for v in item.LUTDescriptor)
  entries = entries or 2**16  # 0 means 65536 entries.
  elem = item['LUTData']
  if elem.VR == 'OW' or isinstance(elem.value, (bytes, bytearray)):
    little = ds.file_meta.TransferSyntaxUID != '1.2.840.10008.1.2.2'  # not big endian
    table = np.frombuffer(elem.value, dtype='<u2' if little else '>u2')[:entries]
  else:
    table = np.asarray(elem.value if isinstance(elem.value, (list, tuple))
                       else [elem.value], np.int64)
  index = np.clip(np.rint(np.asarray(arr, np.float64)).astype(np.int64) - first_map,
                  0, len(table) - 1)
  return np.asarray(table, np.float64)[index]


def _output_range(ds) -> tuple[float, float]:
  """The value range that the modality and VOI steps can produce for this dataset.

  Mirrors pydicom's own conventions (PS3.3 C.11): a LUT's range is set by the bits per
  entry in its descriptor; windowing maps into the range of the (rescaled) stored bits.
  """
  bits = int(ds.get('BitsStored', ds.get('BitsAllocated', 8)) or 8)
  signed = int(ds.get('PixelRepresentation', 0) or 0) == 1
  if ds.get('VOILUTSequence'):
    lut_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    return 0.0, float(2**lut_bits - 1)
  if ds.get('ModalityLUTSequence'):
    lut_bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
    return 0.0, float(2**lut_bits - 1)
  lo, hi = (-(2**(bits - 1)), 2**(bits - 1) - 1) if signed else (0, 2**bits - 1)
  slope, intercept = ds.get('RescaleSlope', None), ds.get('RescaleIntercept', None)
  if slope is not None and intercept is not None:
    lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    lo, hi = min(lo, hi), max(lo, hi)
  return float(lo), float(hi)


def to_float_image(ds, path: PathLike = '<dataset>') -> np.ndarray:
  """Display-ready float32 [H, W] in [0, 1] (dark lungs) from a pydicom Dataset."""
  if 'PixelData' not in ds:
    raise UnreadableImageError(path, 'not a DICOM image: no Pixel Data element')
  photometric = str(ds.get('PhotometricInterpretation', '')).strip().upper()
  if photometric not in ('MONOCHROME1', 'MONOCHROME2'):
    raise UnreadableImageError(
        path, f'unsupported PhotometricInterpretation {photometric or "(missing)"!r}: '
        'chest radiographs must be MONOCHROME1 or MONOCHROME2')
  arr = _stored_pixels(ds, path)
  apply_modality_lut, apply_voi_lut = _lut_functions()
  try:
    arr = apply_modality_lut(arr, ds)
    # When both a VOI LUT table and a window are given, the table wins (pydicom's
    # prefer_lut): it is the manufacturer's intended display curve.
    if ds.get('VOILUTSequence'):
      arr = _apply_voi_lut_table(arr, ds.VOILUTSequence[0], ds)
    elif 'WindowCenter' in ds and 'WindowWidth' in ds:
      arr = apply_voi_lut(arr, ds, index=0)
  except Exception as e:
    raise UnreadableImageError(path, f'cannot apply modality/VOI LUT ({type(e).__name__}: {e})'
                               ) from e
  lo, hi = _output_range(ds)
  out = (np.asarray(arr, np.float64) - lo) / max(hi - lo, 1e-12)
  out = np.clip(out, 0.0, 1.0).astype(np.float32)
  if photometric == 'MONOCHROME1':
    out = 1.0 - out
  return out


def read_dicom(path: PathLike) -> np.ndarray:
  """Reads a DICOM radiograph as float32 [H, W] in [0, 1] with dark lungs.

  Raises:
    FileNotFoundError: the file does not exist.
    MissingDicomPluginError: compressed pixel data with no installed decoder; the message
      names the packages (pylibjpeg / gdcm) that would decode it.
    UnreadableImageError: not DICOM, truncated, no pixel data, or a colour image.
  """
  return to_float_image(read_header(path), path)


def read_dicom_with_header(path: PathLike):
  """Like `read_dicom`, also returning the pydicom Dataset (patient id, view...)."""
  ds = read_header(path)
  return to_float_image(ds, path), ds


__all__: Sequence[str] = (
    'MissingDicomPluginError', 'read_header', 'to_float_image', 'read_dicom',
    'read_dicom_with_header')
