"""The workdir's guards: errors a run stops with, the lock, atomic writes.

    RunError       a run stopped by its circumstances (non-finite training, a full disk, a
                   workdir in use, an unreadable workdir file); its message says what
                   happened and what to do, and launch.py prints it alone (no traceback)
    disk_full      the DiskFullError (a RunError) of a write that failed for want of space:
                   one line naming the file or folder and the space left there
    lock(workdir)  one run per workdir: <workdir>/.lock, held with flock(2) by process 0;
                   the kernel drops it when the process dies, so a killed run leaves no
                   lock that blocks the next one
    atomic_open    writes a file under a temporary name and renames it into place, so a
                   kill never leaves a half-written config.json, result.json or .npz
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

log = logging.getLogger('cxr_jax')

LOCK_NAME = '.lock'


class RunError(Exception):
  """A run stopped by its circumstances; the message is the whole story."""


class WorkdirBusy(RunError):
  pass


class DiskFullError(RunError):
  pass


def no_space(e: BaseException | None) -> bool:
  """Whether `e` (or an exception it came from) is a full disk: an OSError ENOSPC, or
  TensorStore's error that quotes it."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if getattr(e, 'errno', None) == errno.ENOSPC or 'No space left on device' in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def _size(n: int) -> str:
  return f'{n / 2**30:.1f} GiB' if n >= 2**30 else f'{n / 2**20:.1f} MiB'


def disk_full(who: str, what: str, path: Path, resume: str = '') -> DiskFullError:
  """'<who>: no space left on device for <what> (<free> free there); free some space and
  re-run the same command to resume<resume>.' (`path`: where it was being written)."""
  existing = next(p for p in (Path(path), *Path(path).parents) if p.exists())
  return DiskFullError(
      f'{who}: no space left on device for {what} ({_size(shutil.disk_usage(existing).free)} '
      f'free there); free some space and re-run the same command to resume{resume}.')


def _holder(fd: int) -> dict:
  for _ in range(20):  # the holder writes its name right after taking the lock
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors='replace')
    try:
      return json.loads(text)
    except ValueError:
      time.sleep(0.05)
  return {}


def _flock(fd: int, path: Path, workdir) -> bool:
  """Takes the lock of `fd`: True, or False on a filesystem without flock (warned)."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    holder = _holder(fd)
    raise WorkdirBusy(
        f'{workdir} is in use by another run: process {holder.get("pid", "?")} on host '
        f'{holder.get("host", "?")} (since {holder.get("since", "?")}) holds {path}. Wait '
        'for it to end or stop it, or use another --workdir.') from None
  except OSError as e:
    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
      raise
    log.warning('cannot lock %s (%s): a second run on this workdir would not be stopped',
                path, e.strerror)
    return False


@contextlib.contextmanager
def lock(workdir, active: bool = True):
  """Holds <workdir>/.lock for the duration (no-op when not `active`: processes other
  than 0 of a multi-process run). Raises WorkdirBusy naming the process id and host of
  the run that holds it."""
  if not active:
    yield
    return
  path = Path(workdir) / LOCK_NAME
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    held = _flock(fd, path, workdir)
    if held:
      me = {'pid': os.getpid(), 'host': socket.gethostname(),
            'since': datetime.datetime.now().isoformat(timespec='seconds')}
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(me).encode(), 0)
    yield
    if held:
      os.ftruncate(fd, 0)  # a clean exit leaves no name behind
  finally:
    os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)


@contextlib.contextmanager
def atomic_open(path, mode: str = 'w'):
  """open(path, mode) for writing a whole file: written as a temporary file beside it and
  renamed into place on success (removed on failure)."""
  path = Path(path)
  tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_text(path, text: str):
  """Writes `text` to `path` atomically."""
  with atomic_open(path) as f:
    f.write(text)
