"""dbbasic.queue: the push/pop queue that dbbasic-web imports, on dbbasic-queue's file.

    from dbbasic.queue import Queue
    jobs = Queue('_data/jobs.tsv')
    job_id = jobs.push({'task': 'write_flatfile', 'args': {...}})
    payload = jobs.pop()        # the oldest due pushed payload, or None

push appends a pending job of type 'push' (one locked append, as enqueue). pop claims
the oldest due 'push' job and returns its payload with the job already marked completed:
at most once, as a pop is. Jobs of other types in the same file are left to their
handlers. Both are safe across processes; `dbbasic-queue list` shows every pushed job.

dbbasic-tsv ships the `dbbasic` package; this one module of dbbasic-queue's wheel sits
beside it there (no __init__.py of ours).
"""

from dbbasic_queue import Queue as _FileOrRedisQueue, Status
from dbbasic_queue.queue import DEFAULT_PATH

PUSH_TYPE = 'push'


class Queue:
    """A push/pop view of a dbbasic-queue file (or redis:// URL)."""

    def __init__(self, path=DEFAULT_PATH):
        self.queue = _FileOrRedisQueue(path)
        self.path = self.queue.path

    def push(self, payload):
        """Append a pending job; return its id. Raises InvalidJobError on a payload that
        is not JSON (nothing written)."""
        return self.queue.enqueue(PUSH_TYPE, payload)

    def pop(self):
        """The payload of the oldest due pushed job, now marked completed; None if none is
        due. A pop killed before it returns leaves its job to the next pop (the payload
        reached no caller), as process_jobs recovers a killed worker's job."""
        popped = []
        self.queue.process_jobs({PUSH_TYPE: popped.append}, max_jobs=1)
        return popped[0] if popped else None

    def __len__(self):
        """How many pushed jobs are pending."""
        return sum(1 for job in self.queue.jobs()
                   if job.type == PUSH_TYPE and job.status is Status.PENDING)
