"""Faults, round 3: nothing a handler, a cache file or a client does may stop the queue,
fake a completion or stall a worker. Each test reproduces one finding."""

import concurrent.futures
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbbasic_queue import InvalidArgumentError, Queue, cron, every
from dbbasic_queue.schedule import MAX_CATCH_UP_SLOTS
from tests.conftest import SUBPROCESS_TIMEOUT_SECONDS, python_env, run_python, spawn, wait_all

ZERO = {'completed': 0, 'retried': 0, 'failed': 0, 'recovered': 0}


class StrFails(Exception):
    def __str__(self):
        raise ValueError('str fails')


class ReprFails:
    def __repr__(self):
        raise ValueError('repr fails')


def raises_odd_exception(payload):
    raise StrFails('the message')


def test_an_exception_whose_str_raises_fails_its_attempt_and_the_queue_goes_on(backend):
    queue = Queue(backend)
    poisoned = queue.enqueue('odd', {}, priority=5, max_attempts=1)
    innocent = queue.enqueue('ok', {})
    counts = queue.process_jobs({'odd': raises_odd_exception, 'ok': lambda p: 'fine'})
    assert counts == {**ZERO, 'completed': 1, 'failed': 1}
    job = queue.get_job(poisoned)
    assert job['status'] == 'failed' and job['attempts'] == 1
    assert job['error'].startswith('StrFails')
    assert queue.get_job(innocent)['status'] == 'completed'


def test_a_result_whose_repr_raises_is_stored_as_a_placeholder(backend):
    queue = Queue(backend)
    job_id = queue.enqueue('odd', {})
    assert queue.process_jobs({'odd': lambda p: ReprFails()}) == {**ZERO, 'completed': 1}
    job = queue.get_job(job_id)
    assert job['status'] == 'completed' and 'ReprFails' in job['result']


def a_generator(payload):
    yield payload


async def a_coroutine(payload):
    return payload


class Awaitable:
    def __await__(self):
        yield


def a_future(payload):
    return concurrent.futures.Future()


@pytest.mark.parametrize('handler, word', [
    (a_generator, 'generator'),
    (a_coroutine, 'coroutine'),
    (lambda p: Awaitable(), 'awaitable'),
    (a_future, 'Future'),
])
def test_a_handler_that_returns_work_not_done_fails_its_attempt(backend, handler, word):
    queue = Queue(backend)
    job_id = queue.enqueue('lazy', {'n': 1}, max_attempts=1)
    assert queue.process_jobs({'lazy': handler}) == {**ZERO, 'failed': 1}
    job = queue.get_job(job_id)
    assert job['status'] == 'failed'
    assert 'handler returned a' in job['error'] and word in job['error']


def test_results_that_are_not_json_are_stored_as_their_repr(backend):
    queue = Queue(backend)
    job_id = queue.enqueue('t', {})
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5)
    queue.process_jobs({'t': lambda p: {'at': moment}})
    assert queue.get_job(job_id)['result'] == repr({'at': moment})


# -- D. The RQ backend ------------------------------------------------------------------
HANG_SECONDS = 10   # a burst run with nothing due takes well under a second

RQ_HOLDER = '''
import sys, time
from dbbasic_queue import Queue
from pathlib import Path
def slow(payload):
    Path(sys.argv[2]).touch()
    time.sleep(payload['seconds'])
print(Queue(sys.argv[1]).process_jobs({'slow': slow}))
'''


RQ_CALLS = '''
import sys, time
from dbbasic_queue import Queue
queue = Queue(sys.argv[1])
for _ in range(int(sys.argv[2])):
    started = time.monotonic()
    queue.process_jobs({'slow': lambda p: None, 'other': len})
    print(time.monotonic() - started, flush=True)
'''


def lines_each_within(proc, count, hang_seconds):
    """count lines of proc's stdout, or fail (killing proc) as soon as one has not come
    within hang_seconds."""
    import queue as queues
    import threading
    lines = queues.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    got = []
    for n in range(count):
        try:
            got.append(lines.get(timeout=hang_seconds))
        except queues.Empty:
            proc.kill()
            pytest.fail(f'call {n + 1} of {count} hung over {hang_seconds} s '
                        f'(the others took {", ".join(line.strip() for line in got)} s)')
    return got


@pytest.mark.slow
def test_rq_process_jobs_never_waits_on_a_pubsub_beside_a_long_job(redis_url, tmp_path):
    queue = Queue(redis_url)
    queue.enqueue('slow', {'seconds': 3})
    started = tmp_path / 'started'
    holder = spawn(RQ_HOLDER, redis_url, started)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
        while not started.exists():
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.05)
        calls = spawn(RQ_CALLS, redis_url, 20)
        try:
            assert len(lines_each_within(calls, 20, HANG_SECONDS)) == 20
        finally:
            wait_all([calls])
    finally:
        wait_all([holder])


@pytest.mark.slow
def test_two_cli_workers_on_rq_started_at_once_both_exit(redis_url, tmp_path):
    (tmp_path / 'handlers.py').write_text('HANDLERS = {"t": lambda p: p}\n')
    Queue(redis_url).enqueue_many([('t', {'n': n}) for n in range(20)])
    command = [sys.executable, '-m', 'dbbasic_queue', '--queue', redis_url, 'work',
               'handlers:HANDLERS']
    for _ in range(3):
        pair = [subprocess.Popen(command, cwd=tmp_path, env=python_env(), text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for _ in range(2)]
        results = wait_all(pair, timeout=HANG_SECONDS * 3)   # the interpreter's start too
        assert [code for code, _, _ in results] == [0, 0], results


# -- B. The files -----------------------------------------------------------------------
def dbbasic_queue_cli(workdir, *args):
    return subprocess.run([sys.executable, '-m', 'dbbasic_queue', *args], cwd=workdir,
                          capture_output=True, text=True, env=python_env(),
                          timeout=SUBPROCESS_TIMEOUT_SECONDS)


@pytest.mark.parametrize('emptied', ['queue.tsv', 'queue.done.tsv', 'both'])
def test_an_emptied_queue_file_is_an_empty_queue(tmp_path, emptied):
    (tmp_path / 'handlers.py').write_text('HANDLERS = {"t": lambda p: p["n"]}\n')
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    queue.enqueue('t', {'n': 0})
    queue.process_jobs({'t': lambda p: p['n']})
    queue.enqueue('t', {'n': 1})
    for name in (['queue.tsv', 'queue.done.tsv'] if emptied == 'both' else [emptied]):
        (tmp_path / 'data' / name).write_bytes(b'')   # : > data/queue.tsv
    fresh = Queue(tmp_path / 'data' / 'queue.tsv')
    assert sum(fresh.stats()['by_status'].values()) in (0, 1)
    job_id = fresh.enqueue('t', {'n': 2})
    assert fresh.get_job(job_id)['status'] == 'pending'
    hot = (tmp_path / 'data' / 'queue.tsv').read_bytes()
    assert hot.startswith(b'id\ttype\tpayload')
    for command in (['check'], ['stats'], ['show', job_id], ['list']):
        done = dbbasic_queue_cli(tmp_path, *command)
        assert done.returncode == 0, (command, done.stderr)
    done = dbbasic_queue_cli(tmp_path, 'work', 'handlers:HANDLERS')
    assert done.returncode == 0, done.stderr
    assert fresh.get_job(job_id)['status'] == 'completed'
    assert fresh.check() == []


def test_a_loop_worker_goes_on_after_its_queue_file_is_emptied(tmp_path):
    (tmp_path / 'handlers.py').write_text('HANDLERS = {"t": lambda p: p["n"]}\n')
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    first = queue.enqueue('t', {'n': 0})
    worker = subprocess.Popen([sys.executable, '-m', 'dbbasic_queue', 'work', 'handlers:HANDLERS',
                               '--loop', '--sleep', '0.1'], cwd=tmp_path, env=python_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
        while queue.get_job(first)['status'] != 'completed':
            assert time.monotonic() < deadline and worker.poll() is None
            time.sleep(0.05)
        for name in ('queue.tsv', 'queue.done.tsv'):
            (tmp_path / 'data' / name).write_bytes(b'')
        later = [queue.enqueue('t', {'n': n}) for n in range(1, 4)]
        while any((queue.get_job(job_id) or {}).get('status') != 'completed' for job_id in later):
            assert time.monotonic() < deadline and worker.poll() is None, worker.stderr.read()
            time.sleep(0.05)
    finally:
        worker.terminate()
        wait_all([worker])


def test_queue_files_are_lf_throughout_and_an_older_crlf_header_still_reads(tmp_path):
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    queue.enqueue('t', {'n': 0})
    queue.process_jobs({'t': lambda p: p})
    for name in ('queue.tsv', 'queue.done.tsv'):
        data = (tmp_path / 'data' / name).read_bytes()
        assert b'\r' not in data and data.split(b'\n', 1)[0].endswith(b'\tpriority')
    # A file made by 2.1 and before: dbbasic-tsv's header, ending in CRLF.
    hot = tmp_path / 'data' / 'queue.tsv'
    header, rest = hot.read_bytes().split(b'\n', 1)
    hot.write_bytes(header + b'\r\n' + rest)
    older = Queue(hot)
    job_id = older.enqueue('t', {'n': 1})
    assert older.get_job(job_id)['status'] == 'pending'
    assert older.process_jobs({'t': lambda p: p})['completed'] == 1
    assert b'\r' not in hot.read_bytes() and older.check() == []


# The summary cache: a forged or garbled one may cost speed, never a job.
SUMMARY_JOBS = 6_000


def queue_with_summary(path):
    """SUMMARY_JOBS due jobs of type 'a' in many segments, and the summary a stats call
    left of them."""
    queue = Queue(path)
    queue.enqueue_many(('a', {'n': n, 'pad': 'x' * 200}) for n in range(SUMMARY_JOBS))
    queue.stats()
    summary = json.loads(summary_path(path).read_text())
    assert len(summary['segments']) > 10
    return summary


def summary_path(path):
    return path.with_name(f'.{path.name}.summary')


def forge(path, summary, mtime=None):
    summary_path(path).write_text(json.dumps(summary))
    if mtime is not None:
        os.utime(summary_path(path), (mtime, mtime))


def dropped_segment(summary, _):
    del summary['segments'][3]


def emptied_counts(summary, _):
    for segment in summary['segments']:
        segment[3], segment[4], segment[5] = {}, {}, 0


def shifted_boundaries(summary, _):
    segments = summary['segments']
    for before, after in zip(segments, segments[1:]):
        before[1] -= 17
        after[0] -= 17


def duplicated_segment(summary, _):
    summary['segments'].insert(3, list(summary['segments'][3]))


def wrong_types(summary, _):
    summary['segments'][2][4] = {'w': 'soon'}
    summary['segments'][5][6] = 'high'
    summary['segments'][7][3] = ['not', 'a', 'dict']


def copied_from_another_queue(summary, tmp_path):
    other = queue_with_summary(tmp_path / 'other' / 'queue.tsv')
    summary.clear()
    summary.update(other)


def due_later(summary, _):
    """A lie no cheap check can catch: one segment's jobs said to be due in a year."""
    pending = summary['segments'][3][3]['a']
    pending[0] = pending[2] = time.time() + 365 * 86400


def hidden(queue):
    return queue.stats()['by_status']['pending']


@pytest.mark.parametrize('garble', [dropped_segment, emptied_counts, shifted_boundaries,
                                    duplicated_segment, wrong_types,
                                    copied_from_another_queue])
@pytest.mark.parametrize('future_mtime', [False, True])
@pytest.mark.slow
def test_a_garbled_summary_is_ignored_and_hides_no_job(tmp_path, garble, future_mtime):
    path = tmp_path / 'queue.tsv'
    summary = queue_with_summary(path)
    garble(summary, tmp_path)
    forge(path, summary, time.time() + 3600 if future_mtime else None)
    assert Queue(path).stats()['by_status']['pending'] == SUMMARY_JOBS
    done = Queue(path).process_jobs({'a': lambda p: None})
    assert done['completed'] == SUMMARY_JOBS
    assert Queue(path).stats()['by_status']['pending'] == 0


def test_check_reports_a_summary_that_does_not_match_the_file(tmp_path):
    path = tmp_path / 'queue.tsv'
    summary = queue_with_summary(path)
    assert Queue(path).check() == []
    due_later(summary, tmp_path)
    forge(path, summary)
    problems = Queue(path).check()
    assert len(problems) == 1 and '.queue.tsv.summary' in problems[0], problems


@pytest.mark.slow
def test_a_lie_in_a_summary_does_not_outlive_its_trust_window(tmp_path, monkeypatch):
    from dbbasic_queue import storage
    path = tmp_path / 'queue.tsv'
    summary = queue_with_summary(path)
    due_later(summary, tmp_path)
    hidden_jobs = sum(pending[1] for pending in [summary['segments'][3][3]['a']])
    summary['counted_at'] = time.time()
    forge(path, summary)
    # Within the window, the lie may cost the hidden jobs a wait, and each rewrite saves
    # the summary again: but not as counted anew.
    assert Queue(path).process_jobs({'a': lambda p: None})['completed'] == SUMMARY_JOBS - hidden_jobs
    assert json.loads(summary_path(path).read_text())['counted_at'] == summary['counted_at']
    # The window passes (made short rather than waited out: the same test of now - counted_at)
    monkeypatch.setattr(storage, 'SUMMARY_TRUST_SECONDS', 0.5)
    time.sleep(0.6)
    assert Queue(path).process_jobs({'a': lambda p: None})['completed'] == hidden_jobs
    assert Queue(path).stats()['by_status']['pending'] == 0


@pytest.mark.slow
def test_a_loop_worker_recounts_what_it_loaded_once_the_window_passes(tmp_path, monkeypatch):
    from dbbasic_queue import storage
    path = tmp_path / 'queue.tsv'
    summary = queue_with_summary(path)
    due_later(summary, tmp_path)
    summary['counted_at'] = time.time()
    forge(path, summary)
    worker = Queue(path)   # one process polling, as `work --loop` does
    first = worker.process_jobs({'a': lambda p: None})['completed']
    assert first < SUMMARY_JOBS
    monkeypatch.setattr(storage, 'SUMMARY_TRUST_SECONDS', 0.5)   # the window passes
    time.sleep(0.6)
    assert worker.process_jobs({'a': lambda p: None})['completed'] == SUMMARY_JOBS - first


# -- the journal: a full disk or a truncated journal is an error line, never SIGBUS -----
@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs, mounted for this test and unmounted after it."""
    mount_point = tmp_path / 'small'
    mount_point.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', str(mount_point)],
                             capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECONDS)
    if mounted.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}')
    yield mount_point
    subprocess.run(['umount', '-l', str(mount_point)], timeout=SUBPROCESS_TIMEOUT_SECONDS)


def fill(directory):
    """Write a file in directory until the disk is full; returns its path."""
    filler = directory / 'filler'
    with open(filler, 'wb', buffering=0) as f:
        try:
            while True:
                f.write(b'x' * 4096)
        except OSError:
            pass
    return filler


def test_a_full_disk_at_worker_start_is_one_error_line_not_a_bus_error(small_disk):
    (small_disk / 'handlers.py').write_text('HANDLERS = {"t": lambda p: p["n"]}\n')
    queue = Queue(small_disk / 'data' / 'queue.tsv')
    job_id = queue.enqueue('t', {'n': 1})
    filler = fill(small_disk)
    done = dbbasic_queue_cli(small_disk, 'work', 'handlers:HANDLERS')
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert 'Traceback' not in done.stderr and 'No space left' in done.stderr
    filler.unlink()
    done = dbbasic_queue_cli(small_disk, 'work', 'handlers:HANDLERS')
    assert done.returncode == 0, done.stderr
    assert queue.get_job(job_id)['status'] == 'completed'


TRUNCATING_HANDLERS = '''
import glob, os
def truncate_journals(payload):
    for path in glob.glob('data/.queue.tsv.*.running'):
        os.truncate(path, 0)
    return payload['n']
HANDLERS = {'t': truncate_journals}
'''


def test_a_journal_truncated_under_a_live_worker_does_not_kill_it(tmp_path):
    (tmp_path / 'handlers.py').write_text(TRUNCATING_HANDLERS)
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    ids = [queue.enqueue('t', {'n': n}) for n in range(3)]
    done = dbbasic_queue_cli(tmp_path, 'work', 'handlers:HANDLERS')
    assert done.returncode == 0, (done.returncode, done.stderr)
    assert [queue.get_job(job_id)['status'] for job_id in ids] == ['completed'] * 3


# -- C. The dashboard -------------------------------------------------------------------
def raw_request(port, data, timeout=SUBPROCESS_TIMEOUT_SECONDS):
    """Send data on a new connection to 127.0.0.1:port; the whole response."""
    import socket
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as connection:
        connection.sendall(data)
        chunks = []
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                return b''.join(chunks)
            chunks.append(chunk)


HOSTS_SERVED = {
    '127.0.0.1': True, '127.0.0.1:8080': True, 'localhost': True, 'LOCALHOST:80': True,
    '[::1]': True, '[::1]:8080': True, '127.0.0.2': True,
    'attacker.example': False, 'attacker.example:8080': False, '10.1.2.3': False,
    '127.0.0.1.attacker.example': False, 'localhost.attacker.example:80': False,
}


def test_without_a_token_only_loopback_host_values_are_served(queue_path):
    from tests.test_web import serving
    queue = Queue(queue_path)
    with serving(queue) as client:
        for host, served in HOSTS_SERVED.items():
            status, _, _ = client.get('/', headers={'Host': host})
            assert status == (200 if served else 421), host
            if not served:
                assert client.request('POST', '/pause', form={'type': 't'},
                                      headers={'Host': host})[0] == 421
    assert queue.paused_types() == []


def test_with_a_token_any_host_is_served(queue_path):
    from tests.test_web import serving
    with serving(Queue(queue_path), token='s3cret') as client:
        status, _, _ = client.get('/', headers={'Host': 'queue.example.com',
                                                'Authorization': 'Bearer s3cret'})
        assert status == 200


def test_head_sends_no_body(queue_path):
    from tests.test_web import serving
    with serving(Queue(queue_path)) as client:
        response = raw_request(client.port, b'HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n')
    head, _, body = response.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.0 200') and b'Content-Length' in head and body == b''


@pytest.mark.slow
def test_slow_clients_do_not_hold_the_dashboard(queue_path, monkeypatch, caplog):
    import socket
    from dbbasic_queue import web
    from tests.test_web import serving
    monkeypatch.setattr(web, 'READ_TIMEOUT_SECONDS', 1)
    caplog.set_level('INFO', logger='dbbasic_queue')   # before any read can time out
    slow = []
    with serving(Queue(queue_path)) as client:
        try:
            for _ in range(50):
                connection = socket.create_connection(('127.0.0.1', client.port),
                                                      timeout=SUBPROCESS_TIMEOUT_SECONDS)
                connection.sendall(b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n')   # never ends
                slow.append(connection)
            assert client.get('/')[0] == 200   # served while they hang
            for connection in slow:   # each is closed by the server once its read times out
                assert connection.recv(65536) == b''
            assert client.get('/')[0] == 200
        finally:
            for connection in slow:
                connection.close()
    assert 'sent no whole request in 1 s: disconnected' in caplog.text   # a line, no traceback


@pytest.mark.slow
def test_the_dashboard_serves_a_bounded_number_of_connections_at_once(queue_path, monkeypatch):
    import socket
    import threading
    from dbbasic_queue import web
    from tests.test_web import serving
    monkeypatch.setattr(web, 'READ_TIMEOUT_SECONDS', 1)
    monkeypatch.setattr(web, 'MAX_CONNECTIONS', 4)
    slow = []
    with serving(Queue(queue_path)) as client:
        before = threading.active_count()
        try:
            for _ in range(12):
                connection = socket.create_connection(('127.0.0.1', client.port),
                                                      timeout=SUBPROCESS_TIMEOUT_SECONDS)
                connection.sendall(b'GET / HTTP/1.1\r\n')
                slow.append(connection)
            time.sleep(0.3)
            assert threading.active_count() - before <= 4
            assert client.get('/')[0] == 200   # once the slow ones timed out
        finally:
            for connection in slow:
                connection.close()


# -- power cuts, reasoned from the system calls (strace shows each with its path) -------
def traced_syscalls(tmp_path, code, *args):
    """[(syscall, the paths it names)] of `python -c code args` in order, from strace."""
    import re
    import shutil
    if shutil.which('strace') is None:
        pytest.skip('strace is not installed (apt-get install strace)')
    trace = tmp_path / 'trace.txt'
    done = subprocess.run(['strace', '-f', '-qq', '-y', '-o', str(trace), '-e',
                           'trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat,'
                           'mkdir,mkdirat', sys.executable, '-c', code, *map(str, args)],
                          capture_output=True, text=True, env=python_env(),
                          timeout=SUBPROCESS_TIMEOUT_SECONDS)
    if done.returncode != 0 and 'ptrace' in done.stderr:
        pytest.skip(f'strace cannot trace here: {done.stderr.strip()}')
    assert done.returncode == 0, done.stderr
    calls = []
    for line in trace.read_text().splitlines():
        found = re.match(r'(?:\d+\s+)?(\w+)\((.*)\)\s+=\s+0', line)
        if found:
            calls.append((found.group(1), re.findall(r'<([^>]*)>|"([^"]*)"', found.group(2))))
    return [(name, [a or b for a, b in paths]) for name, paths in calls]


def index_of(calls, name_prefix, path_end, after=-1):
    for i, (name, paths) in enumerate(calls):
        if i > after and name.startswith(name_prefix) and any(p.endswith(path_end) for p in paths):
            return i
    raise AssertionError(f'no {name_prefix}(...{path_end}) after call {after}: {calls}')


def test_the_first_create_of_a_queue_fsyncs_the_directories_it_adds_to(tmp_path):
    calls = traced_syscalls(tmp_path, 'import sys; from dbbasic_queue import Queue; '
                            'Queue(sys.argv[1], durable=True).enqueue("t", {})',
                            tmp_path / 'data' / 'queue.tsv')
    made = index_of(calls, 'mkdir', '/data')
    index_of(calls, 'fsync', str(tmp_path), after=made)   # the new directory's entry
    linked = index_of(calls, 'link', '/data/queue.tsv')
    synced = index_of(calls, 'fsync', '/data', after=linked)   # the new file's entry
    assert synced < index_of(calls, 'fsync', '/data/queue.tsv', after=linked)   # the job's


SCHEDULE_COMMIT = '''
import sys, time
from dbbasic_queue import Queue, every
queue = Queue(sys.argv[1])
schedule = [every('1s', 't')]
queue.enqueue_due(schedule)   # records the entry; its first slot is the next one
time.sleep(1.1)
assert len(queue.enqueue_due(schedule)) == 1
'''


@pytest.mark.slow
def test_a_schedule_commit_makes_its_job_durable_before_its_slot(tmp_path):
    calls = traced_syscalls(tmp_path, SCHEDULE_COMMIT, tmp_path / 'data' / 'queue.tsv')
    renames = [i for i, (name, paths) in enumerate(calls) if name.startswith('rename')
               and any(p.endswith('queue.schedule.tsv') for p in paths)]
    in_flight, settled = renames[-2:]
    assert index_of(calls, 'fsync', '/data/queue.tsv', after=in_flight) < settled


# -- a year of downtime ------------------------------------------------------------------
@pytest.mark.parametrize('entry_of', [
    lambda **options: every('1m', 't', catch_up='all', **options),
    lambda **options: cron('* * * * *', 't', catch_up='all', **options),
])
def test_catch_up_all_after_a_year_down_is_capped_with_a_warning(tmp_path, clock, caplog,
                                                                entry_of):
    queue = Queue(tmp_path / 'queue.tsv', clock=clock)
    assert queue.enqueue_due([entry_of()]) == []   # the entry starts from now
    clock.advance(365 * 86400)
    with caplog.at_level('WARNING', logger='dbbasic_queue'):
        ids = queue.enqueue_due([entry_of()])
    assert len(ids) == MAX_CATCH_UP_SLOTS
    assert 'skipped its missed slots' in caplog.text and 'max_catch_up' in caplog.text
    # the latest slots are the ones kept: the last is the minute of now
    latest = max(datetime.datetime.fromisoformat(job['payload']['scheduled_for']).timestamp()
                 for job in queue.list_jobs())
    assert latest == clock.now - clock.now % 60
    clock.advance(365 * 86400)
    assert len(queue.enqueue_due([entry_of(max_catch_up=3000)])) == 3000


def test_max_catch_up_must_be_a_positive_int():
    for bad in (0, -1, 1.5, True, '10'):
        with pytest.raises(InvalidArgumentError):
            every('1m', 't', catch_up='all', max_catch_up=bad)


# -- enqueue_many of a generator: memory near the lines' size ----------------------------
ENQUEUE_MANY_MEMORY = '''
import os, resource, sys
from dbbasic_queue import Queue
queue = Queue(sys.argv[1])
queue.enqueue('warm', {})   # the file exists: its creation is not counted
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids = queue.enqueue_many(('send_email', {'to': f'user{n}@example.com', 'n': n})
                         for n in range(int(sys.argv[2])))
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(grown / os.path.getsize(sys.argv[1]))
'''


@pytest.mark.slow
def test_enqueue_many_of_a_generator_takes_under_twice_the_lines_size(tmp_path):
    done = run_python(ENQUEUE_MANY_MEMORY, tmp_path / 'queue.tsv', 300_000)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < 2.0   # 2.1.0: 7.4 (every item kept, then every line)


def test_enqueue_many_is_all_or_nothing_across_chunks_of_a_generator(backend, monkeypatch):
    from dbbasic_queue import queue as queue_module
    monkeypatch.setattr(queue_module, 'ENQUEUE_MANY_CHUNK_JOBS', 10)
    queue = Queue(backend)
    items = (('t', {'n': n}) if n != 25 else ('t', {1, 2}) for n in range(30))
    with pytest.raises(InvalidArgumentError, match='item 25: .*JSON'):
        queue.enqueue_many(items)
    assert queue.stats()['total'] == 0


# -- the sdist carries what the README's two commands need -------------------------------
@pytest.mark.slow
def test_the_sdist_runs_the_quickstart_and_a_quick_test_subset(tmp_path):
    import shutil
    import tarfile
    from tests.conftest import REPO
    source = tmp_path / 'source'   # a copy: building writes egg-info beside the sources
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        '.git', '.venv*', 'data', '__pycache__', '*.egg-info', 'build', '.hypothesis',
        '.pytest_cache'))
    built = run_python('import sys; from setuptools import build_meta; '
                       'print(build_meta.build_sdist(sys.argv[1]))', tmp_path / 'dist',
                       cwd=source)
    assert built.returncode == 0, built.stderr
    with tarfile.open(tmp_path / 'dist' / built.stdout.split()[-1]) as sdist:
        sdist.extractall(tmp_path / 'unpacked')
    unpacked, = (tmp_path / 'unpacked').iterdir()
    for needed in ('examples/quickstart.py', 'tests/conftest.py', 'tests/__init__.py',
                   'tests/redis_server.py'):
        assert (unpacked / needed).exists(), needed
    env = {**python_env(), 'PYTHONPATH': str(unpacked)}
    quickstart = subprocess.run([sys.executable, 'examples/quickstart.py'], cwd=unpacked,
                                env=env, capture_output=True, text=True,
                                timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert quickstart.returncode == 0, quickstart.stderr
    tests = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                            '-m', 'not slow and not redis', 'tests/test_api.py'],
                           cwd=unpacked, env=env, capture_output=True, text=True,
                           timeout=SUBPROCESS_TIMEOUT_SECONDS * 3)
    assert tests.returncode == 0, tests.stdout[-2000:]
    assert ' passed' in tests.stdout


# -- two Unix users share one queue through a group ---------------------------------------
WEB_UID, WORKER_UID, SHARED_GID = 64001, 64002, 64000   # no passwd entries are needed


@pytest.fixture
def shared_queue_dir():
    """A directory under /tmp that two real uids in one group can use, with this
    package and dbbasic-tsv copied in (the checkout may be where they cannot read), and
    a Python they may run; skipped where this process cannot switch users (not root)."""
    import shutil
    import tempfile
    import dbbasic.tsv
    from tests.conftest import REPO
    if os.geteuid() != 0:
        pytest.skip('switching to other uids needs root (CI runs as root)')
    top = Path(tempfile.mkdtemp(prefix='dbbasic-queue-two-users-', dir='/tmp'))
    os.chmod(top, 0o755)
    lib = top / 'lib'
    shutil.copytree(REPO / 'dbbasic_queue', lib / 'dbbasic_queue',
                    ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copytree(Path(dbbasic.tsv.__file__).parent, lib / 'dbbasic',
                    ignore=shutil.ignore_patterns('__pycache__'))
    (top / 'handlers.py').write_text('HANDLERS = {"t": lambda p: p["n"]}\n')
    app = top / 'app'
    app.mkdir()
    for path in (lib, top / 'handlers.py'):
        subprocess.run(['chmod', '-R', 'a+rX', str(path)], check=True)
    os.chown(app, 0, SHARED_GID)
    os.chmod(app, 0o2770)   # the README's recipe: data/ group-owned, setgid
    python = next((candidate for candidate in (sys.executable, '/usr/bin/python3')
                   if may_run(candidate, top)), None)
    if python is None:
        shutil.rmtree(top)
        pytest.skip('no Python here that another uid may run')
    yield top, python
    shutil.rmtree(top)


def may_run(python, cwd):
    try:
        return as_user(WEB_UID, [python, '-c', 'import json, fcntl'], cwd).returncode == 0
    except OSError:   # it lies where that uid may not go (a pyenv under /root)
        return False


def as_user(uid, command, cwd, env=None):
    def become():
        os.setgroups([SHARED_GID])
        os.setgid(SHARED_GID)
        os.setuid(uid)
    return subprocess.run(command, cwd=cwd, preexec_fn=become, capture_output=True, text=True,
                          env={'PATH': '/usr/bin:/bin', 'HOME': str(cwd), **(env or {})},
                          timeout=SUBPROCESS_TIMEOUT_SECONDS)


def test_two_users_in_one_group_share_a_queue_as_the_readme_says(shared_queue_dir):
    top, python = shared_queue_dir
    app = top / 'app'
    shared = {'PYTHONPATH': f'{top / "lib"}:{top}', 'DBBASIC_QUEUE_MODE': '660'}
    cli = [python, '-m', 'dbbasic_queue']

    def run(uid, *args, env=shared):
        done = as_user(uid, cli + list(args), app, env)
        assert done.returncode == 0, (uid, args, done.stderr)
        return done
    first = run(WEB_UID, 'enqueue', 't', '{"n": 1}').stdout.strip()
    run(WORKER_UID, 'work', 'handlers:HANDLERS')
    # A worker run once without the setting: the files it makes still follow the queue's.
    second = run(WEB_UID, 'enqueue', 't', '{"n": 2}').stdout.strip()
    unshared = {'PYTHONPATH': shared['PYTHONPATH']}
    run(WORKER_UID, 'work', 'handlers:HANDLERS', env=unshared)
    third = run(WEB_UID, 'enqueue', 't', '{"n": 3}').stdout.strip()
    run(WEB_UID, 'pause', 't')        # what the dashboard's buttons do, as the web user
    run(WEB_UID, 'resume', 't')
    run(WEB_UID, 'cancel', third)
    worked = run(WORKER_UID, 'work', 'handlers:HANDLERS', env=unshared)
    assert 'owned by uid' not in worked.stderr and 'keeps mode' not in worked.stderr
    for uid in (WEB_UID, WORKER_UID):
        assert run(uid, 'check').stdout.strip().endswith('no problems')
    statuses = [json.loads(run(WEB_UID, '--json', 'show', job_id).stdout)['status']
                for job_id in (first, second, third)]
    assert statuses == ['completed', 'completed', 'cancelled']
    for path in (app / 'data').iterdir():
        assert path.stat().st_mode & 0o660 == 0o660, path


def test_check_names_a_file_that_keeps_another_user_out_and_its_fix(shared_queue_dir):
    top, python = shared_queue_dir
    app = top / 'app'
    env = {'PYTHONPATH': f'{top / "lib"}:{top}', 'DBBASIC_QUEUE_MODE': '660'}
    for command in (['enqueue', 't', '{}'], ['pause', 't']):
        assert as_user(WEB_UID, [python, '-m', 'dbbasic_queue', *command], app,
                       env).returncode == 0
    paused = app / 'data' / 'queue.paused'
    os.chmod(paused, 0o600)   # as an older version's run, or a hand edit, left it
    done = as_user(WEB_UID, [python, '-m', 'dbbasic_queue', 'check'], app, env)
    assert done.returncode != 0
    assert 'chmod 660 data/queue.paused' in done.stdout, done.stdout
    refused = as_user(WORKER_UID, [python, '-m', 'dbbasic_queue', 'resume', 't'], app, env)
    assert refused.returncode != 0 and 'chmod' in refused.stderr and 'Traceback' not in refused.stderr


# -- F. After migrate, cron follows the app; a crontab installed twice has one line ---------
def crontab_of(workdir, *args, env=None, stdin=None):
    done = subprocess.run([sys.executable, '-m', 'dbbasic_queue', 'crontab', 'handlers:HANDLERS',
                           *args], cwd=workdir, capture_output=True, text=True, input=stdin,
                          env={**python_env(), **(env or {})}, timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_crontab_line_names_the_queue_and_its_mode_as_the_app_does(tmp_path):
    (tmp_path / 'handlers.py').write_text('HANDLERS = {"t": len}\n')
    default = crontab_of(tmp_path)
    assert '--queue' not in default and 'DBBASIC_QUEUE=' not in default
    from_env = crontab_of(tmp_path, env={'DBBASIC_QUEUE': 'data/jobs.tsv',
                                         'DBBASIC_QUEUE_MODE': '660'})
    assert ' DBBASIC_QUEUE=data/jobs.tsv ' in from_env and '--queue' not in from_env
    assert ' umask 006 && ' in from_env and ' DBBASIC_QUEUE_MODE=660 ' in from_env
    explicit = subprocess.run([sys.executable, '-m', 'dbbasic_queue', '--queue', 'data/q.tsv',
                               'crontab', 'handlers:HANDLERS'], cwd=tmp_path, text=True,
                              capture_output=True, env=python_env(),
                              timeout=SUBPROCESS_TIMEOUT_SECONDS).stdout
    assert f'--queue {tmp_path}/data/q.tsv ' in explicit


def test_crontab_merge_replaces_its_line_in_place_so_installing_twice_leaves_one(tmp_path):
    (tmp_path / 'handlers.py').write_text('HANDLERS = {"t": len}\n')
    crontab = 'MAILTO=ops@example.com\n0 3 * * * /usr/bin/backup\n'
    once = crontab_of(tmp_path, '--merge', stdin=crontab)
    twice = crontab_of(tmp_path, '--merge', stdin=once)
    assert once == twice and once.startswith(crontab) and len(once.splitlines()) == 3
    moved = crontab_of(tmp_path, '--merge', stdin=twice + '@reboot /usr/bin/other\n',
                       env={'DBBASIC_QUEUE': 'redis://127.0.0.1:6379/0'})
    lines = moved.splitlines()
    assert len(lines) == 4 and 'DBBASIC_QUEUE=redis://127.0.0.1:6379/0' in lines[2]
    assert lines[3] == '@reboot /usr/bin/other'


def test_a_file_queue_after_migrate_warns_and_strands_no_job_silently(tmp_path, redis_url):
    (tmp_path / 'handlers.py').write_text('HANDLERS = {"t": lambda p: p}\n')
    path = tmp_path / 'data' / 'queue.tsv'
    Queue(path).enqueue('t', {'n': 1})
    migrated = dbbasic_queue_cli(tmp_path, 'migrate', '--to', redis_url)
    assert migrated.returncode == 0, migrated.stderr
    assert f'DBBASIC_QUEUE={redis_url}' in migrated.stdout and '--merge' in migrated.stdout
    # A cron line not changed yet: it works the file, and says where the queue went.
    late = Queue(path).enqueue('t', {'n': 2})   # an app process not restarted
    worked = dbbasic_queue_cli(tmp_path, 'work', 'handlers:HANDLERS')
    assert f'was migrated to {redis_url}' in worked.stderr
    assert Queue(path).get_job(late)['status'] == 'completed'
    # With no file worker left, a job the app still enqueues there is reported.
    stranded = Queue(path).enqueue('t', {'n': 3})
    assert Queue(path).stats()['migrated_to'] == redis_url
    problems = Queue(path).check()
    assert any('enqueued after the queue was migrated' in p for p in problems), problems
    stats = dbbasic_queue_cli(tmp_path, 'stats')
    assert f'migrated to:    {redis_url}' in stats.stdout and 'run migrate again' in stats.stdout
    again = dbbasic_queue_cli(tmp_path, 'migrate', '--to', redis_url)
    assert again.returncode == 0, again.stderr
    assert Queue(redis_url).get_job(stranded)['status'] == 'pending'
    assert not any('migrated' in p for p in Queue(path).check())
