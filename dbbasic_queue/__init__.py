"""dbbasic-queue: a background job queue whose whole state is one TSV file.

See dbbasic_queue.queue for the manual.
"""

from .errors import (EditConflict, InvalidArgumentError, InvalidJobError, JobNotFound,
                     JobTimedOut, QueueError, StorageError)
from .job import Job, JobDetails, JobDict, Status
from .lineformat import COLUMNS
from .queue import (ENV_VAR, Queue, cancel_job, default_queue, enqueue, enqueue_many,
                    get_job, process_jobs)
from .schedule import cron, every
from .version import __version__


__all__ = ['enqueue', 'enqueue_many', 'process_jobs', 'cron', 'every', 'get_job', 'cancel_job', 'Queue', 'Job', 'Status',
           'COLUMNS', 'ENV_VAR', 'QueueError', 'InvalidJobError', 'StorageError', 'JobTimedOut',
           'EditConflict', 'InvalidArgumentError', 'JobNotFound',
           'default_queue', 'JobDict', 'JobDetails', '__version__']


def _read_tsv():
    """Compatibility shim for dbbasic-email 1.0.0's `email:queue` command.

    Returns every job of the default queue (pending, processing and finished) as a list
    of str in the seed's nine-column order, as dbbasic-queue 1.0.0's private helper did.
    """
    return [row[:9] for row in default_queue().read_rows()]
