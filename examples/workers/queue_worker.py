"""The cron worker of the README's Quick start: drain what is due, then exit.

    # crontab -e  (every minute; overlapping runs are safe). `dbbasic-queue crontab
    # workers.queue_worker:HANDLERS` prints this line with your absolute paths:
    * * * * * cd /app && /app/.venv/bin/python workers/queue_worker.py >> /app/data/queue.log 2>&1

The same without running this file: `dbbasic-queue work workers.queue_worker:HANDLERS`.
"""

# workers/queue_worker.py
import logging
import time
from dbbasic_queue import process_jobs

def send_email_handler(payload):
    ...                                        # send it
    return {'sent_at': time.time(), 'to': payload['to']}   # stored as the job's result

HANDLERS = {'send_email': send_email_handler}

if __name__ == '__main__':
    # One line per job to stderr, so the cron log shows what ran (the library itself
    # configures no logging).
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    process_jobs(HANDLERS, max_attempts=3, max_seconds=50)
