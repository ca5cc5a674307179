"""Recurring jobs: a schedule declared next to the handlers, worked by cron runs.

    pip install 'dbbasic-queue[cron]' && python examples/schedule_example.py

A day passes in an instant (an injected clock). Every minute two cron runs overlap, as
they do when a run is slow, and each calls process_jobs with the schedule; the queue is
down from 02:00 to 05:00. Each slot still runs once, and the downtime costs one catch-up
job per entry, not a flood.
"""

import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from dbbasic_queue import Queue, cron, every

SCHEDULE = [
    cron('0 3 * * *', 'build_report', {'kind': 'daily'}, tz='UTC'),   # 03:00 every day
    every('4h', 'cleanup'),                                            # 00:00, 04:00, ...
    cron('*/30 9-17 * * mon-fri', 'sync_crm', tz='UTC'),               # office hours
]


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def main():
    with tempfile.TemporaryDirectory(prefix='dbbasic-queue-schedule-') as directory:
        demo(Path(directory))


def demo(directory):
    midnight = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()   # a Tuesday
    clock = Clock(midnight)
    ran = Counter()
    handlers = {job_type: lambda payload, job_type=job_type: ran.update([job_type])
                for job_type in ('build_report', 'cleanup', 'sync_crm')}
    cron_runs = [Queue(directory / 'queue.tsv', clock=clock) for _ in range(2)]
    for minute in range(-1, 24 * 60):
        clock.now = midnight + minute * 60
        if 2 * 60 <= minute < 5 * 60:
            continue                                  # the server is down, 02:00 to 05:00
        for run in cron_runs:
            run.process_jobs(handlers, schedule=SCHEDULE)
    print('jobs run in a day:', dict(sorted(ran.items())))
    print('cleanup slots:', [job.payload['scheduled_for'][11:16] for job in cron_runs[0].jobs()
                             if job.type == 'cleanup'])
    print((directory / 'queue.schedule.tsv').read_text(), end='')


if __name__ == '__main__':
    main()
