"""Synthetic DICOM files for the tests (pydicom needed: callers importorskip it first)."""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np


def make_dicom(path: str | os.PathLike,
               pixels: np.ndarray,
               *,
               photometric: str = 'MONOCHROME2',
               bits_stored: Optional[int] = None,
               window: Optional[tuple[float, float]] = None,
               voi_lut: Optional[np.ndarray] = None,
               voi_lut_bits: int = 8,
               rescale: Optional[tuple[float, float]] = None,
               with_file_meta: bool = True,
               extra: Optional[dict[str, Any]] = None) -> str:
  """Writes a small single-frame uncompressed DICOM; for test fixtures.

  Args:
    path: output file path (parent folders are created).
    pixels: [H, W] uint8 or uint16 stored values.
    photometric: 'MONOCHROME1' or 'MONOCHROME2'.
    bits_stored: BitsStored; defaults to the dtype's width.
    window: (center, width) for a VOI window.
    voi_lut: 1-D table (first mapped value = 0) for a VOI LUT sequence.
    voi_lut_bits: bits per entry declared in the VOI LUT descriptor.
    rescale: (slope, intercept) for a Modality rescale.
    with_file_meta: False writes no preamble and no file meta header, like some real
      exports (readers need force=True).
    extra: further attributes by keyword, e.g. {'PatientID': 'p1', 'ViewPosition': 'PA'}.

  Returns:
    the path written.
  """
  from pydicom.dataset import Dataset, FileMetaDataset  # pylint: disable=import-outside-toplevel
  from pydicom.sequence import Sequence as DicomSequence  # pylint: disable=import-outside-toplevel
  from pydicom import uid  # pylint: disable=import-outside-toplevel

  pixels = np.asarray(pixels)
  if pixels.dtype not in (np.uint8, np.uint16):
    raise ValueError(f'pixels must be uint8 or uint16, got {pixels.dtype}')
  allocated = pixels.dtype.itemsize * 8
  ds = Dataset()
  ds.SOPClassUID = '1.2.840.10008.5.1.4.1.1.1.1'  # Digital X-Ray Image Storage.
  ds.SOPInstanceUID = uid.generate_uid()
  ds.StudyInstanceUID = uid.generate_uid()
  ds.SeriesInstanceUID = uid.generate_uid()
  ds.Modality = 'DX'
  ds.PatientID = 'anonymous'
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = allocated
  ds.BitsStored = bits_stored or allocated
  ds.HighBit = ds.BitsStored - 1
  ds.PixelRepresentation = 0
  if rescale is not None:
    ds.RescaleSlope, ds.RescaleIntercept = rescale
  if window is not None:
    ds.WindowCenter, ds.WindowWidth = window
  if voi_lut is not None:
    table = np.asarray(voi_lut, np.uint16)  # Stored as 16-bit words whatever the bits.
    item = Dataset()
    item.LUTDescriptor = [len(table), 0, voi_lut_bits]
    # LUTData's VR is ambiguous (US or OW); OW bytes are what real files usually hold.
    item.LUTData = table.astype('<u2').tobytes()
    item['LUTData'].VR = 'OW'
    ds.VOILUTSequence = DicomSequence([item])
  for key, value in (extra or {}).items():
    setattr(ds, key, value)
  ds.PixelData = pixels.astype(pixels.dtype.newbyteorder('<')).tobytes()
  # PixelData of uint16 needs VR OW; pydicom infers OB for uint8 from BitsAllocated.
  ds['PixelData'].VR = 'OW' if allocated > 8 else 'OB'

  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = ds.SOPClassUID
  meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
  meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  ds.file_meta = meta
  os.makedirs(os.path.dirname(os.fspath(path)) or '.', exist_ok=True)
  if with_file_meta:
    ds.save_as(path, enforce_file_format=True)
  else:
    # No preamble, no group 0002: the raw dataset in implicit VR little endian.
    from pydicom.filewriter import write_dataset  # pylint: disable=import-outside-toplevel
    from pydicom.filebase import DicomBytesIO  # pylint: disable=import-outside-toplevel
    del ds.file_meta
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    with open(path, 'wb') as f:
      f.write(buf.getvalue())
  return os.fspath(path)
