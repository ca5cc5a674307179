"""Recurring jobs (issue 13): cron() and every() entries, exactly one job per (entry, slot)
whatever runs at once or is killed, missed slots, DST, plain-text state, both backends."""

import collections
import json
import logging
import random
import signal
import subprocess
import sys
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from dbbasic_queue import InvalidArgumentError, Queue, cron, every
from dbbasic_queue.schedule import MISSED_SLOT_SECONDS
from tests.conftest import (SUBPROCESS_TIMEOUT_SECONDS, FakeClock, python_env, run_python,
                            spawn)

HOUR = 3600
BERLIN = ZoneInfo('Europe/Berlin')
START = 1_800_000_000.0        # 2027-01-15 08:00:00 UTC: a whole hour


def slots_of(queue, job_type):
    """{slot text: number of jobs} of the scheduled jobs of this type, any status."""
    return collections.Counter(job.payload['scheduled_for'] for job in queue.jobs()
                               if job.type == job_type)


def at(year, month, day, hour=0, minute=0, zone=BERLIN):
    return datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()


# -- the basics, on both backends ----------------------------------------------------------
def test_a_new_entry_starts_from_now_then_gets_one_job_per_slot(backend):
    clock = FakeClock(START + 10)
    queue = Queue(backend, clock=clock)
    schedule = [every('15m', 'cleanup', {'dir': '/tmp'}),
                cron('0 * * * *', 'report', tz='UTC')]
    assert queue.enqueue_due(schedule) == []          # a new entry: its first job is its next slot
    assert queue.enqueue_due(schedule) == []
    clock.advance(15 * 60)
    [cleanup_id] = queue.enqueue_due(schedule)
    job = queue.get_job(cleanup_id)
    assert job['type'] == 'cleanup' and job['status'] == 'pending'
    assert job['payload'] == {'dir': '/tmp', 'scheduled_for': '2027-01-15T08:15:00+00:00'}
    assert queue.enqueue_due(schedule) == []          # that slot is done
    clock.advance(45 * 60)
    assert len(queue.enqueue_due(schedule)) == 2      # 09:00: both entries
    ran = []
    queue.process_jobs({'cleanup': ran.append, 'report': ran.append}, schedule=schedule)
    assert sorted(p['scheduled_for'] for p in ran) == [
        '2027-01-15T08:15:00+00:00', '2027-01-15T09:00:00+00:00', '2027-01-15T09:00:00+00:00']
    assert slots_of(queue, 'report') == {'2027-01-15T09:00:00+00:00': 1}


@pytest.mark.parametrize('catch_up, expected', [
    ('latest', ['11:00']), ('all', ['09:00', '10:00', '11:00']), ('none', [])])
def test_after_three_hours_down_an_hourly_entry_catches_up_as_asked(backend, catch_up, expected):
    clock = FakeClock(START)
    queue = Queue(backend, clock=clock)
    schedule = [cron('0 * * * *', 'hourly', tz='UTC', catch_up=catch_up)]
    queue.enqueue_due(schedule)
    clock.advance(3 * HOUR + 10 * 60)                 # down from 08:00 to 11:10
    queue.enqueue_due(schedule)
    found = sorted(slots_of(queue, 'hourly').items())
    assert found == [(f'2027-01-15T{hhmm}:00+00:00', 1) for hhmm in expected]
    clock.advance(50 * 60)                           # 12:00: on time again, for every mode
    queue.enqueue_due(schedule)
    assert slots_of(queue, 'hourly')['2027-01-15T12:00:00+00:00'] == 1


def test_catch_up_none_still_runs_a_slot_found_in_time(queue, clock):
    schedule = [every('1h', 'hourly', catch_up='none')]
    queue.enqueue_due(schedule)
    clock.advance(HOUR + MISSED_SLOT_SECONDS - 1)
    assert len(queue.enqueue_due(schedule)) == 1
    clock.advance(HOUR)                               # the next slot, found too late
    clock.advance(2)
    assert queue.enqueue_due(schedule) == []
    assert queue.enqueue_due(schedule) == []          # and it is not considered again


def test_two_queues_on_one_backend_never_enqueue_a_slot_twice(backend):
    clock = FakeClock(START)
    first, second = Queue(backend, clock=clock), Queue(backend, clock=clock)
    schedule = [every('1m', 'tick', catch_up='all')]
    first.enqueue_due(schedule)
    for _ in range(30):
        clock.advance(37)
        second.enqueue_due(schedule)
        first.enqueue_due(schedule)
    counts = slots_of(first, 'tick')
    assert len(counts) == 18 and set(counts.values()) == {1}


# -- exactly once under races and kill -9 --------------------------------------------------
RACER = '''
import sys, time
from dbbasic_queue import Queue, every
location, t0, speed = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
queue = Queue(location, clock=lambda: {start} + (time.time() - t0) * speed)
schedule = [every('1m', 'tick', catch_up='all'), every('3m', 'tock', catch_up='latest')]
while True:
    queue.enqueue_due(schedule)
    time.sleep(0.001)
'''


@pytest.mark.slow
def test_four_racing_processes_killed_at_random_give_each_slot_exactly_one_job(backend):
    """4 processes enqueue due slots in a loop on a clock running 600x (a slot of the
    1-minute entry every 0.1 s); one of them is SIGKILLed and restarted every 50-250 ms.
    Over 50 slots, every slot has exactly one job: none twice, none lost."""
    speed, slots = 600.0, 50
    t0 = time.time() + 1.0                            # the clock starts once all have started
    code = RACER.format(start=START)
    racers = [spawn(code, backend, t0, speed) for _ in range(4)]
    kills, rng = 0, random.Random(13)
    try:
        end_wall = t0 + slots * 60 / speed + 0.2
        while time.time() < end_wall:
            time.sleep(rng.uniform(0.05, 0.25))
            victim = rng.randrange(len(racers))
            racers[victim].kill()                    # SIGKILL, whatever it is doing
            racers[victim].communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
            kills += 1
            racers[victim] = spawn(code, backend, t0, speed)
    finally:
        for racer in racers:
            racer.kill()
        errors = [racer.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)[1] for racer in racers]
    end = START + (time.time() - t0) * speed
    queue = Queue(backend, clock=lambda: end)
    queue.enqueue_due([every('1m', 'tick', catch_up='all'), every('3m', 'tock')])  # settles
    ticks = slots_of(queue, 'tick')
    assert not [e for e in errors if 'Traceback' in e], errors
    assert kills >= 10
    assert len(ticks) >= slots - 2 and set(ticks.values()) == {1}, ticks.most_common(3)
    minutes = sorted(datetime.fromisoformat(slot).timestamp() for slot in ticks)
    assert minutes == [minutes[0] + 60 * i for i in range(len(minutes))]   # none lost
    assert minutes[-1] == (end // 60) * 60                                  # up to now
    assert set(slots_of(queue, 'tock').values()) == {1}


KILLED_IN_COMMIT = '''
import os, signal, sys
from dbbasic_queue import Queue, every
location, when = sys.argv[1], sys.argv[2]
queue = Queue(location, clock=lambda: {now})
table = queue.backend.table
real_append = table.append

def append(data, fsync=False):
    if when == 'after':
        real_append(data, fsync)
    os.kill(os.getpid(), signal.SIGKILL)

table.append = append
queue.enqueue_due([every('1h', 'hourly')])
'''


@pytest.mark.parametrize('when', ['before', 'after'])
def test_a_worker_killed_inside_a_commit_leaves_its_slot_with_exactly_one_job(queue_path, when):
    """SIGKILL between the in-flight record and the append ('before': the job was never
    written) or between the append and the final record ('after'): the next run settles
    it, and the slot has one job either way."""
    clock = FakeClock(START)
    queue = Queue(queue_path, clock=clock)
    queue.enqueue_due([every('1h', 'hourly')])
    killed = run_python(KILLED_IN_COMMIT.format(now=START + HOUR + 5), queue_path, when)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = queue_path.with_name('queue.schedule.tsv').read_text()
    assert state.splitlines()[1].split('\t')[4] == '2027-01-15T08:00:00Z'   # in flight
    assert len(slots_of(queue, 'hourly')) == (1 if when == 'after' else 0)
    clock.advance(HOUR + 10)
    queue.enqueue_due([every('1h', 'hourly')])
    assert slots_of(queue, 'hourly') == {'2027-01-15T09:00:00+00:00': 1}
    assert queue_path.with_name('queue.schedule.tsv').read_text().splitlines()[1].endswith('\t')


# -- time zones and DST --------------------------------------------------------------------
def run_through(queue, schedule, start, end, step_seconds=300):
    queue._clock.now = start
    while queue._clock.now < end:
        queue.enqueue_due(schedule)
        queue._clock.advance(step_seconds)


@pytest.mark.parametrize('day, expected', [
    ((2026, 3, 29), '2026-03-29T03:00:00+02:00'),     # spring forward: 02:30 never happens
    ((2026, 10, 25), '2026-10-25T02:30:00+02:00'),    # fall back: 02:30 happens twice
])
def test_a_daily_0230_entry_runs_once_on_a_dst_day(queue, day, expected):
    schedule = [cron('30 2 * * *', 'nightly', tz='Europe/Berlin')]
    run_through(queue, schedule, at(*day) - 12 * HOUR, at(*day) + 36 * HOUR)
    runs = slots_of(queue, 'nightly')
    on_the_day = {slot: n for slot, n in runs.items() if slot.startswith('%d-%02d-%02d' % day)}
    assert on_the_day == {expected: 1}
    assert len(runs) == 2 and set(runs.values()) == {1}   # and once the next day


def test_cron_entries_run_in_local_time_without_tz(queue, monkeypatch):
    monkeypatch.setenv('TZ', 'Europe/Berlin')
    schedule = [cron('30 2 * * *', 'nightly')]
    run_through(queue, schedule, at(2026, 10, 24, 12), at(2026, 10, 26, 12))
    assert slots_of(queue, 'nightly') == {'2026-10-25T02:30:00+02:00': 1,
                                          '2026-10-26T02:30:00+01:00': 1}
    monkeypatch.setenv('TZ', 'America/New_York')
    schedule = [cron('30 2 * * *', 'nightly_ny')]
    run_through(queue, schedule, at(2026, 10, 24, 12), at(2026, 10, 25, 12))
    assert slots_of(queue, 'nightly_ny') == {'2026-10-25T02:30:00-04:00': 1}


def test_an_every_half_hour_cron_entry_follows_real_time_through_a_25_hour_day(queue):
    schedule = [cron('*/30 * * * *', 'half', tz='Europe/Berlin', catch_up='all')]
    run_through(queue, schedule, at(2026, 10, 24, 23, 50), at(2026, 10, 26, 0, 1), HOUR)
    slots = [slot for slot in slots_of(queue, 'half') if slot.startswith('2026-10-25')]
    assert len(slots) == 50                           # 25 hours: the repeated one runs too


# -- the state: plain text beside the queue -------------------------------------------------
def test_the_state_is_one_greppable_line_per_entry(queue, queue_path, clock):
    schedule = [cron('0 3 * * *', 'report', tz='Europe/Berlin'), every('15m', 'cleanup')]
    queue.enqueue_due(schedule)
    clock.advance(24 * HOUR)
    ids = queue.enqueue_due(schedule)
    lines = queue_path.with_name('queue.schedule.tsv').read_text().splitlines()
    assert lines[0] == 'name\tschedule\tlast_slot\tjob_id\trollback_slot'
    by_name = {line.split('\t')[0]: line.split('\t') for line in lines[1:]}
    assert by_name['report'] == ['report', 'cron 0 3 * * * Europe/Berlin',
                                 '2027-01-16T02:00:00Z', ids[0], '']
    assert by_name['cleanup'][1:3] == ['every 15m', '2027-01-16T08:00:00Z']
    assert queue.check() == []


def test_a_changed_expression_starts_from_now_and_a_removed_entry_is_reported(
        queue, queue_path, clock, caplog):
    queue.enqueue_due([every('1h', 'hourly'), every('1d', 'daily')])
    clock.advance(2 * HOUR + 60)
    with caplog.at_level(logging.INFO, logger='dbbasic_queue'):
        assert queue.enqueue_due([every('2h', 'hourly')]) == []   # changed: from now
    assert "schedule state of 'daily' (every 1d) has no entry in this schedule" in caplog.text
    assert "'hourly' changed from 'every 1h' to 'every 2h'" in caplog.text
    state = queue_path.with_name('queue.schedule.tsv').read_text()
    assert '\ndaily\tevery 1d\t' in state                           # kept, ignored
    clock.advance(2 * HOUR)
    [job_id] = queue.enqueue_due([every('2h', 'hourly')])
    assert queue.get_job(job_id)['payload']['scheduled_for'] == '2027-01-15T12:00:00+00:00'


def test_check_reports_a_hand_edited_line_and_commits_keep_it(queue, queue_path, clock, caplog):
    queue.enqueue_due([every('1h', 'hourly')])
    state_path = queue_path.with_name('queue.schedule.tsv')
    with open(state_path, 'a') as f:
        f.write('oops no tabs here\n')
    assert queue.check() == ["queue.schedule.tsv:3: expected 5 tab-separated fields (name, "
                             "schedule, last_slot, job_id, rollback_slot): 'oops no tabs here'"]
    clock.advance(HOUR)
    with caplog.at_level(logging.WARNING, logger='dbbasic_queue'):
        assert len(queue.enqueue_due([every('1h', 'hourly')])) == 1
    assert "kept a line that is not an entry's state" in caplog.text
    assert state_path.read_text().endswith('oops no tabs here\n')


# -- bad input: one clear error at start-up, naming the entry --------------------------------
@pytest.mark.parametrize('make, message', [
    (lambda: cron('0 3 * * mun', 'report'), "schedule entry 'report': bad cron expression "
                                           "'0 3 * * mun': Bad day-of-week"),
    (lambda: cron('61 * * * *', 'report'), "'61 * * * *': Bad minute"),
    (lambda: cron('0 3 * *', 'report'), 'it needs 5 fields'),
    (lambda: cron('0 0 30 2 *', 'leap'), "schedule entry 'leap': bad cron expression"),
    (lambda: cron('0 3 * * *', 'report', tz='Mars/Olympus'), "unknown time zone 'Mars/Olympus'"),
    (lambda: every(0, 'cleanup'), "schedule entry 'cleanup': the interval must be at least 1 s"),
    (lambda: every('0m', 'cleanup', name='sweep'), "schedule entry 'sweep': the interval must"),
    (lambda: every('soon', 'cleanup'), "bad duration 'soon'"),
    (lambda: every('1m', 'cleanup', catch_up='sometimes'), 'catch_up must be one of'),
    (lambda: every('1m', 'cleanup', ['not', 'a', 'dict']), 'payload must be a dict'),
    (lambda: every('1m', 'bad\ttype'), "schedule entry 'bad\\ttype'"),
])
def test_a_bad_entry_is_refused_where_it_is_declared(make, message):
    with pytest.raises(InvalidArgumentError) as error:
        make()
    assert message in str(error.value)


def test_a_schedule_entry_without_a_handler_fails_before_any_job_runs(queue):
    job_id = queue.enqueue('send', {})
    ran = []
    with pytest.raises(InvalidArgumentError) as error:
        queue.process_jobs({'send': ran.append}, schedule=[every('1m', 'cleanup')])
    assert str(error.value) == ("schedule entry 'cleanup' (every 1m) runs 'cleanup', which "
                                "has no handler in this worker")
    with pytest.raises(InvalidArgumentError, match="two schedule entries are named 'cleanup'"):
        queue.process_jobs({'cleanup': ran.append},
                           schedule=[every('1m', 'cleanup'), every('1h', 'cleanup')])
    assert ran == [] and queue.get_job(job_id)['status'] == 'pending'


def test_without_cronsim_cron_says_how_to_install_it(tmp_path):
    done = run_python('''
        import sys
        sys.modules['cronsim'] = None          # as if the [cron] extra were not installed
        from dbbasic_queue import QueueError, cron, every
        every('1m', 'cleanup')                 # needs no library
        try:
            cron('0 3 * * *', 'report')
        except QueueError as exc:
            print(exc)
    ''')
    assert done.stdout.strip() == 'cron() needs cronsim: pip install "dbbasic-queue[cron]"'


# -- migrate carries the state --------------------------------------------------------------
def test_migrate_carries_the_schedule_state_to_rq(queue_path, redis_url, tmp_path):
    clock = FakeClock(START)
    schedule = [every('1h', 'hourly'), cron('0 3 * * *', 'report', tz='UTC')]
    file_queue = Queue(queue_path, clock=clock)
    file_queue.enqueue_due(schedule)
    clock.advance(HOUR)
    file_queue.enqueue_due(schedule)
    moved = subprocess.run([sys.executable, '-m', 'dbbasic_queue', '--queue', str(queue_path),
                            'migrate', '--to', redis_url], env=python_env(), capture_output=True,
                           text=True, timeout=SUBPROCESS_TIMEOUT_SECONDS)
    assert moved.returncode == 0, moved.stderr
    assert 'copied the state of 2 recurring job(s): hourly, report' in moved.stdout
    redis_queue = Queue(redis_url, clock=clock)
    assert redis_queue.schedule_records() == file_queue.schedule_records()
    clock.advance(HOUR)
    [job_id] = redis_queue.enqueue_due(schedule)      # on from its last slot, not from now
    assert redis_queue.get_job(job_id)['payload']['scheduled_for'] == '2027-01-15T10:00:00+00:00'


# -- the command line -----------------------------------------------------------------------
APP = '''
import json, os
from dbbasic_queue import cron, every

def note(payload):
    with open(os.environ['RAN'], 'a') as f:
        f.write(json.dumps(payload) + '\\n')

HANDLERS = {'tick': note, 'report': note}
SCHEDULE = [every('1s', 'tick'), cron('0 3 * * *', 'report', {'kind': 'daily'}, tz='UTC')]
UNHANDLED = [every('1m', 'cleanup')]
'''


def cli(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, '-m', 'dbbasic_queue', *args], cwd=tmp_path,
                          env=python_env({'RAN': str(tmp_path / 'ran.jsonl'), **(env or {})}),
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_SECONDS)


@pytest.mark.slow
def test_work_with_a_schedule_enqueues_and_runs_its_slots(tmp_path):
    (tmp_path / 'app.py').write_text(APP)
    first = cli(tmp_path, 'work', 'app:HANDLERS', '--schedule', 'app:SCHEDULE')
    assert first.returncode == 0, first.stderr
    assert 'and the schedule app:SCHEDULE (2 entries)' in first.stderr
    time.sleep(1.1)                                   # the next 1-second slot comes due
    second = cli(tmp_path, 'work', 'app:HANDLERS', '--schedule', 'app:SCHEDULE')
    assert second.returncode == 0, second.stderr
    ran = [json.loads(line) for line in (tmp_path / 'ran.jsonl').read_text().splitlines()]
    assert len(ran) == 1 and set(ran[0]) == {'scheduled_for'}


def test_work_takes_the_schedule_from_pyproject(tmp_path):
    (tmp_path / 'app.py').write_text(APP)
    (tmp_path / 'pyproject.toml').write_text(
        '[tool.dbbasic-queue]\nhandlers = "app:HANDLERS"\nschedule = "app:SCHEDULE"\n')
    done = cli(tmp_path, 'work')
    assert done.returncode == 0 and '(2 entries)' in done.stderr, done.stderr
    listed = cli(tmp_path, 'schedule', '--json')
    assert listed.returncode == 0, listed.stderr
    rows = {row['name']: row for row in json.loads(listed.stdout)['entries']}
    assert rows['report']['schedule'] == 'cron 0 3 * * * UTC'
    assert rows['report']['last_slot'] is None and len(rows['report']['next_runs']) == 3
    runs = rows['report']['next_runs']
    assert [b - a for a, b in zip(runs, runs[1:])] == [86400, 86400] and runs[0] % 86400 == 3 * HOUR


def test_schedule_lists_entries_their_last_slot_next_runs_and_removed_ones(tmp_path):
    (tmp_path / 'app.py').write_text(APP + "OLD = [every('1h', 'gone')]\n")
    queue = Queue(tmp_path / 'data' / 'queue.tsv', clock=FakeClock(START))
    queue.enqueue_due([every('1h', 'gone'), cron('0 3 * * *', 'report', tz='UTC')])
    queue._clock.advance(24 * HOUR)
    queue.enqueue_due([cron('0 3 * * *', 'report', tz='UTC')])
    listed = cli(tmp_path, 'schedule', 'app:SCHEDULE', env={'TZ': 'UTC'})
    assert listed.returncode == 0, listed.stderr
    report = next(line for line in listed.stdout.splitlines() if line.startswith('report'))
    assert 'cron 0 3 * * * UTC' in report and '2027-01-16 03:00 UTC' in report
    assert report.count('03:00 UTC') == 4             # the last slot, then the next three
    assert 'gone: stored state with no entry in this schedule (ignored)' in listed.stdout


@pytest.mark.parametrize('args, message', [
    (['work', 'app:HANDLERS', '--schedule', 'app:UNHANDLED'],
     "schedule entry 'cleanup' (every 1m) runs 'cleanup', which has no handler in this worker"),
    (['work', 'app:HANDLERS', '--schedule', 'app:NOPE'], "app has no attribute 'NOPE'"),
    (['work', 'app:HANDLERS', '--schedule', 'broken:SCHEDULE'],
     "cannot import broken: InvalidArgumentError: schedule entry 'x': bad cron expression"),
    (['schedule'], 'no schedule given'),
])
def test_a_bad_schedule_is_one_line_on_stderr_and_exit_2(tmp_path, args, message):
    (tmp_path / 'app.py').write_text(APP)
    (tmp_path / 'broken.py').write_text(
        "from dbbasic_queue import cron\nSCHEDULE = [cron('0 3 * * xyz', 'x')]\n")
    done = cli(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and 'Traceback' not in done.stderr
    assert done.stderr.count('\n') == 1 and not (tmp_path / 'data' / 'queue.tsv').exists()


def test_crontab_passes_the_schedule_to_the_worker(tmp_path):
    (tmp_path / 'app.py').write_text(APP)
    done = cli(tmp_path, 'crontab', 'app:HANDLERS', '--schedule', 'app:SCHEDULE')
    assert done.returncode == 0, done.stderr
    assert ' work app:HANDLERS --max-seconds 55 --schedule app:SCHEDULE ' in done.stdout


@pytest.mark.slow
def test_a_long_running_rq_worker_enqueues_its_schedule_while_it_runs(redis_url):
    queue, ran = Queue(redis_url), []
    summary = queue.run_worker({'tick': ran.append}, max_seconds=3.5,
                               schedule=[every('1s', 'tick')])
    assert 2 <= len(ran) <= 4 and summary['completed'] == len(ran)
    assert set(slots_of(queue, 'tick').values()) == {1}
