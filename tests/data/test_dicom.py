"""DICOM pixels: VOI LUT / windowing, MONOCHROME1, BitsStored scaling, plugins, bad files."""
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip('pydicom')

from cxr_jax.data import dicom  # noqa: E402
from cxr_jax.data import imageio  # noqa: E402
from tests import dicom_files  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / '..' / 'shared' / 'data' / 'real'


def _chest_stored(h=64, w=64, hi=4095) -> np.ndarray:
  """Stored values of a MONOCHROME2-style chest: dark lungs, bright mediastinum."""
  x = np.full((h, w), 0.2 * hi)
  x[8:56, 6:26] = 0.1 * hi  # right lung (image left)
  x[8:56, 38:58] = 0.1 * hi  # left lung
  x[:, 28:36] = 0.8 * hi  # mediastinum / spine
  return x.round().astype(np.uint16)


def _lungs_and_mediastinum(img):
  return img[8:56, 6:26].mean(), img[8:56, 28:36].mean()


def test_monochrome1_with_voi_lut_is_inverted(tmp_path):
  # MONOCHROME1 stores bright as low: lungs high, mediastinum low.
  stored = (4095 - _chest_stored()).astype(np.uint16)
  # A VOI LUT that maps 12-bit values to 8-bit output, with a gamma-like curve.
  lut = np.round(255 * (np.arange(4096) / 4095.0) ** 0.8).astype(np.uint16)
  path = dicom_files.make_dicom(tmp_path / 'm1.dcm', stored, photometric='MONOCHROME1',
                          bits_stored=12, voi_lut=lut, voi_lut_bits=8)
  img = dicom.read_dicom(path)
  assert img.dtype == np.float32 and img.shape == (64, 64)
  lungs, mediastinum = _lungs_and_mediastinum(img)
  assert lungs < 0.25 < 0.7 < mediastinum  # after inversion: lungs dark
  # The LUT (not the raw values) decides the output: check one pixel exactly.
  raw = int(stored[30, 30])
  assert img[30, 30] == pytest.approx(1 - lut[raw] / 255.0, abs=1e-6)


def test_window_applied_and_scaled_by_bits_stored(tmp_path):
  stored = _chest_stored()
  # A narrow window around the lungs: values above centre+width/2 saturate to white.
  path = dicom_files.make_dicom(tmp_path / 'w.dcm', stored, bits_stored=12, window=(600, 800))
  img = dicom.read_dicom(path)
  lungs, mediastinum = _lungs_and_mediastinum(img)
  assert mediastinum == pytest.approx(1.0)
  assert 0.05 < lungs < 0.5
  # Without a window: divided by 2**12 - 1, not by the image's maximum (0.8 * 4095).
  path = dicom_files.make_dicom(tmp_path / 'nw.dcm', stored, bits_stored=12)
  img = dicom.read_dicom(path)
  assert img.max() == pytest.approx(stored.max() / 4095.0, abs=1e-6)
  assert img.max() < 0.81


def test_modality_rescale_applied(tmp_path):
  stored = np.array([[0, 100], [200, 255]], np.uint8)
  path = dicom_files.make_dicom(tmp_path / 'r.dcm', stored, rescale=(2.0, -10.0))
  img = dicom.read_dicom(path)
  # Range after rescale: [0*2-10, 255*2-10] = [-10, 500]; value 100 -> 190.
  assert img[0, 1] == pytest.approx((190 + 10) / 510.0, abs=1e-6)
  assert img[0, 0] == pytest.approx(0.0) and img[1, 1] == pytest.approx(1.0)


def test_file_without_meta_header_read_with_force(tmp_path):
  stored = _chest_stored()
  path = dicom_files.make_dicom(tmp_path / 'nometa.dcm', stored, bits_stored=12,
                          with_file_meta=False, extra={'PatientID': 'p9'})
  assert Path(path).read_bytes()[128:132] != b'DICM'
  img, ds = dicom.read_dicom_with_header(path)
  assert ds.PatientID == 'p9'
  np.testing.assert_allclose(img, stored / 4095.0, atol=1e-6)


def test_compressed_without_plugin_names_the_packages(tmp_path):
  from pydicom import uid
  from pydicom.encaps import encapsulate
  from pydicom.pixels import get_decoder
  if get_decoder(uid.JPEGLosslessSV1).is_available:
    pytest.skip('a JPEG lossless plugin is installed here')
  path = dicom_files.make_dicom(tmp_path / 'j.dcm', np.zeros((8, 8), np.uint16), bits_stored=12)
  ds = pydicom.dcmread(path)
  ds.PixelData = encapsulate([b'\xff\xd8\xff\xc3' + b'\x00' * 20 + b'\xff\xd9'])
  ds['PixelData'].VR = 'OB'
  ds.file_meta.TransferSyntaxUID = uid.JPEGLosslessSV1
  ds.save_as(path)
  with pytest.raises(dicom.MissingDicomPluginError, match='pylibjpeg') as err:
    dicom.read_dicom(path)
  assert 'gdcm' in str(err.value) and 'JPEG Lossless' in str(err.value)


def test_truncated_and_non_dicom_files(tmp_path):
  path = dicom_files.make_dicom(tmp_path / 'a.dcm', _chest_stored(), bits_stored=12)
  data = Path(path).read_bytes()
  (tmp_path / 'cut.dcm').write_bytes(data[:len(data) - 3000])
  with pytest.raises(imageio.UnreadableImageError, match='cut.dcm'):
    dicom.read_dicom(tmp_path / 'cut.dcm')
  (tmp_path / 'text.dcm').write_bytes(b'this is not a DICOM file at all' * 4)
  with pytest.raises(imageio.UnreadableImageError, match='text.dcm'):
    dicom.read_dicom(tmp_path / 'text.dcm')


def test_colour_dicom_refused(tmp_path):
  path = dicom_files.make_dicom(tmp_path / 'c.dcm', np.zeros((4, 4), np.uint8))
  ds = pydicom.dcmread(path)
  ds.PhotometricInterpretation = 'PALETTE COLOR'
  ds.save_as(path)
  with pytest.raises(imageio.UnreadableImageError, match='PALETTE COLOR'):
    dicom.read_dicom(path)


def test_read_gray_dispatches_dicom(tmp_path):
  path = dicom_files.make_dicom(tmp_path / 'x.dcm', _chest_stored(), bits_stored=12)
  np.testing.assert_array_equal(imageio.read_gray(path), dicom.read_dicom(path))


@pytest.mark.skipif(not (REAL / 'dicom' / 'nhsx_nih_cxr.dcm').exists(),
                    reason='real data folder ../shared/data/real/dicom absent')
def test_real_nih_dicom():
  img, ds = dicom.read_dicom_with_header(REAL / 'dicom' / 'nhsx_nih_cxr.dcm')
  assert img.shape == (1024, 1024) and img.dtype == np.float32
  assert ds.PhotometricInterpretation == 'MONOCHROME2' and int(ds.BitsStored) == 8
  np.testing.assert_allclose(img, ds.pixel_array / 255.0, atol=1e-6)
  # A PA chest film: the central column (mediastinum, spine) is brighter than the
  # lung fields either side of it, i.e. the image is not inverted.
  centre = img[300:700, 462:562].mean()
  lungs = (img[300:700, 200:350].mean() + img[300:700, 674:824].mean()) / 2
  assert centre > lungs + 0.1
