"""The worker journal: one small file per worker process that names the job it is
running, so that recovery blames exactly that job when the worker dies (claims.py).
With storage.py, the only module that opens files."""

import logging
import os
from pathlib import Path

from . import liveness
from .lineformat import DECODE_ERRORS, ENCODING
from .storage import (NO_FOLLOW, fd_owner, open_to_read, set_mode, storage_error,
                      storage_errors, unlink_quietly, write_all)

log = logging.getLogger('dbbasic_queue')


class WorkerJournal:
    """.<table>.<worker>.running beside the table: which job this worker process is
    running. Its first byte is R while a handler runs (the job id follows, up to a
    newline), - between jobs.

    Each mark is one pwrite() into bytes allocated when the journal is made (a full disk
    is a StorageError then, not later): a write is in the page cache once the call
    returns, so it survives the worker's own death (kill -9, the OOM killer, os._exit),
    which is what recovery needs to blame exactly the job that was running. It does not
    survive a power cut. R and the id are one write: a kill leaves either, never half an
    id. Not a shared mapping: a store to one past a journal truncated meanwhile (or not
    allocated on a full disk) kills the worker with SIGBUS.
    """

    SUFFIX = '.running'
    SIZE_BYTES = 4096
    RUNNING, IDLE = b'R', b'-'

    def __init__(self, table_path, worker, file_mode):
        """file_mode: the queue's (its lock's), so that other users of it can read it."""
        self.path = self.path_for(table_path, worker)
        self._reported = False
        with storage_errors(self.path, 'create'):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | NO_FOLLOW, file_mode)
            try:
                if os.fstat(fd).st_mode & 0o777 != file_mode:   # the umask took bits off
                    set_mode(fd, file_mode, self.path)
                os.posix_fallocate(fd, 0, self.SIZE_BYTES)
                write_all(fd, self.IDLE + b'\n')
            except BaseException:
                os.close(fd)
                unlink_quietly(self.path)
                raise
        self._fd = fd
        self._owner = fd_owner(fd)   # closes it when this is let go, in C

    @classmethod
    def path_for(cls, table_path, worker):
        table_path = Path(table_path)
        return table_path.with_name(f'.{table_path.name}.{worker}{cls.SUFFIX}')

    def starting(self, job_id):
        try:
            os.pwrite(self._fd, b'R%s\n' % job_id.encode(ENCODING, DECODE_ERRORS)[
                :self.SIZE_BYTES - 2], 0)
        except OSError as exc:
            self._report(exc)

    def finished(self):
        try:
            os.pwrite(self._fd, self.IDLE, 0)
        except OSError as exc:
            self._report(exc)

    def _report(self, exc):
        """A mark not written: the journal was truncated, and the disk is full since."""
        if not self._reported:
            self._reported = True
            log.warning('cannot write the journal %s: %s; should this worker crash, '
                        'recovery may blame the wrong job, or none', self.path, exc)

    def close(self):
        """Close and remove it: this worker holds no job any more."""
        self._owner.close()
        unlink_quietly(self.path)

    @classmethod
    def running_job(cls, table_path, worker):
        """The id the worker was running when it stopped: '' for none, None when it
        kept no journal (a worker of an older version)."""
        path = cls.path_for(table_path, worker)
        fd = open_to_read(path)
        if fd is None:
            return None
        with storage_errors(path, 'read'):
            try:
                first = os.pread(fd, cls.SIZE_BYTES, 0)
            finally:
                os.close(fd)
        if first[:1] != cls.RUNNING:
            return ''
        return first[1:].split(b'\n', 1)[0].decode(ENCODING, DECODE_ERRORS)

    @classmethod
    def workers(cls, table_path):
        """The workers that have a journal beside the table."""
        table_path = Path(table_path)
        prefix = f'.{table_path.name}.'
        try:
            names = os.listdir(table_path.parent)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(table_path.parent, 'list', exc) from exc
        return [name[len(prefix):-len(cls.SUFFIX)] for name in names
                if name.startswith(prefix) and name.endswith(cls.SUFFIX)]

    @classmethod
    def remove(cls, table_path, worker):
        unlink_quietly(cls.path_for(table_path, worker))

    @classmethod
    def idle_dead(cls, table_path, workers_with_claims):
        """The workers of this host with a journal beside the table that are dead and
        hold no claim (workers_with_claims): their journals are left over."""
        return [worker for worker in cls.workers(table_path)
                if worker not in workers_with_claims
                and worker.startswith(liveness.HOST + ':')
                and not liveness.claim_is_alive(worker, 0.0, 0.0, 0)]
