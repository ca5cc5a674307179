"""Quickstart: queue a few jobs, work them, show their status and the file itself.

Runs in a temporary directory that it removes at the end, so it leaves nothing behind:
    python examples/quickstart.py
"""

import logging
import os
import tempfile
import time

from dbbasic_queue import cancel_job, enqueue, get_job, process_jobs


def send_email(payload):
    """A stand-in for SMTP: returns what a real sender would record."""
    return {'sent_to': payload['to'], 'sent_at': int(time.time())}


def build_report(payload):
    if payload['month'] == '2026-13':
        raise ValueError(f"no such month: {payload['month']}")
    return {'rows': 42}


class WithoutTraceback(logging.Formatter):
    """One line per record: the failure below is on purpose, its traceback only noise."""

    def formatException(self, exc_info):
        return ''


def main():
    # The library logs to 'dbbasic_queue' and configures nothing; the app chooses.
    handler = logging.StreamHandler()
    handler.setFormatter(WithoutTraceback('log: %(levelname)s %(message)s'))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix='dbbasic-queue-quickstart-') as directory:
        os.chdir(directory)
        try:
            demo()
        finally:
            os.chdir(home)


def demo():
    print(f'working in {os.getcwd()} (removed at the end)')
    print('one report asks for month 13: it fails on purpose, to show a retry\n')

    welcome = enqueue('send_email', {'to': 'user@example.com', 'subject': 'Welcome',
                                     'body': 'Thanks for signing up!'})
    report = enqueue('build_report', {'month': '2026-11'})
    broken = enqueue('build_report', {'month': '2026-13'})
    later = enqueue('send_email', {'to': 'later@example.com'}, run_at=time.time() + 3600)
    unwanted = enqueue('send_email', {'to': 'nobody@example.com'})
    print('cancel_job(unwanted) ->', cancel_job(unwanted))

    summary = process_jobs({'send_email': send_email, 'build_report': build_report},
                           max_attempts=3)
    print('process_jobs ->', summary, '\n')

    for name, job_id in [('welcome', welcome), ('report', report), ('broken', broken),
                         ('later', later), ('unwanted', unwanted)]:
        job = get_job(job_id)
        print(f"{name:9} {job['status']:10} attempts={job['attempts']} "
              f"result={job['result']} error={job['error']}")

    for path in ('data/queue.tsv', 'data/queue.done.tsv'):
        print(f'\n$ cat {path}')
        with open(path) as f:
            print(f.read(), end='')


if __name__ == '__main__':
    main()
