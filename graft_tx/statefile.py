"""Term and vote on disk, in Go graft's file format.

The file holds C{{"SHA": <base64>, "Data": <base64>}}: Data is the JSON
C{{"CurrentTerm": <int>, "VotedFor": "<id>"}} and SHA is the SHA-1 of those
bytes. graft_tx adds C{"NodeID"} to Data, the id of the node that owns the
file, so that a restarted node keeps its identity, and C{"WindowUs"}, the
longest promise (minimum election timeout, in microseconds) the node may
still be keeping, so that a restart with shorter timings keeps it; Go
graft's decoder skips unknown keys, and a file without them (Go's) is read
as having no id and no promise.
Old graft releases wrote the Data bytes followed by the SHA-1 of nothing in
place of the digest; such files are read too.

Unlike graft, writes go through a temporary file, fsync and an atomic
rename, so a crash leaves the old state or the new one, never a torn file;
and the file is kept when the node closes, so a restarted node remembers
its vote.

Neither the state file nor its temporary file is opened through a symbolic
link: a link planted at either path (in a directory others can write to)
must not make the node, often running as root, create or overwrite the
file it points to. The temporary file is created exclusively, so nothing
already at its path is ever written through, and both files are created
readable and writable by their owner only (0600).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import json
import os
from dataclasses import dataclass

from graft_tx.errors import LogAccessError, LogCorruptError, MessageError
from graft_tx.messages import MAX_TERM, check_id

_EMPTY_SHA1 = hashlib.sha1(b"").digest()
# Owner only; the umask may take away more, never add.
FILE_MODE = 0o600
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_LOAD_FLAGS = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | _CLOEXEC
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
# Go's encoding/json escapes these even inside strings; so do we, byte for byte.
_GO_ESCAPES = {ord(c): f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"}


@dataclass(frozen=True)
class PersistentState:
    """What a node must never forget: its term, its vote in that term, its
    own id (C{""}: none recorded yet) and the longest promise it may still
    keep, in microseconds (0: none recorded)."""

    term: int = 0
    voted_for: str = ""
    node_id: str = ""
    window_us: int = 0


def encode_state(state: PersistentState) -> bytes:
    """The file content for C{state}, byte for byte as Go graft writes it."""
    if not 0 <= state.term <= MAX_TERM:
        # Never write what load() would refuse to read.
        raise ValueError(f"term {state.term} is out of range")
    fields: dict[str, object] = {"CurrentTerm": state.term, "VotedFor": state.voted_for}
    if state.node_id:
        fields["NodeID"] = state.node_id
    if state.window_us:
        fields["WindowUs"] = state.window_us
    text = json.dumps(
        fields,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    data = text.translate(_GO_ESCAPES).encode("utf-8")
    envelope = {
        "SHA": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
        "Data": base64.b64encode(data).decode("ascii"),
    }
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")


def _field(obj: dict[str, object], name: str) -> object:
    # Go's encoding/json matches keys without regard to case.
    for key, value in obj.items():
        if key.lower() == name.lower():
            return value
    return None


def _b64(value: object, what: str, path: str) -> bytes:
    if not isinstance(value, str):
        raise LogCorruptError(path, f"{what} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise LogCorruptError(path, f"{what} is not valid base64") from None


def decode_state(content: bytes, path: str) -> PersistentState | None:
    """Parse a state file's content; L{None} for an empty file.

    @raise LogCorruptError: the content is not a state that graft or
        graft_tx wrote, or its digest does not match.
    """
    if not content:
        return None
    try:
        envelope = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise LogCorruptError(path, "not a JSON document") from None
    if not isinstance(envelope, dict):
        raise LogCorruptError(path, "not a JSON object")
    digest = _b64(_field(envelope, "SHA"), "SHA", path)
    data = _b64(_field(envelope, "Data"), "Data", path)
    if digest != hashlib.sha1(data).digest() and digest != data + _EMPTY_SHA1:
        raise LogCorruptError(path, "the SHA-1 digest does not match the data")
    try:
        fields = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise LogCorruptError(path, "Data is not a JSON document") from None
    if not isinstance(fields, dict):
        raise LogCorruptError(path, "Data is not a JSON object")
    term = _field(fields, "CurrentTerm")
    vote = _field(fields, "VotedFor")
    if term is None:
        term = 0
    if vote is None:
        vote = ""
    if isinstance(term, bool) or not isinstance(term, int) or not 0 <= term <= MAX_TERM:
        raise LogCorruptError(path, f"CurrentTerm {term!r} is not a term")
    if not isinstance(vote, str):
        raise LogCorruptError(path, f"VotedFor {vote!r} is not a node id")
    node_id = _field(fields, "NodeID")
    if node_id is None:
        node_id = ""
    try:
        check_id("NodeID", node_id, allow_empty=True)
    except MessageError:
        raise LogCorruptError(path, f"NodeID {node_id!r} is not a node id") from None
    assert isinstance(node_id, str)
    window = _field(fields, "WindowUs")
    if window is None:
        window = 0
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= MAX_TERM:
        raise LogCorruptError(path, f"WindowUs {window!r} is not a number of microseconds")
    return PersistentState(term, vote, node_id, window)


class StateFile:
    """One node's state file: read once at start, rewritten on every change."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> PersistentState:
        """Read the saved state, creating an empty file (0600) if there is none.

        @raise LogCorruptError: the file's content cannot be trusted.
        @raise LogAccessError: the file cannot be read or created, or its
            path is a symbolic link (dangling or not), which is never followed.
        """
        try:
            fd = os.open(self.path, _LOAD_FLAGS, FILE_MODE)
        except OSError as e:
            if os.path.islink(self.path):
                raise LogAccessError(self.path, "open", OSError(SYMLINK_REFUSED)) from e
            raise LogAccessError(self.path, "open", e) from e
        try:
            with os.fdopen(fd, "rb") as f:
                content = f.read()
        except OSError as e:
            raise LogAccessError(self.path, "read", e) from e
        return decode_state(content, self.path) or PersistentState()

    def save(self, state: PersistentState) -> None:
        """Replace the saved state atomically and durably.

        @raise LogAccessError: nothing was written; the old state stands.
        """
        tmp = f"{self.path}.tmp"
        try:
            fd = _create_exclusively(tmp)
            try:
                content = memoryview(encode_state(state))
                while content:
                    content = content[os.write(fd, content) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))
        except OSError as e:
            _remove_quietly(tmp)
            raise LogAccessError(self.path, "write", e) from e


SYMLINK_REFUSED = (
    "it is a symbolic link, and graft_tx does not follow links for its state file "
    "(give the real file's path)"
)


def _create_exclusively(path: str) -> int:
    """A new, empty file at C{path} (0600), open for writing.

    Whatever is already there (the leftover of a crash, or a file or symbolic
    link someone planted) is removed and the creation retried once; it is never
    written through. unlink removes a link itself, never its target.
    """
    try:
        return os.open(path, _TMP_FLAGS, FILE_MODE)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ELOOP):
            raise
    os.unlink(path)
    return os.open(path, _TMP_FLAGS, FILE_MODE)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def _fsync_dir(directory: str) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
