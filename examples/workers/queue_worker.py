"""The cron worker of the README: drain what is due, then exit.

    # crontab -e  (every minute; overlapping runs are safe)
    * * * * * cd /app && python3 workers/queue_worker.py >> /var/log/queue.log 2>&1

The same without a file of your own: `dbbasic-queue work workers.queue_worker:HANDLERS`.
"""

import logging
import time

from dbbasic_queue import process_jobs


def send_email_handler(payload):
    """Send email via SMTP (a stand-in here: see examples/email_example.py for real SMTP)."""
    return {'sent_at': time.time(), 'to': payload['to']}


HANDLERS = {
    'send_email': send_email_handler,
}

if __name__ == '__main__':
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    # Stop claiming new jobs after 50 s, so a slow run never overlaps the next minute's.
    process_jobs(HANDLERS, max_attempts=3, max_seconds=50)
