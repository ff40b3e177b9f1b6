"""The workdir's guards: one run per workdir (a live holder is named, a dead one does not
block), atomic writes."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from cxr_jax.train import workdir
from tests.conftest import ROOT, subprocess_env

_HOLD = ('import sys, time\n'
         'from cxr_jax.train import workdir\n'
         'with workdir.lock(sys.argv[1]):\n'
         '  print("held", flush=True)\n'
         '  time.sleep(600)\n')


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_one_does_not_block(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', _HOLD, str(tmp_path)], cwd=ROOT,
                            env=subprocess_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir.WorkdirBusy,
                       match=rf'is in use by another run: process {holder.pid} on host '
                             rf'{socket.gethostname()} \(since .*\) holds .*\.lock'):
      with workdir.lock(tmp_path):
        pytest.fail('two runs held one workdir')
  finally:
    holder.send_signal(signal.SIGKILL)  # dies holding the lock: its name stays in the file
    holder.wait()
  assert str(holder.pid) in (tmp_path / '.lock').read_text()
  with workdir.lock(tmp_path):  # the kernel dropped the dead process's lock
    assert str(os.getpid()) in (tmp_path / '.lock').read_text()
  assert (tmp_path / '.lock').read_text() == ''  # a clean exit leaves no name behind


def test_the_lock_excludes_a_second_holder_in_the_same_process(tmp_path):
  with workdir.lock(tmp_path):
    with pytest.raises(workdir.WorkdirBusy, match=f'process {os.getpid()} on host'):
      with workdir.lock(tmp_path):
        pass
    with workdir.lock(tmp_path, active=False):  # processes > 0 of a multi-process run
      pass


def test_atomic_writes_leave_the_old_file_when_interrupted(tmp_path):
  path = tmp_path / 'result.json'
  workdir.write_text(path, 'old')
  with pytest.raises(KeyboardInterrupt):
    with workdir.atomic_open(path) as f:
      f.write('half')
      raise KeyboardInterrupt
  assert path.read_text() == 'old' and os.listdir(tmp_path) == ['result.json']
  workdir.write_text(path, 'new')
  assert path.read_text() == 'new' and os.listdir(tmp_path) == ['result.json']
