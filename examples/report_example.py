"""Scheduling and retries: a report due in the future, and a flaky job that fails once.

    python examples/report_example.py

Uses a Queue with an injected clock, so an hour passes in an instant, and a 1-second
backoff base instead of 60 seconds, so the retry is visible.
"""

import logging
import tempfile
from pathlib import Path

from dbbasic_queue import Queue


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def main():
    # One line per failure: the export fails once on purpose, its traceback is noise here.
    logging.basicConfig(level=logging.WARNING, format='log: %(levelname)s %(message)s')
    logging.getLogger().handlers[0].formatter.formatException = lambda exc_info: ''
    with tempfile.TemporaryDirectory(prefix='dbbasic-queue-report-') as directory:
        demo(Path(directory))


def demo(directory):
    clock = Clock(1_800_000_000.0)
    queue = Queue(directory / 'reports.tsv', clock=clock, backoff_base_seconds=1)
    calls = {'flaky': 0}

    def nightly_report(payload):
        return {'report': payload['name'], 'rows': 42}

    def flaky_export(payload):
        calls['flaky'] += 1
        if calls['flaky'] == 1:
            raise ConnectionError('warehouse did not answer')
        return {'exported': payload['table']}

    handlers = {'nightly_report': nightly_report, 'flaky_export': flaky_export}
    report = queue.enqueue('nightly_report', {'name': 'sales'}, run_at=clock.now + 3600)
    export = queue.enqueue('flaky_export', {'table': 'orders'})

    for step in ('now', 'after the backoff', 'an hour later'):
        summary = queue.process_jobs(handlers, max_attempts=3)
        r, e = queue.get_job(report), queue.get_job(export)
        print(f'{step:18} {summary}')
        print(f'{"":18} report: {r["status"]:9}  export: {e["status"]:9} '
              f'attempts={e["attempts"]} error={e["error"]}')
        clock.now = e['run_at'] if step == 'now' else clock.now + 3600


if __name__ == '__main__':
    main()
