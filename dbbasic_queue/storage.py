"""Storage: one TSV table on disk, its lock, appends, and crash-safe rewrites.

This module opens every file and takes every lock, but for the worker journals
(journal.py); scan.Index reads (pread, fstat) the versions of the hot file it holds open.
It knows lines, not jobs: how a line is laid out is lineformat.py.

Why not dbbasic-tsv's insert/update/query for these (see the core issue): insert swallows
its errors and rewrites a JSON index every 100 rows; update rewrites the file without
fsync and then re-reads all of it; query answers from a per-process index that misses
rows other processes appended. So we create tables with dbbasic-tsv (header and .meta
are its own), write the same csv dialect, and flock the same data/<name>.lock file it
uses, so a dbbasic-tsv writer and a queue worker exclude each other. We never call
dbbasic-tsv while holding that lock: it would flock the file again and deadlock.
"""

import errno
import fcntl
import io
import itertools
import json
import logging
import mmap
import os
import shutil
import stat
import tempfile
import threading
import time
import weakref
import zlib
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple

from . import liveness
from .errors import StorageError
from .lineformat import DECODE_ERRORS, ENCODING, header_line, split_header

log = logging.getLogger('dbbasic_queue')

# ENCODING, DECODE_ERRORS: bytes that are not UTF-8 (a hand edit) survive every read,
# rewrite and append unchanged.
DEFAULT_FILE_MODE = 0o666       # before the umask, as open() creates files
GROUP_READ_WRITE = 0o060        # the bits that share a queue's files with a group
BACKGROUND_CLOSE_BYTES = 8 << 20
LINES_PER_WRITE = 4096
# Never through a symlink: whoever can write to data/ must not steer a root worker's writes.
NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
APPEND_FLAGS = os.O_RDWR | os.O_APPEND | NO_FOLLOW   # RDWR: one byte is read to check the end
READ_FLAGS = os.O_RDONLY | NO_FOLLOW
TAIL_BYTES = 64                 # the bytes before a snapshot's end, checked before reusing it
_generations = itertools.count()
READ_CHUNK_BYTES = 1 << 20
CONFLICTS_BEFORE_LOCKING = 3    # after that many lost races, rewrite holding the lock
MAP_MIN_BYTES = 4 << 20         # files this big are searched mapped, not copied
SUMMARY_MAX_BYTES = 1 << 20     # a table summary larger than this is not one
SUMMARY_TRUST_SECONDS = 300     # counts older than this are not trusted: they are made anew
SUMMARY_CLOCK_SLACK_SECONDS = 1  # a summary this far in the future is not fresh but forged


@contextmanager
def storage_errors(path, doing):
    """Turn an OSError about path into one StorageError that names it."""
    try:
        yield
    except OSError as exc:
        raise storage_error(path, doing, exc) from exc


def open_to_read(path):
    """A read-only descriptor of path (never through a symbolic link), or None if it is
    missing; StorageError when it cannot be opened (a directory opens, and fails at the
    first read)."""
    with storage_errors(path, 'read'):
        try:
            return os.open(path, READ_FLAGS)
        except FileNotFoundError:
            return None


def storage_error(path, doing, exc):
    if isinstance(exc, StorageError):
        return exc
    if exc.errno == errno.ELOOP:
        reason = 'it is a symbolic link, which dbbasic-queue never follows'
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = f'{exc.strerror} ({who_may(Path(path))})'
    else:
        reason = exc.strerror or str(exc)
    return StorageError(f'cannot {doing} {path}: {reason}')


def sharing_problems(lock_path, paths):
    """The files of a queue among paths whose mode or group keeps out a user that the
    queue's lock lets in, and its directory if such a user cannot make files in it, each
    with the command that fixes it."""
    lock = _stat_or_none(lock_path)
    if lock is None:
        return []
    mode, problems = lock.st_mode & 0o666, []
    shared = mode & GROUP_READ_WRITE == GROUP_READ_WRITE   # its group works it too
    for path in paths:
        st = _stat_or_none(path)
        if st is None:
            continue
        if mode & ~st.st_mode & 0o666:
            problems.append(f'{path.name}: mode {st.st_mode & 0o777:o} keeps out users the '
                            f'queue lets in ({mode:o}, its lock\'s): chmod {mode:o} {path}')
        if shared and st.st_gid != lock.st_gid:
            problems.append(f'{path.name}: group {st.st_gid}, not the queue\'s '
                            f'{lock.st_gid}: chgrp {lock.st_gid} {path}')
    directory = _stat_or_none(Path(lock_path).parent)
    if shared and directory is not None and (
            directory.st_mode & 0o070 != 0o070 or directory.st_gid != lock.st_gid):
        problems.append(f'{Path(lock_path).parent}: its group cannot make files in it '
                        f'(mode {directory.st_mode & 0o7777:o}, group {directory.st_gid}): '
                        f'chgrp {lock.st_gid} {Path(lock_path).parent} && chmod g+rwxs '
                        f'{Path(lock_path).parent}')
    return problems


def who_may(path):
    """Who may use path (or the directory it would be made in), and the fix, for an
    error message: 'mode 644, owner uid 1000, group 1000; you are uid 33 ...'."""
    target = path if path.exists() else path.parent
    try:
        st = os.stat(target)
    except OSError:
        return 'its directory cannot be read either'
    return (f'{target} has mode {st.st_mode & 0o7777:o}, owner uid {st.st_uid}, group '
            f'{st.st_gid}; you are uid {os.geteuid()} in groups '
            f'{",".join(map(str, sorted({os.getegid(), *os.getgroups()})))}: share the queue '
            f'with a group (chgrp GROUP and chmod g+rw its files, g+rwxs its directory; '
            f'DBBASIC_QUEUE_MODE=660), or run as its owner')


class FileLock:
    """An exclusive flock on one lock file, re-entrant within a thread, safe across fork.

    file_mode None creates the lock 0666 less the umask, or, given `like` (the queue's
    main lock), with like's mode; a number sets that exact mode. Every other file of a
    queue gets the main lock's mode, so one user's run cannot lock another user out.
    """

    def __init__(self, path, file_mode=None, like=None):
        self.path = Path(path)
        self.file_mode = file_mode
        self.like = like
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
        mode = self.file_mode
        if mode is None and self.like is not None:
            mode = self.like.mode()
        with storage_errors(self.path, 'open the lock'):
            make_directory(self.path.parent, mode)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | NO_FOLLOW,
                         DEFAULT_FILE_MODE if mode is None else mode)
            self._owner = fd_owner(fd)
            if mode is not None and os.fstat(fd).st_mode & 0o777 != mode:
                set_mode(fd, mode, self.path)
        self._fd = fd
        return fd

    def mode(self):
        """The lock file's permission bits: the tables of its queue are created with them."""
        if self._fd is None:
            self._open()
        return os.fstat(self._fd).st_mode & 0o777


def fd_owner(fd):
    """An object that closes fd when it is closed or garbage-collected, in C.

    Not weakref.finalize: a finalizer runs Python code during garbage collection, and a
    SIGINT whose handler runs there raises its KeyboardInterrupt where Python can only
    print and drop it: a worker would ignore Ctrl-C. A FileIO closes its descriptor in C.
    """
    return io.FileIO(fd, 'r', closefd=True)


class Version:
    """One version of a file as a reader read it, and the one proof every rewrite makes
    before its rename: that the file is still this version.

    The version is held open as fd (None: there was no file), so its inode number cannot
    be reused by another file: comparing inode numbers tells exactly whether the file was
    replaced since. offset is the end of the bytes read, tail their last TAIL_BYTES, and
    seen a version_of() of the file known to start with exactly those bytes (None: not
    known). Subclasses say how those bytes are checked again (bytes_match): Snapshot by
    the CRC of all of them, scan.Index by the CRC of each segment.
    """
    fd = ino = dev = seen = None
    offset, tail = 0, b''

    def _held(self, fd):
        """Hold fd (None: no file) as this version; returns its stat (None: no file)."""
        self.fd = fd
        self.ino = self.dev = st = None
        if fd is not None:
            st = os.fstat(fd)
            self.ino, self.dev = st.st_ino, st.st_dev
        return st

    def bytes_match(self):
        """True if the version's bytes [0, offset) are still the ones read."""
        raise NotImplementedError

    def is_file(self, st):
        """True if st (a stat, None: no file) is of this version's inode."""
        if st is None or self.fd is None:
            return st is None and self.fd is None
        return st.st_ino == self.ino and st.st_dev == self.dev

    def only_grew(self, st):
        """True if the file (st: its stat now) seems to still start with the bytes read.

        Cheap checks decide most cases: an unchanged size and timestamps mean nothing was
        written; a smaller size, or the same size with other timestamps, or other bytes
        before the old end mean an in-place edit. A larger file whose tail matches may
        still have been edited in place above it: only bytes_match proves it, and that is
        what proven_unchanged checks before a commit.
        """
        if self.fd is None:
            return st is None
        if not self.is_file(st) or st.st_size < self.offset:
            return False
        if self.seen == version_of(st):
            return True
        if st.st_size == self.offset and self.seen is not None:
            return False
        return os.pread(self.fd, len(self.tail), self.offset - len(self.tail)) == self.tail

    def proven_unchanged(self, st):
        """True if the file (st: its stat, under the lock) is this version and its bytes
        up to offset are the ones read (seen, or bytes_match)."""
        if self.fd is None:
            return st is None
        if not self.is_file(st) or st.st_size < self.offset:
            return False
        if self.seen == version_of(st):
            return True
        if not self.bytes_match():
            return False
        self.seen = version_of(st) if st.st_size == self.offset else None
        return True

    def prove(self):
        """Check the bytes now, without the lock, so that a commit holding it needs no
        reading unless the file changed again meanwhile (see proven_unchanged)."""
        if self.fd is None:
            return
        before = os.fstat(self.fd)
        if (self.seen != version_of(before) and before.st_size >= self.offset
                and self.bytes_match() and version_of(os.fstat(self.fd)) == version_of(before)):
            self.seen = version_of(before)


class Snapshot(Version):
    """The lines of one version of the file, read without the lock. It keeps a CRC of
    every byte it read (or the bytes), so a commit can prove that the file was not edited
    in place (same inode, other bytes) since; see TableFile.snapshot.
    """

    def __init__(self, fd=None, header=None, lines=(), offset=0, crc=0, tail=b'', content=None):
        self.generation = next(_generations)
        st = self._held(fd)
        self.header = header
        self.lines = list(lines)
        self.offset = offset
        self.crc = crc              # zlib.crc32 of the file's bytes [0, offset) (None: not
                                    # computed yet; header and lines are exactly those bytes) ...
        self.content = content      # ... or those bytes themselves, when kept anyway
        self.tail = tail            # the last TAIL_BYTES of them
        self._owner = None
        if fd is not None:
            if st.st_size == offset:
                self.seen = version_of(st)
            self._owner = fd_owner(fd)

    def bytes_match(self):
        prefix = pread_all(self.fd, self.offset, 0)
        if self.content is not None:
            return prefix == self.content
        return zlib.crc32(prefix) == self._crc()

    def _crc(self):
        """The CRC of the bytes read; for a version this process wrote, computed only when
        first needed (a drain with no one else writing never needs it)."""
        if self.crc is None:
            text = '\n'.join([header_line(self.header)] + self.lines) + '\n'
            self.crc = zlib.crc32(text.encode(ENCODING, DECODE_ERRORS))
        return self.crc

    def close(self):
        if self._owner is not None:
            self._owner.close()   # closes the fd, once
            self._owner = None
            self.fd = None

    def read_more(self, st, whole=False):
        """Read what was appended since, up to the last complete line of st.st_size bytes.

        Returns the new lines. Reads in chunks, so memory stays near the size of the lines.
        whole=True (under the lock, where no append is in flight) also takes a last line
        that has no newline, as a hand edit may leave it, so that it is never dropped.
        """
        size, new_lines = st.st_size, []
        while self.offset < size:
            data = os.pread(self.fd, min(READ_CHUNK_BYTES, size - self.offset), self.offset)
            complete = data.rfind(b'\n') + 1
            if not complete and len(data) < size - self.offset and data:
                data = pread_all(self.fd, size - self.offset, self.offset)
                complete = data.rfind(b'\n') + 1
            unterminated = not complete and whole and bool(data)
            if unterminated:
                data += b'\n'
                complete = len(data)
            if not complete:
                break   # a line still being appended: the next read gets it whole
            self._take(data[:complete], unterminated)
            new_lines.extend(self._header_or(decode_lines(data[:complete - 1])))
        self.lines.extend(new_lines)
        self.seen = version_of(st) if size == self.offset else None
        return new_lines

    def _take(self, data, added_newline=False):
        if added_newline:
            data = data[:-1]
        self.crc = zlib.crc32(data, self._crc())   # before offset and lines grow
        self.offset += len(data)
        self.content = None
        self.tail = (self.tail + data)[-TAIL_BYTES:]

    def _header_or(self, lines):
        if self.header is None and lines:
            self.header = split_header(lines.pop(0))
        return [line for line in lines if line]


class TableFile:
    """One TSV table: data/<name>.tsv, locked through a shared FileLock; its rewrites
    take turns on a second one, which appends never wait for."""

    def __init__(self, path, columns, lock, rewrite_lock):
        self.path = Path(path)
        self._path_text = str(self.path)  # os.open on a str skips Path.__fspath__: hot path
        self.columns = tuple(columns)
        self.lock = lock
        self.rewrite_lock = rewrite_lock
        self.header_line = header_line(self.columns)
        self.header_bytes = (self.header_line + '\n').encode(ENCODING)
        self._snapshot = None
        self._appended_end = None   # the file's size after this process's last append

    # -- appending -------------------------------------------------------------
    def append(self, data, fsync=False):
        """Append data (whole encoded lines) under the lock; create the table if missing.

        Opens the file for each append, so it always names the current file, even if a
        rewrite (or a hand edit) replaced it since. Keeping a descriptor open would need a
        stat() per append to notice that, and on Linux >= 6.13 a stat() marks the
        timestamps as seen, so the next write must update them: measured, stat + write
        costs more than open + write + close. A last line without its newline (a hand
        edit) gets one first, so a job is never glued onto it, and an emptied file gets
        its header: that costs a one-byte read only when the file's size is not the one
        this process's last append left.
        """
        with self.lock:
            try:
                try:
                    fd = os.open(self._path_text, APPEND_FLAGS)
                except FileNotFoundError:
                    self._create()
                    fd = os.open(self._path_text, APPEND_FLAGS)
                try:
                    size = os.lseek(fd, 0, os.SEEK_END)
                    if size != self._appended_end:
                        data = self._joinable(fd, size, data)
                    written = os.write(fd, data)
                    if written < len(data):
                        # Disk full or a size limit mid-line: leave no half line behind.
                        os.ftruncate(fd, size)
                        raise OSError(errno.ENOSPC, f'short write ({written} of {len(data)} '
                                                    f'bytes), undone')
                    if fsync:
                        os.fsync(fd)
                    self._appended_end = size + written
                finally:
                    os.close(fd)
            except OSError as exc:   # no context manager here: this is enqueue's hot path
                raise storage_error(self.path, 'append to', exc) from exc

    def _joinable(self, fd, size, data):
        """data as it may be appended to a file of size bytes: after the header where the
        file is empty (a user's `: > data/queue.tsv`), after a newline where its last
        line lacks one (a hand edit), so a job is never glued onto another line."""
        if not size:
            return self.header_bytes + data
        if os.pread(fd, 1, size - 1) != b'\n':
            return b'\n' + data
        return data

    def append_lines(self, lines, fsync=False):
        """Append these lines (str, without newlines); bytes that are not UTF-8 (read from
        a hand-edited line) are written back as they were."""
        self.append(''.join(line + '\n' for line in lines).encode(ENCODING, DECODE_ERRORS),
                    fsync=fsync)

    def _create(self):
        """Create the table with dbbasic-tsv; the caller holds the lock (TSV() takes none).

        dbbasic-tsv opens its paths following symlinks, so it writes into a private
        directory, and its files are linked into place: a link never follows a symlink
        and fails if the name exists. The table gets the lock's mode.
        """
        # Imported here: dbbasic-tsv pulls in hashlib (~5 MB), and a worker whose files
        # exist never needs it.
        from dbbasic.tsv import TSV
        make_directory(self.path.parent, self.lock.file_mode)
        private = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=self._temp_prefix(),
                                        suffix='.tmp'))
        try:
            TSV(self.path.stem, list(self.columns), data_dir=private)
            # Its header ends in CRLF (csv's line terminator), its lines would not: ours
            # end in LF throughout, so `cut -f16` prints the column, not 'priority\r'.
            (private / self.path.name).write_bytes(self.header_bytes)
            for made in sorted(private.iterdir(), key=lambda p: p.suffix != '.tsv'):
                fd = os.open(made, READ_FLAGS)
                try:
                    set_mode(fd, self.lock.mode(), made)
                finally:
                    os.close(fd)
                try:
                    os.link(made, self.path.with_name(made.name), follow_symlinks=False)
                except FileExistsError:
                    pass   # made meanwhile (dbbasic-tsv's own writer); a symlink fails at open
            # Else a power cut could lose the new names, and a durable job appended.
            _fsync_directory(self.path.parent)
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def read_header(self):
        """The header fields, or None if the file does not exist. Reads one line."""
        data = self.read_bytes(limit=READ_CHUNK_BYTES)
        if not data:
            return None
        return split_header(data.split(b'\n', 1)[0].decode(ENCODING, DECODE_ERRORS))

    def read_lines(self):
        """(header fields or None, the other lines) of the whole file, read now."""
        lines = decode_lines(self.read_bytes())
        if not lines or not lines[0]:
            return None, []
        return split_header(lines[0]), [line for line in lines[1:] if line]

    def iter_chunks(self):
        """The file's bytes, a chunk of whole lines at a time (the last one may lack its
        newline): memory stays near one chunk. Nothing if it does not exist."""
        with storage_errors(self.path, 'read'):
            try:
                fd = os.open(self._path_text, READ_FLAGS)
            except FileNotFoundError:
                return
            try:
                offset, rest = 0, b''
                while True:
                    data = os.pread(fd, READ_CHUNK_BYTES, offset)
                    if not data:
                        break
                    offset += len(data)
                    data = rest + data
                    whole = data.rfind(b'\n') + 1
                    rest = data[whole:]
                    if whole:
                        yield data[:whole]
                if rest:
                    yield rest + b'\n'
            finally:
                os.close(fd)

    def iter_lines(self):
        """The lines of the file, header first, a chunk at a time."""
        for chunk in self.iter_chunks():
            yield from (line for line in decode_lines(chunk[:-1]) if line)

    def read_bytes(self, limit=None):
        """The whole file (or its first limit bytes) as bytes; b'' if it does not exist."""
        fd = open_to_read(self._path_text)
        if fd is None:
            return b''
        with storage_errors(self.path, 'read'):
            try:
                return pread_all(fd, limit if limit is not None else os.fstat(fd).st_size, 0)
            finally:
                os.close(fd)

    @contextmanager
    def mapped(self):
        """(the whole file mapped read-only, its inode number), or (b'', None) if it is
        missing: a search of a big file without copying it into this process's memory.
        It is the version open now; appends made meanwhile may be seen. A file under
        MAP_MIN_BYTES is read instead: its copy costs less than the mapping's page faults."""
        with storage_errors(self.path, 'read'):
            try:
                fd = os.open(self._path_text, READ_FLAGS)
            except FileNotFoundError:
                yield b'', None
                return
            try:
                st = os.fstat(fd)
                mapped = st.st_size >= MAP_MIN_BYTES
                data = (mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ) if mapped
                        else pread_all(fd, st.st_size, 0))
            finally:
                os.close(fd)
        try:
            yield data, st.st_ino
        finally:
            if mapped:
                data.close()

    def read_whole(self):
        """(a Snapshot of the file as it is now, holding the bytes of its whole lines,
        those bytes), or None if it is missing: a version a range rewrite can be given
        (the caller closes it)."""
        fd = self.open_version()
        if fd is None:
            return None
        with storage_errors(self.path, 'read'):
            try:
                data = pread_all(fd, os.fstat(fd).st_size, 0)
            except BaseException:
                os.close(fd)
                raise
        whole = data.rfind(b'\n') + 1
        data = data[:whole]
        return Snapshot(fd, offset=whole, content=data, tail=data[-TAIL_BYTES:]), data

    def open_version(self):
        """A read-only descriptor of the file as it is now, or None if it is missing: a
        version to hold open, so a directory in its place is a StorageError now, not at
        a later read."""
        fd = open_to_read(self.path)
        if fd is not None and stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise storage_error(self.path, 'read',
                                IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
        return fd

    def stat(self):
        """The file's stat, or None if it is missing."""
        try:   # no context manager: this is a worker's idle poll
            return _stat_or_none(self.path)
        except OSError as exc:
            raise storage_error(self.path, 'stat', exc) from exc

    def kept_snapshot(self, st):
        """The snapshot kept, brought up to date, if it is of the file whose stat is st
        (which may have grown since); else None."""
        snap = self._snapshot
        if snap is None or not snap.only_grew(st):
            return None
        if st is not None and st.st_size > snap.offset:
            try:   # no context manager: this is a worker's idle poll
                snap.read_more(st)
            except OSError as exc:
                raise storage_error(self.path, 'read', exc) from exc
        return snap

    # -- snapshots and rewrites ------------------------------------------------
    def snapshot(self, st=False):
        """The current lines, reusing the previous snapshot if the file only grew; st:
        the file's stat if the caller just took it.

        "Only grew" is not "the same inode": an editor or `cat > file` rewrites a file in
        place. See Snapshot.only_grew; a commit proves it with a CRC before it writes.
        """
        if st is False:
            st = self.stat()
        snap = self.kept_snapshot(st)
        if snap is not None:
            return snap
        try:
            self.forget()
            self._snapshot = snap = self._open_snapshot()
            return snap
        except OSError as exc:
            raise storage_error(self.path, 'read', exc) from exc

    def forget(self):
        """Drop the snapshot kept (its lines), closing its version."""
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None

    def _open_snapshot(self):
        try:
            fd = os.open(self._path_text, READ_FLAGS)
        except FileNotFoundError:
            return Snapshot()
        snap = Snapshot(fd)
        snap.read_more(os.fstat(fd))
        return snap

    def commit(self, snap, lines, under_lock=None):
        """Replace the file by header + lines, if it is still the version snap read.

        Returns the new Snapshot, or None when the file changed since snap was taken
        other than by appends: replaced by another process, or edited in place (the
        caller reads again and retries). Lines appended since snap are carried over. The
        new file is written to a temp file in the same directory and fsynced, renamed
        over the old one, and the directory is fsynced: a crash leaves either the old
        file or the new one, never a mix. under_lock() runs just before the rename, with
        the lock held and the version confirmed.
        """
        carried = []

        def write_body(out):
            out.write_lines([self.header_line])
            out.write_lines(lines)

        def write_appended(out, st):
            carried.extend(snap.read_more(st, whole=True))
            out.write_lines(carried)

        replaced = self._replace(snap, write_body, write_appended, under_lock)
        if replaced is None:
            return None
        fd, out, _ = replaced
        return self._keep(Snapshot(fd, self.columns, list(lines) + carried, out.size,
                                   None, out.tail))

    def rewrite_ranges(self, version, changes, under_lock=None):
        """Replace byte ranges of one version of the file, copying every other byte as it
        is, in the kernel: a claim in a million-job file costs a copy, not a parse.

        version: a Version (a scan.Index: the end of the whole lines it read is its
        offset), proven unchanged under the lock before the rename. changes: (start, end,
        new bytes)
        within [0, offset), in order, iterated once as it is written. Atomic, and
        carrying lines appended meanwhile, as commit. Returns (the new file's fd, the
        bytes carried after offset, the new file's version_of() as renamed, its last
        TAIL_BYTES), or None when the file is no longer that version.
        """
        carried = []

        def write_body(out):
            pos = 0
            for start, end, data in changes:
                out.copy_from(version.fd, pos, start)
                out.write(data)
                pos = end
            out.copy_from(version.fd, pos, version.offset)

        def write_appended(out, st):
            data = pread_all(version.fd, st.st_size - version.offset, version.offset)
            if data and not data.endswith(b'\n'):
                data += b'\n'   # a hand edit's last line: never glue a job onto it
            carried.append(data)
            out.write(data)

        replaced = self._replace(version, write_body, write_appended, under_lock)
        if replaced is None:
            return None
        fd, out, renamed = replaced
        return fd, b''.join(carried), renamed, out.tail

    def rewrite(self, plan):
        """Rewrite the file as plan(snapshot) says: a Change (the new lines, and a hook to
        run under the lock just before the rename), or None to leave it alone.

        Returns (change, the new Snapshot), or None. Lines appended meanwhile are carried
        over; if another process replaced or edited the file meanwhile, plan runs again
        on a fresh snapshot (see optimistically).
        """
        def try_once():
            snap = self.snapshot()
            change = plan(snap)
            if change is None:
                return None
            new = self.commit(snap, change.lines, change.under_lock)
            return RETRY if new is None else (change, new)

        return self.optimistically(try_once)

    def optimistically(self, try_once):
        """The one loop of every rewrite: try_once() holding the rewrite lock but not the
        lock (reading and planning while others append), again while it returns RETRY
        (the file was edited by something else meanwhile), holding the lock too after
        CONFLICTS_BEFORE_LOCKING lost races so it always finishes.

        Rewriters take turns on the rewrite lock: each plans on the version the last one
        wrote, so none plans and copies the whole file only to find it replaced (with
        several workers, that was most rewrites).
        """
        with self.rewrite_lock:
            for attempt in itertools.count():
                with self.lock if attempt >= CONFLICTS_BEFORE_LOCKING else nullcontext():
                    outcome = try_once()
                    if outcome is not RETRY:
                        return outcome

    def _replace(self, snap, write_body, write_appended, under_lock=None):
        """The atomic rename behind every rewrite: (new file's fd, the _Output that wrote
        it, its version_of() as renamed, under the lock), or None if the file is no
        longer, byte for byte up to what snap (a Version) read, the one snap holds open."""
        remove_abandoned_temp_files(self.lock.path)
        tmp_path = self.path.with_name(f'{self._temp_prefix()}{os.urandom(4).hex()}.tmp')
        fd = None
        try:
            fd = os.open(tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         DEFAULT_FILE_MODE)
            self._copy_owner(fd, snap)
            out = _Output(fd)
            try:
                write_body(out)
            except EditedInPlace:
                return None   # edited in place (an editor saving): read it anew
            os.fsync(fd)
            snap.prove()   # the costly check, before the lock: enqueues wait less
            with self.lock:
                st = _stat_or_none(self.path)
                if not snap.proven_unchanged(st):
                    if snap is self._snapshot:
                        self.forget()   # edited in place: the next snapshot reads anew
                    return None
                if st is not None and st.st_size > snap.offset:
                    write_appended(out, st)
                    os.fsync(fd)
                if under_lock is not None:
                    under_lock()
                os.replace(tmp_path, self.path)
                tmp_path = None
                _fsync_directory(self.path.parent)
                renamed = version_of(os.fstat(fd))
        except OSError as exc:
            log.error('rewrite of %s failed, the previous file is intact: %s', self.path, exc)
            raise StorageError(f'cannot rewrite {self.path}: {exc}') from exc
        finally:
            if tmp_path is not None:
                if fd is not None:
                    os.close(fd)
                unlink_quietly(tmp_path)
        return fd, out, renamed

    def _temp_prefix(self):
        return f'.{self.path.name}.{liveness.HOST}.{os.getpid()}.'

    def _keep(self, snap):
        """Make snap the cached snapshot of the current file, closing the previous one."""
        self.forget()
        self._snapshot = snap
        return snap

    def _copy_owner(self, fd, snap):
        if snap.fd is None:
            set_mode(fd, self.lock.mode(), self.path)
            return
        st = os.fstat(snap.fd)
        os.fchmod(fd, st.st_mode & 0o7777)
        if (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()):
            return
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
            return
        except PermissionError:
            pass   # only root gives a file away; a member of its group may keep the group
        try:
            os.fchown(fd, -1, st.st_gid)
        except PermissionError:
            pass
        kept_group = os.fstat(fd).st_gid == st.st_gid
        if not (kept_group and st.st_mode & GROUP_READ_WRITE == GROUP_READ_WRITE):
            log.warning('%s is now owned by uid %d instead of %d, and its group cannot '
                        'write it: its owner may lose access. Share the queue with a group '
                        '(DBBASIC_QUEUE_MODE=660, see `check`), or run every user of it '
                        'as one user', self.path, os.geteuid(), st.st_uid)


# -- the whole lines appended after a known point of a file ------------------------------
def bytes_after(path, ino, offset, tail, value=None, at_most=None):
    """(value, the bytes of the whole lines after byte offset, the offset they end
    at, the last TAIL_BYTES before it) if the file at path now is inode ino and its bytes
    before offset end with tail (and hold at most at_most bytes after it); else
    None."""
    opened = _opened_after(path, ino, offset, tail, at_most)
    if opened is None:
        return None
    fd, size = opened
    try:
        with storage_errors(path, 'read'):
            data = pread_all(fd, size - offset, offset)
    finally:
        os.close(fd)
    whole = data.rfind(b'\n') + 1
    if whole < len(data):   # (a copy: only for a last line still being written)
        data = data[:whole]
    tail = data[-TAIL_BYTES:] if whole >= TAIL_BYTES else (tail + data)[-TAIL_BYTES:]
    return value, data, offset + whole, tail


def blocks_after(path, ino, offset, tail, block_bytes):
    """bytes_after's bytes as an iterator of line_blocks (data, start, end), each
    about block_bytes (a longer line whole), data[start - 1] the newline before its
    lines but at the file's start: memory stays near block_bytes whatever the file's
    size. None when bytes_after would be."""
    opened = _opened_after(path, ino, offset, tail)
    if opened is None:
        return None
    return _blocks(path, *opened, offset, block_bytes)


def _blocks(path, fd, size, offset, block_bytes):
    try:
        with storage_errors(path, 'read'):
            yield from line_blocks(fd, offset, size, block_bytes, before=1)
    finally:
        os.close(fd)


def _opened_after(path, ino, offset, tail, at_most=None):
    """(a descriptor, the size) of the file if it is now inode ino and its bytes
    before offset end with tail (and it holds at most at_most bytes after it); else
    None."""
    fd = open_to_read(path)
    if fd is None:
        return None
    with storage_errors(path, 'read'):
        try:
            st = os.fstat(fd)
            if (st.st_ino == ino and st.st_size >= offset
                    and (at_most is None or st.st_size - offset <= at_most)
                    and os.pread(fd, len(tail), offset - len(tail)) == tail):
                return fd, st.st_size
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None


class TableSummary:
    """.<table>.summary beside the table: what a reader found in one version of it, up to
    a byte offset, so that the next reader (a cron run's first poll) reads only the lines
    appended since. A cache, which may cost speed, never correctness: written whole by
    rename, never fsynced, ignored unless it names the file open now (inode) and that
    file still holds, at the offset, the last bytes it names (so an in-place edit, which
    rewrites them, makes it stale), and unless its counts were made from the file's bytes
    less than SUMMARY_TRUST_SECONDS ago (counted_at, which a reader that saves counts it
    loaded keeps as it was: a wrong count is never carried past that window). The
    reader checks the rest (scan.segments_problem). An in-place edit that keeps the size
    and the last bytes (`cat > file` changing an early line), or counts forged to match,
    go unseen until then.
    """

    def __init__(self, table):
        self.table = table
        self.path = table.path.with_name(f'.{table.path.name}.summary')

    def read(self):
        """(the summary, or None when it is missing or too old to trust; TableFile.
        bytes_after for the version it covers, with the summary as the value, or None
        when that is stale or not worth it)."""
        try:
            fd = os.open(self.path, READ_FLAGS)
            try:
                if not self.trusted(os.fstat(fd).st_mtime):
                    return None, None
                summary = json.loads(os.read(fd, SUMMARY_MAX_BYTES))
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            log.info('ignoring %s: %s', self.path, exc)
            return None, None
        counted_at = summary.get('counted_at') if isinstance(summary, dict) else None
        if isinstance(counted_at, bool) or not isinstance(counted_at, (int, float)) or not (
                self.trusted(counted_at)):
            log.debug('ignoring %s: its counts were not made in the last %g s',
                      self.path, SUMMARY_TRUST_SECONDS)
            return summary, None
        try:
            # Only if it covers at least half the file: else one regex pass is as quick.
            return summary, bytes_after(self.table.path, summary['ino'], summary['offset'],
                                        bytes.fromhex(summary['tail']), summary,
                                        at_most=summary['offset'])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info('ignoring %s: %s', self.path, exc)
            return summary, None

    @staticmethod
    def trusted(counted_at):
        """Whether counts made at counted_at (Unix seconds) may still be trusted."""
        age = time.time() - counted_at
        return -SUMMARY_CLOCK_SLACK_SECONDS <= age <= SUMMARY_TRUST_SECONDS

    def write(self, summary, ino, offset, tail, counted_at):
        """summary: a dict of JSON values; ino, offset, tail: the version it covers;
        counted_at: when the oldest of its counts was made from the file's bytes."""
        data = json.dumps({**summary, 'ino': ino, 'offset': offset, 'tail': tail.hex(),
                           'counted_at': counted_at})
        temp = self.path.with_name(f'{self.table._temp_prefix()}{os.urandom(4).hex()}.tmp')
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         DEFAULT_FILE_MODE)
            try:
                set_mode(fd, self.table.lock.mode(), self.path)
                write_all(fd, data.encode())
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except OSError as exc:
            log.warning('could not write %s (only a cache): %s', self.path, exc)
            unlink_quietly(temp)


class Change(NamedTuple):
    """What a rewrite writes: every line after the header, a hook run under the lock just
    before the rename (or None), and whatever its planner wants back."""
    lines: list
    under_lock: object = None
    result: object = None


RETRY = object()   # try_once's answer when the file changed under it


class _Output:
    """Writes a new version of a file, keeping what a Snapshot of it needs: its size and
    the tail of its bytes."""

    def __init__(self, fd):
        self.fd = fd
        self.size = 0
        self.tail = b''

    def write(self, data):
        write_all(self.fd, data)
        self.size += len(data)
        self.tail = (self.tail + bytes(data[-TAIL_BYTES:]))[-TAIL_BYTES:]

    def copy_from(self, fd, start, end):
        """Copy bytes [start, end) of fd: in the kernel (copy_file_range) where it can."""
        if start >= end:
            return
        first = start
        while start < end:
            copied = _copy_file_range(fd, self.fd, end - start, start)
            if not copied:
                data = os.pread(fd, min(READ_CHUNK_BYTES, end - start), start)
                if not data:
                    raise EditedInPlace
                write_all(self.fd, data)
                copied = len(data)
            start += copied
        self.size += end - first
        last = min(TAIL_BYTES, end - first)
        self.tail = (self.tail + os.pread(fd, last, end - last))[-TAIL_BYTES:]

    def write_lines(self, lines):
        # In slices, so a 100K-line file never sits in memory twice more as str and bytes.
        for start in range(0, len(lines), LINES_PER_WRITE):
            chunk = lines[start:start + LINES_PER_WRITE]
            self.write(('\n'.join(chunk) + '\n').encode(ENCODING, DECODE_ERRORS))


class EditedInPlace(Exception):
    """The version being copied is no longer the bytes read from it: shorter, or a
    segment's bytes changed (an editor saving in place). The rewrite starts over."""


_COPY_IN_KERNEL = [hasattr(os, 'copy_file_range')]


def _copy_file_range(src, dst, count, offset):
    """Bytes copied by the kernel from src at offset to dst's position, or 0 where it
    cannot (then the caller copies through memory, as it will from now on)."""
    if not _COPY_IN_KERNEL[0]:
        return 0
    try:
        return os.copy_file_range(src, dst, count, offset)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                             errno.EPERM, errno.EBADF):
            raise
        log.info('copy_file_range: %s; copying through memory', exc)
        _COPY_IN_KERNEL[0] = False
        return 0


class SmallFile:
    """A small plain-text file beside the queue (data/queue.paused, the schedule state),
    read without the lock and replaced whole under it (temp file, fsync, rename): never
    half-written. Its mode is the lock's, as for the queue's tables."""

    def __init__(self, path, lock):
        self.path = Path(path)
        self.lock = lock
        self._cached = None   # (stat version, what parse made of the text)

    def read(self, parse):
        """parse(text) of the file ('' if there is none), parsed again only when the file
        changed: a poll costs one stat. parse must be the same function on every call."""
        st = _stat_or_none(self.path)
        version = None if st is None else version_of(st)
        if self._cached is None or self._cached[0] != version:
            text = ''
            if st is not None:
                with storage_errors(self.path, 'read'):
                    with open(self.path, encoding=ENCODING, errors=DECODE_ERRORS) as f:
                        text = f.read()
            self._cached = (version, parse(text))
        return self._cached[1]

    def replace(self, text):
        """Write text as the whole file, atomically, under the lock (re-entrant: a caller
        may hold it already)."""
        with self.lock, storage_errors(self.path, 'write'):
            fd, temp = tempfile.mkstemp(prefix=f'.{self.path.name}.', dir=self.path.parent)
            try:
                set_mode(fd, self.lock.mode(), self.path)
                with os.fdopen(fd, 'w', encoding=ENCODING, errors=DECODE_ERRORS) as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temp, self.path)
            except BaseException:
                unlink_quietly(temp)
                raise
            _fsync_directory(self.path.parent)


def _words(text):
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


class WordsFile(SmallFile):
    """data/queue.paused: one word per line."""

    def words(self):
        return self.read(_words)

    def set(self, word, present):
        """Add (present) or remove one word, atomically with respect to other updates."""
        with self.lock:
            words = self.words() | {word} if present else self.words() - {word}
            self.replace(''.join(f'{word}\n' for word in sorted(words)))


def make_directory(directory, file_mode=None):
    """mkdir -p, each new directory's name fsynced; with a file_mode, directories made
    here get it plus the matching x bits."""
    directory = Path(directory)
    if directory.is_dir():
        return
    make_directory(directory.parent, file_mode)
    try:
        os.mkdir(directory)
    except FileExistsError:
        return
    if file_mode is not None:
        os.chmod(directory, file_mode | (file_mode & 0o444) >> 2)
    _fsync_directory(directory.parent)   # the new directory's name, before files go in it


def set_mode(fd, file_mode, path):
    """fchmod, or a warning when this user may not (the file is someone else's)."""
    try:
        os.fchmod(fd, file_mode)
    except PermissionError:
        log.warning('%s keeps mode %o instead of %o: it belongs to another user', path,
                    os.fstat(fd).st_mode & 0o777, file_mode)


def temp_files(lock_path):
    """(path, host, pid or None) of each temp file of a rewrite of a table of the queue
    whose lock is lock_path (data/queue.lock: its tables are data/queue*.tsv).

    Their names are .<table>.<host>.<pid>.<random>.tmp (older: no host, this one).
    """
    lock_path = Path(lock_path)
    prefix, suffix = f'.{lock_path.stem}.', '.tmp'
    try:
        entries = list(os.scandir(lock_path.parent))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        name = entry.name
        if name.startswith(prefix) and name.endswith(suffix) and '.tsv.' in name:
            parts = name[name.index('.tsv.') + 5:-len(suffix)].rsplit('.', 2)
            host, pid = (parts[0], parts[1]) if len(parts) == 3 else (liveness.HOST, parts[0])
            found.append((Path(entry.path), host, int(pid) if pid.isdigit() else None))
    return found


def abandoned_temp_files(lock_path):
    """The temp files of the queue whose writer, a process on this host, is gone."""
    return [tmp for tmp, host, pid in temp_files(lock_path)
            if host == liveness.HOST and (pid is None or liveness.start_marker(pid) is None)]


def remove_abandoned_temp_files(lock_path):
    """Each is a whole copy of a table that a killed rewrite left behind."""
    for tmp in abandoned_temp_files(lock_path):
        log.info('removing %s, left by a rewrite whose process is gone', tmp)
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            unlink_quietly(tmp)


def decode_lines(data):
    """The lines of data (bytes), with CRLF endings (unix2dos, a Windows editor) as LF."""
    text = data.decode(ENCODING, DECODE_ERRORS)
    if '\r' in text:
        text = text.replace('\r\n', '\n')
    return text.split('\n')


def version_of(st):
    """What changes whenever a file is written or replaced: its inode, size and both
    timestamps (a new file can share the timestamps of the one it replaced)."""
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def whole_line_blocks(fd, offset, size, block_bytes):
    """The bytes of fd's whole lines from offset to size, in blocks of about block_bytes
    (a longer line whole): memory stays near block_bytes whatever the file's size. A last
    line without its newline (still being written) is left for the next read."""
    for data, _, end in line_blocks(fd, offset, size, block_bytes):
        yield data if end == len(data) else data[:end]


def line_blocks(fd, offset, size, block_bytes, before=0):
    """whole_line_blocks' blocks as (data, start, end), not copied: the lines are
    data[start:end], and data[:start] the `before` bytes ahead of them (fewer at the
    file's start)."""
    while offset < size:
        ahead = min(before, offset)
        data = os.pread(fd, ahead + min(block_bytes, size - offset), offset - ahead)
        end = data.rfind(b'\n', ahead) + 1
        if not end and ahead < len(data) < ahead + size - offset:   # a line > a block
            data = pread_all(fd, ahead + size - offset, offset - ahead)
            end = data.rfind(b'\n', ahead) + 1
        if not end:
            return   # a line still being written, or it shrank since
        yield data, ahead, end
        offset += end - ahead   # the next read starts at the line this one cut


def pread_all(fd, size, offset):
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b''.join(chunks)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _stat_or_none(path):
    try:
        return os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def close_in_background(owner, size_bytes):
    """Close owner (a fd_owner), the last descriptor of a replaced file version of
    size_bytes, which frees its blocks (~40 ms for a million jobs on ext4): from another
    thread, which need not hold up the worker, unless it is below BACKGROUND_CLOSE_BYTES
    (starting a thread costs more than that, ~0.7 ms here)."""
    if size_bytes < BACKGROUND_CLOSE_BYTES:
        owner.close()
        return

    def close():
        try:
            owner.close()
        except OSError as exc:
            log.error('could not close a replaced version of a table: %s', exc)
    threading.Thread(target=close, name='dbbasic_queue close', daemon=True).start()


def unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
