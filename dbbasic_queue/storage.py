"""Storage: one TSV table on disk, its lock, appends, and crash-safe rewrites.

This is the only module that touches files or locks. It knows lines, not jobs.

Why not dbbasic-tsv's insert/update/query for these (see the core issue): insert swallows
its errors and rewrites a JSON index every 100 rows; update rewrites the file without
fsync and then re-reads all of it; query answers from a per-process index that misses
rows other processes appended. So we create tables with dbbasic-tsv (header and .meta
are its own), write the same csv dialect, and flock the same data/<name>.lock file it
uses, so a dbbasic-tsv writer and a queue worker exclude each other. We never call
dbbasic-tsv while holding that lock: it would flock the file again and deadlock.
"""

import fcntl
import itertools
import logging
import os
import threading
import weakref
from contextlib import nullcontext
from pathlib import Path

from .errors import StorageError

log = logging.getLogger('dbbasic_queue')

ENCODING = 'utf-8'
# Bytes that are not UTF-8 (a hand edit) survive a rewrite unchanged.
DECODE_ERRORS = 'surrogateescape'
FILE_MODE = 0o664
LINES_PER_WRITE = 4096
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
_generations = itertools.count()
READ_CHUNK_BYTES = 1 << 20
CONFLICTS_BEFORE_LOCKING = 3    # after that many lost races, rewrite holding the lock


class FileLock:
    """An exclusive flock on one lock file, re-entrant within a thread, safe across fork."""

    def __init__(self, path):
        self.path = Path(path)
        self._forget()
        # flock belongs to the open file description, which a forked child shares: the
        # child opens its own, or it would "hold" the lock together with its parent.
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: this() and this()._forget())

    def _forget(self):
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd = None

    def __enter__(self):
        self._thread_lock.acquire()
        if not self._depth:
            try:
                fcntl.flock(self._fd if self._fd is not None else self._open(), fcntl.LOCK_EX)
            except BaseException:
                self._thread_lock.release()
                raise
        self._depth += 1
        return self

    def __exit__(self, *exc_info):
        self._depth -= 1
        if not self._depth:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def _open(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        weakref.finalize(self, os.close, self._fd)
        return self._fd


class Snapshot:
    """The lines of one version of the file, read without the lock.

    It keeps that version open, so its inode number cannot be reused by another file:
    comparing inode numbers tells exactly whether the file was replaced since.
    """

    def __init__(self, fd=None, header=None, lines=(), offset=0):
        self.generation = next(_generations)
        self.fd = fd
        self.header = header
        self.lines = list(lines)
        self.offset = offset
        self.jobs = []  # parsed lines, filled in by the queue layer
        if fd is None:
            self.ino = self.dev = None
            self._finalizer = None
        else:
            st = os.fstat(fd)
            self.ino, self.dev = st.st_ino, st.st_dev
            self._finalizer = weakref.finalize(self, os.close, fd)

    def is_file(self, st):
        if st is None or self.fd is None:
            return st is None and self.fd is None
        return st.st_ino == self.ino and st.st_dev == self.dev

    def close(self):
        if self._finalizer is not None:
            self._finalizer()   # closes the fd, once
            self.fd = None

    def read_more(self, size):
        """Read what was appended since, up to the last complete line of size bytes.

        Returns the new lines. Reads in chunks, so memory stays near the size of the lines.
        """
        new_lines = []
        while self.offset < size:
            data = os.pread(self.fd, min(READ_CHUNK_BYTES, size - self.offset), self.offset)
            complete = data.rfind(b'\n') + 1
            if not complete:
                if len(data) < size - self.offset and data:
                    data = _pread_all(self.fd, size - self.offset, self.offset)
                    complete = data.rfind(b'\n') + 1
                if not complete:
                    break   # a line still being appended: the next read gets it whole
            lines = data[:complete - 1].decode(ENCODING, DECODE_ERRORS).split('\n')
            self.offset += complete
            if self.header is None:
                self.header = split_header(lines.pop(0))
            new_lines.extend(line for line in lines if line)
        self.lines.extend(new_lines)
        return new_lines


class TableFile:
    """One TSV table: data/<name>.tsv, locked through a shared FileLock."""

    def __init__(self, path, columns, lock):
        self.path = Path(path)
        self._path_text = str(self.path)  # os.open on a str skips Path.__fspath__: hot path
        self.columns = tuple(columns)
        self.lock = lock
        self.header_line = '\t'.join(self.columns)
        self._snapshot = None

    # -- appending -------------------------------------------------------------
    def append(self, data, fsync=False):
        """Append data (whole encoded lines) under the lock; create the table if missing.

        Opens the file for each append, so it always names the current file, even if a
        rewrite (or a hand edit) replaced it since. Keeping a descriptor open would need a
        stat() per append to notice that, and on Linux >= 6.13 a stat() marks the
        timestamps as seen, so the next write must update them: measured, stat + write
        costs more than open + write + close.
        """
        with self.lock:
            try:
                try:
                    fd = os.open(self._path_text, APPEND_FLAGS)
                except FileNotFoundError:
                    self._create()
                    fd = os.open(self._path_text, APPEND_FLAGS)
                try:
                    written = os.write(fd, data)
                    if written < len(data):
                        # Disk full or a size limit mid-line: leave no half line behind.
                        os.ftruncate(fd, os.fstat(fd).st_size - written)
                        raise OSError(f'short write ({written} of {len(data)} bytes), undone')
                    if fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StorageError(f'cannot append to {self.path}: {exc}') from exc

    def _create(self):
        """Create the table with dbbasic-tsv; the caller holds the lock (TSV() takes none)."""
        if not self.path.exists():
            # Imported here: dbbasic-tsv pulls in hashlib (~5 MB), and a worker whose files
            # exist never needs it.
            from dbbasic.tsv import TSV
            self.path.parent.mkdir(parents=True, exist_ok=True)
            TSV(self.path.stem, list(self.columns), data_dir=self.path.parent)
            os.chmod(self.path, FILE_MODE)

    def read_header(self):
        """The header fields, or None if the file does not exist. Reads one line."""
        try:
            with open(self.path, 'rb') as f:
                first = f.readline()
        except FileNotFoundError:
            return None
        return split_header(first.rstrip(b'\n').decode(ENCODING, DECODE_ERRORS))

    def read_lines(self):
        """(header fields or None, the other lines) of the whole file, read now."""
        lines = self.read_bytes().decode(ENCODING, DECODE_ERRORS).split('\n')
        if not lines[0]:
            return None, []
        return split_header(lines[0]), [line for line in lines[1:] if line]

    def read_bytes(self):
        """The whole file as bytes (b'' if it does not exist)."""
        try:
            with open(self.path, 'rb') as f:
                return f.read()
        except FileNotFoundError:
            return b''

    # -- snapshots and rewrites ------------------------------------------------
    def snapshot(self):
        """The current lines, reusing the previous snapshot if only appends happened."""
        st = _stat_or_none(self.path)
        snap = self._snapshot
        if snap is not None and snap.is_file(st):
            if st is not None and st.st_size > snap.offset:
                snap.read_more(st.st_size)
            return snap
        if snap is not None:
            snap.close()
        self._snapshot = snap = self._open_snapshot()
        return snap

    def _open_snapshot(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return Snapshot()
        snap = Snapshot(fd)
        snap.read_more(os.fstat(fd).st_size)
        return snap

    def commit(self, snap, lines, under_lock=None):
        """Replace the file by header + lines, if it is still the version snap read.

        Returns the new Snapshot, or None when another process replaced the file since
        snap was taken (the caller reads again and retries). Lines appended since snap
        are carried over. The new file is written to a temp file in the same directory
        and fsynced, renamed over the old one, and the directory is fsynced: a crash
        leaves either the old file or the new one, never a mix. under_lock() runs just
        before the rename, with the lock held and the version confirmed.
        """
        carried = []

        def write_body(fd):
            _write_lines(fd, [self.header_line])
            _write_lines(fd, lines)

        def write_appended(fd, size):
            carried.extend(snap.read_more(size))
            _write_lines(fd, carried)

        replaced = self._replace(snap, write_body, write_appended, under_lock)
        if replaced is None:
            return None
        fd, size = replaced
        return self._keep(Snapshot(fd, self.columns, list(lines) + carried, size))

    def attempts(self):
        """Contexts to run an optimistic rewrite in, one per try: without the lock at first
        (a commit that finds the file replaced returns None and the caller tries again),
        then holding it after CONFLICTS_BEFORE_LOCKING lost races, so it always finishes."""
        for attempt in itertools.count():
            yield self.lock if attempt >= CONFLICTS_BEFORE_LOCKING else nullcontext()

    def rewrite_line(self, prefix, edit):
        """Replace the first line that starts with prefix by edit(header, line).

        edit returns the new line, or None to leave the file alone. Every other byte is
        copied as it is, never decoded or split: one change to a 100K-line file costs a
        copy and an fsync. Atomic, and carrying appended lines, as commit; retried if
        another process replaced the file meanwhile. Returns whether a line was replaced.
        """
        needle = ('\n' + prefix).encode(ENCODING, DECODE_ERRORS)
        for holding in self.attempts():
            with holding:
                try:
                    snap = Snapshot(os.open(self.path, os.O_RDONLY | os.O_CLOEXEC))
                except FileNotFoundError:
                    return False
                data = _pread_all(snap.fd, os.fstat(snap.fd).st_size, 0)
                snap.offset = data.rfind(b'\n') + 1   # whole lines only
                pos = data.find(needle, 0, snap.offset)
                if pos < 0:
                    return False
                start, end = pos + 1, data.find(b'\n', pos + 1) + 1
                header = split_header(data[:data.find(b'\n')].decode(ENCODING, DECODE_ERRORS))
                line = edit(header, data[start:end - 1].decode(ENCODING, DECODE_ERRORS))
                if line is None:
                    return False
                new_line = (line + '\n').encode(ENCODING, DECODE_ERRORS)

                def write_body(fd, data=memoryview(data)):
                    _write_all(fd, data[:start])
                    _write_all(fd, new_line)
                    _write_all(fd, data[end:snap.offset])

                def write_appended(fd, size):
                    _write_all(fd, _pread_all(snap.fd, size - snap.offset, snap.offset))

                replaced = self._replace(snap, write_body, write_appended)
                snap.close()
                if replaced is not None:
                    self._keep(Snapshot(replaced[0]))   # read again when next needed
                    return True

    def _replace(self, snap, write_body, write_appended, under_lock=None):
        """The atomic rename behind commit and rewrite_line: (new file's fd, its size), or
        None if the file is no longer the one snap holds open."""
        tmp_path = self.path.with_name(f'.{self.path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp')
        fd = None
        try:
            fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            self._copy_owner(fd, snap)
            write_body(fd)
            os.fsync(fd)
            with self.lock:
                st = _stat_or_none(self.path)
                if not snap.is_file(st):
                    return None
                if st is not None and st.st_size > snap.offset:
                    write_appended(fd, st.st_size)
                    os.fsync(fd)
                if under_lock is not None:
                    under_lock()
                os.replace(tmp_path, self.path)
                tmp_path = None
                # Measured before unlocking: an append right after belongs to the next read.
                size = os.fstat(fd).st_size
                _fsync_directory(self.path.parent)
        except OSError as exc:
            log.error('rewrite of %s failed, the previous file is intact: %s', self.path, exc)
            raise StorageError(f'cannot rewrite {self.path}: {exc}') from exc
        finally:
            if tmp_path is not None:
                if fd is not None:
                    os.close(fd)
                _unlink_quietly(tmp_path)
        return fd, size

    def _keep(self, snap):
        """Make snap the cached snapshot of the current file, closing the previous one."""
        if self._snapshot is not None:
            self._snapshot.close()
        self._snapshot = snap
        return snap

    def _copy_owner(self, fd, snap):
        if snap.fd is None:
            return
        st = os.fstat(snap.fd)
        os.fchmod(fd, st.st_mode & 0o7777)
        if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, st.st_uid, st.st_gid)
            except PermissionError:
                log.warning('%s will be owned by uid %d instead of %d: run workers as '
                            'the file\'s owner', self.path, os.geteuid(), st.st_uid)


def split_header(text):
    """The column names of a header line. dbbasic-tsv ends the header it writes with
    CRLF (csv's default line terminator); our rewrites end it with LF."""
    return text.rstrip('\r').split('\t')


def _pread_all(fd, size, offset):
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b''.join(chunks)


def _write_lines(fd, lines):
    # In slices, so a 100K-line file never sits in memory twice more as str and bytes.
    for start in range(0, len(lines), LINES_PER_WRITE):
        chunk = lines[start:start + LINES_PER_WRITE]
        _write_all(fd, ('\n'.join(chunk) + '\n').encode(ENCODING, DECODE_ERRORS))


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _stat_or_none(path):
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
