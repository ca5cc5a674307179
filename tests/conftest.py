import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dbbasic_queue import Queue

REPO = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT_SECONDS = 60


class FakeClock:
    """An injectable clock: tests move time instead of sleeping."""

    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def queue_path(tmp_path):
    return tmp_path / 'data' / 'queue.tsv'


@pytest.fixture
def queue(queue_path, clock):
    return Queue(queue_path, clock=clock)


def python_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
    return env


def spawn(code, *args, **kwargs):
    """Start `python -c code args...` (code dedented) and return the Popen."""
    return subprocess.Popen([sys.executable, '-c', textwrap.dedent(code), *map(str, args)],
                            env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def run_python(code, *args, timeout=SUBPROCESS_TIMEOUT_SECONDS, cwd=None):
    """Run code in a fresh interpreter; return the CompletedProcess (never raises on exit code)."""
    proc = spawn(code, *args, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_all(procs, timeout=SUBPROCESS_TIMEOUT_SECONDS):
    """Wait for every Popen; kill the ones we started that overrun; return their outputs."""
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            raise
        results.append((proc.returncode, out, err))
    return results
