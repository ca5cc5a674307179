"""dbbasic-email on this queue: send_email() enqueues, its QUEUE_HANDLERS deliver by SMTP.

    pip install dbbasic-email aiosmtpd
    python examples/email_example.py

Starts a local SMTP sink on 127.0.0.1 (a free port) so nothing leaves the machine.
"""

import os
import socket
import tempfile


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def main():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Sink

    received = []

    class Collect(Sink):
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return '250 OK'

    port = free_port()
    controller = Controller(Collect(), hostname='127.0.0.1', port=port)
    controller.start()
    os.environ.update(SMTP_HOST='127.0.0.1', SMTP_PORT=str(port))
    home, directory = os.getcwd(), tempfile.TemporaryDirectory(prefix='dbbasic-queue-email-')
    os.chdir(directory.name)
    try:
        import dbbasic_email  # reads SMTP_HOST/SMTP_PORT when imported
        from dbbasic_email.cli import queue_command
        from dbbasic_queue import get_job, process_jobs

        job_id = dbbasic_email.send_email('user@example.com', 'Welcome', 'Thanks for signing up!')
        print('queued', job_id)
        print('process_jobs ->', process_jobs(dbbasic_email.QUEUE_HANDLERS, max_attempts=3))
        print('status:', get_job(job_id)['status'], '| the SMTP sink received',
              len(received), 'message(s) for', received[0].rcpt_tos if received else None)
        queue_command([])
    finally:
        controller.stop()
        os.chdir(home)
        directory.cleanup()


if __name__ == '__main__':
    main()
