"""What the image readers share: the path type and the error for undecodable files.

Its own module so that `imageio` (PNG/JPEG, dispatching DICOM files to `dicom`) and
`dicom` both depend on it and not on each other.
"""
from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, os.PathLike]


class UnreadableImageError(ValueError):
  """A file exists but cannot be decoded as an image (corrupt, truncated, wrong format)."""

  def __init__(self, path: PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f'cannot read image {self.path}: {reason}')
