"""The state file: graft's JSON + SHA-1 format, corruption, atomic writes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import RecordingHandler, RecordingRpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

import graft_tx
import graft_tx.statefile
from graft_tx import ClusterInfo, LogAccessError, LogCorruptError, State, VoteRequest
from graft_tx.statefile import PersistentState, StateFile, encode_state

# Graft's algorithm as Go graft runs it; graft-tx features are tested on their own.
pytestmark = pytest.mark.protocol("graft")

EMPTY_SHA1 = hashlib.sha1(b"").digest()
MAX_TERM = 2**64 - 1


def go_data(term: int, vote: str) -> bytes:
    """The Data bytes Go's json.Marshal writes for graft's persistentState."""
    return b'{"CurrentTerm":%d,"VotedFor":%s}' % (term, json.dumps(vote).encode("ascii"))


def envelope(
    data: bytes,
    *,
    sha: bytes | None = None,
    sha_key: str = "SHA",
    data_key: str = "Data",
) -> bytes:
    """A whole state file around C{data}; the digest is SHA-1 of data unless given."""
    digest = hashlib.sha1(data).digest() if sha is None else sha
    return b'{"%s":"%s","%s":"%s"}' % (
        sha_key.encode("ascii"),
        base64.b64encode(digest),
        data_key.encode("ascii"),
        base64.b64encode(data),
    )


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


# -- round trip and format ---------------------------------------------------


def test_round_trip_with_id_and_promise(tmp_path: Path) -> None:
    """A node id and a promise window saved to the file load back unchanged."""
    store = StateFile(str(tmp_path / "state"))
    store.save(PersistentState(9, "b", "a", 1_500_000))
    assert StateFile(str(tmp_path / "state")).load() == PersistentState(9, "b", "a", 1_500_000)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(term=st.integers(min_value=0, max_value=MAX_TERM), vote=st.text())
def test_round_trip(tmp_path: Path, term: int, vote: str) -> None:
    """Any uint64 term and any text vote saved to the file load back unchanged."""
    store = StateFile(str(tmp_path / "state"))
    store.save(PersistentState(term, vote))
    assert StateFile(str(tmp_path / "state")).load() == PersistentState(term, vote)


def test_exact_bytes_match_go_graft(tmp_path: Path) -> None:
    """save() writes byte for byte what Go graft writes: base64 SHA-1 and base64 compact JSON."""
    path = tmp_path / "state"
    StateFile(str(path)).save(PersistentState(42, "Zx8kq0mP3TnY1aRb"))
    data = b'{"CurrentTerm":42,"VotedFor":"Zx8kq0mP3TnY1aRb"}'
    expected = b'{"SHA":"%s","Data":"%s"}' % (
        base64.b64encode(hashlib.sha1(data).digest()),
        base64.b64encode(data),
    )
    assert path.read_bytes() == expected


def test_html_characters_escaped_as_go_does(tmp_path: Path) -> None:
    """Go's encoder writes <, > and & in strings as \\u escapes; the bytes match it."""
    path = tmp_path / "state"
    StateFile(str(path)).save(PersistentState(7, "a<b>&c"))
    data = b'{"CurrentTerm":7,"VotedFor":"a\\u003cb\\u003e\\u0026c"}'
    expected = b'{"SHA":"%s","Data":"%s"}' % (
        base64.b64encode(hashlib.sha1(data).digest()),
        base64.b64encode(data),
    )
    assert path.read_bytes() == expected
    assert StateFile(str(path)).load() == PersistentState(7, "a<b>&c")


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    term=st.integers(min_value=0, max_value=MAX_TERM),
    vote=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"),
)
def test_exact_bytes_property(tmp_path: Path, term: int, vote: str) -> None:
    """For every term and every NUID-like id the bytes equal the hand-built Go envelope."""
    path = tmp_path / "state"
    StateFile(str(path)).save(PersistentState(term, vote))
    data = json.dumps({"CurrentTerm": term, "VotedFor": vote}, separators=(",", ":")).encode()
    expected = json.dumps(
        {
            "SHA": base64.b64encode(hashlib.sha1(data).digest()).decode(),
            "Data": base64.b64encode(data).decode(),
        },
        separators=(",", ":"),
    ).encode()
    assert path.read_bytes() == expected


def test_reads_go_file(tmp_path: Path) -> None:
    """A file in Go graft's current format (hand-built) yields its term and vote."""
    path = write(tmp_path / "state", envelope(go_data(17, "peer-3")))
    assert StateFile(str(path)).load() == PersistentState(17, "peer-3")


def test_reads_legacy_digest(tmp_path: Path) -> None:
    """A file whose SHA is the Data bytes plus SHA-1 of nothing (old graft) is accepted."""
    data = go_data(9, "old-node")
    path = write(tmp_path / "state", envelope(data, sha=data + EMPTY_SHA1))
    assert StateFile(str(path)).load() == PersistentState(9, "old-node")


def test_reads_go_html_escaped_id(tmp_path: Path) -> None:
    """Go's json.Marshal escapes <, > and & as \\u003c...; such an id reads back as text."""
    data = b'{"CurrentTerm":3,"VotedFor":"a\\u003cb\\u003ec\\u0026d"}'
    path = write(tmp_path / "state", envelope(data))
    assert StateFile(str(path)).load() == PersistentState(3, "a<b>c&d")


@pytest.mark.parametrize(
    ("sha_key", "data_key", "term_key", "vote_key"),
    [
        ("sha", "data", "currentTerm", "votedFor"),
        ("Sha", "DATA", "currentterm", "VOTEDFOR"),
        ("SHA", "Data", "CURRENTTERM", "votedfor"),
    ],
)
def test_keys_match_case_insensitively(
    tmp_path: Path, sha_key: str, data_key: str, term_key: str, vote_key: str
) -> None:
    """Keys in any letter case are read, as Go's JSON reader matches them."""
    data = b'{"%s":12,"%s":"n2"}' % (term_key.encode(), vote_key.encode())
    path = write(tmp_path / "state", envelope(data, sha_key=sha_key, data_key=data_key))
    assert StateFile(str(path)).load() == PersistentState(12, "n2")


def test_keys_case_insensitive_with_legacy_digest(tmp_path: Path) -> None:
    """Lower-case keys and the legacy digest together still read."""
    data = b'{"currentTerm":4,"votedFor":"x"}'
    content = envelope(data, sha=data + EMPTY_SHA1, sha_key="sha", data_key="data")
    path = write(tmp_path / "state", content)
    assert StateFile(str(path)).load() == PersistentState(4, "x")


def test_missing_fields_are_zero_values(tmp_path: Path) -> None:
    """Data without CurrentTerm or VotedFor means term 0 and no vote, as Go's zero values."""
    path = write(tmp_path / "state", envelope(b"{}"))
    assert StateFile(str(path)).load() == PersistentState(0, "")


def test_empty_file_is_fresh_start(tmp_path: Path) -> None:
    """An empty file loads as term 0 with no vote and is left empty."""
    path = write(tmp_path / "state", b"")
    assert StateFile(str(path)).load() == PersistentState(0, "")
    assert path.read_bytes() == b""


def test_missing_file_is_created_empty(tmp_path: Path) -> None:
    """load() on a missing file creates it empty and returns term 0, no vote."""
    path = tmp_path / "state"
    assert StateFile(str(path)).load() == PersistentState(0, "")
    assert path.exists()
    assert path.read_bytes() == b""


# -- corruption --------------------------------------------------------------


def _flipped_in_data() -> bytes:
    good = envelope(go_data(7, "node-a"))
    # A byte in the middle of the Data value (far from base64 padding).
    start = good.index(b'"Data":"') + len(b'"Data":"')
    end = good.index(b'"', start)
    pos = (start + end) // 2
    return good[:pos] + bytes([good[pos] ^ 0x01]) + good[pos + 1 :]


CORRUPT = {
    "bad digest": envelope(go_data(7, "a"), sha=hashlib.sha1(b"other").digest()),
    "digest of another state": envelope(
        go_data(8, "a"), sha=hashlib.sha1(go_data(7, "a")).digest()
    ),
    "flipped byte": _flipped_in_data(),
    "not json": b"this is not json",
    "truncated (torn write)": envelope(go_data(7, "node-a"))[:30],
    "json array": b'["SHA","Data"]',
    "json null": b"null",
    "no SHA": b'{"Data":"%s"}' % base64.b64encode(go_data(1, "a")),
    "SHA not base64": b'{"SHA":"!!not base64!!","Data":"%s"}' % base64.b64encode(go_data(1, "a")),
    "Data not base64": b'{"SHA":"%s","Data":"@@@@"}' % base64.b64encode(EMPTY_SHA1),
    "Data not json": envelope(b"not json at all"),
    "Data a json array": envelope(b"[1,2]"),
    "negative term": envelope(b'{"CurrentTerm":-1,"VotedFor":"a"}'),
    "term above uint64": envelope(b'{"CurrentTerm":18446744073709551616,"VotedFor":"a"}'),
    "term as string": envelope(b'{"CurrentTerm":"5","VotedFor":"a"}'),
    "term a fraction": envelope(b'{"CurrentTerm":1.5,"VotedFor":"a"}'),
    "term a bool": envelope(b'{"CurrentTerm":true,"VotedFor":"a"}'),
    "VotedFor a number": envelope(b'{"CurrentTerm":5,"VotedFor":7}'),
    "NodeID a number": envelope(b'{"CurrentTerm":5,"VotedFor":"a","NodeID":7}'),
    "NodeID not printable": envelope(b'{"CurrentTerm":5,"VotedFor":"a","NodeID":"a\\nb"}'),
    "WindowUs negative": envelope(b'{"CurrentTerm":5,"VotedFor":"a","WindowUs":-1}'),
    "WindowUs a string": envelope(b'{"CurrentTerm":5,"VotedFor":"a","WindowUs":"5"}'),
    "WindowUs a bool": envelope(b'{"CurrentTerm":5,"VotedFor":"a","WindowUs":true}'),
    "whitespace only": b"  \n\t  \n",
}


@pytest.mark.parametrize("content", list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_file_raises_and_is_untouched(tmp_path: Path, content: bytes) -> None:
    """Each kind of corrupt content raises LogCorruptError naming the path; the bytes stay."""
    path = write(tmp_path / "state", content)
    with pytest.raises(LogCorruptError) as caught:
        StateFile(str(path)).load()
    assert str(path) in str(caught.value)
    assert caught.value.path == str(path)
    assert isinstance(caught.value, graft_tx.GraftError)
    assert path.read_bytes() == content


def test_no_single_byte_flip_yields_another_state(tmp_path: Path) -> None:
    """Flipping any one bit-0 of the file either raises LogCorruptError or reads the same state."""
    good = envelope(go_data(123456, "node-b"))
    path = tmp_path / "state"
    corrupt = 0
    for pos in range(len(good)):
        content = good[:pos] + bytes([good[pos] ^ 0x01]) + good[pos + 1 :]
        write(path, content)
        try:
            state = StateFile(str(path)).load()
        except LogCorruptError:
            corrupt += 1
        else:
            assert state == PersistentState(123456, "node-b"), pos
        assert path.read_bytes() == content
    assert corrupt >= len(good) - 4


def test_new_refuses_corrupt_file(tmp_path: Path) -> None:
    """graft_tx.new raises LogCorruptError on a corrupt file, starts nothing, leaves the bytes."""
    content = CORRUPT["bad digest"]
    path = write(tmp_path / "state", content)
    clock = Clock()
    rpc = RecordingRpc()
    with pytest.raises(LogCorruptError) as caught:
        graft_tx.new(ClusterInfo("c", 3), RecordingHandler(), rpc, str(path), clock=clock)
    assert str(path) in str(caught.value)
    assert rpc.node is None
    assert clock.getDelayedCalls() == []
    assert path.read_bytes() == content


def test_new_reads_go_written_file(tmp_path: Path) -> None:
    """A node started on a file Go graft wrote (legacy digest) takes its term and vote."""
    data = go_data(31, "go-node")
    path = write(tmp_path / "state", envelope(data, sha=data + EMPTY_SHA1))
    node = graft_tx.new(
        ClusterInfo("c", 3), RecordingHandler(), RecordingRpc(), str(path), clock=Clock()
    )
    assert (node.current_term, node.current_vote) == (31, "go-node")
    node.close()


# -- restarts ----------------------------------------------------------------


def test_restart_keeps_term_and_vote(tmp_path: Path) -> None:
    """A node closed and created again on the same file has its term and vote, and won't revote."""
    path = str(tmp_path / "state")
    info = ClusterInfo("c", 3)
    clock = Clock()
    rpc = RecordingRpc()
    node = graft_tx.new(info, RecordingHandler(), rpc, path, clock=clock, node_id="n1")
    node.handle_vote_request(VoteRequest(5, "peer"))
    assert rpc.last_response().granted
    node.close()

    rpc2 = RecordingRpc()
    again = graft_tx.new(info, RecordingHandler(), rpc2, path, clock=clock, node_id="n1")
    assert again.state is State.FOLLOWER
    assert (again.current_term, again.current_vote) == (5, "peer")
    again.handle_vote_request(VoteRequest(5, "other"))
    assert not rpc2.last_response().granted
    again.close()


def test_close_keeps_file(tmp_path: Path) -> None:
    """close() leaves the state file in place with the node's last state (graft deletes it)."""
    path = tmp_path / "state"
    node = graft_tx.new(
        ClusterInfo("c", 3), RecordingHandler(), RecordingRpc(), str(path), clock=Clock()
    )
    node.handle_vote_request(VoteRequest(2, "peer"))
    node.close()
    assert path.exists()
    assert StateFile(str(path)).load() == PersistentState(2, "peer", node.id, 500_000)


# -- write failures and atomicity -------------------------------------------


def test_save_into_removed_directory(tmp_path: Path) -> None:
    """save() after the directory was removed raises LogAccessError and leaves no temp file."""
    directory = tmp_path / "d"
    directory.mkdir()
    path = directory / "state"
    store = StateFile(str(path))
    store.save(PersistentState(1, "a"))
    shutil.rmtree(directory)
    with pytest.raises(LogAccessError) as caught:
        store.save(PersistentState(2, "b"))
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, graft_tx.GraftError)
    assert not directory.exists()
    assert not os.path.exists(f"{path}.tmp")


def test_load_in_missing_directory(tmp_path: Path) -> None:
    """load() where the directory does not exist raises LogAccessError naming the path."""
    path = tmp_path / "nowhere" / "state"
    with pytest.raises(LogAccessError) as caught:
        StateFile(str(path)).load()
    assert str(path) in str(caught.value)
    assert not path.parent.exists()


def _fail_replace(*args: object, **kwargs: object) -> None:
    raise OSError("simulated crash before rename")


def _fail_fsync(*args: object, **kwargs: object) -> None:
    raise OSError("simulated crash before fsync completes")


def _make_torn_write() -> object:
    real_write = os.write
    calls = []

    def torn_write(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) == 1:
            # Write half, then "crash".
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError("simulated crash mid-write")

    return torn_write


@pytest.mark.parametrize(
    ("name", "make_fake"),
    [
        ("replace", lambda: _fail_replace),
        ("fsync", lambda: _fail_fsync),
        ("write", _make_torn_write),
    ],
    ids=["rename fails", "fsync fails", "torn write"],
)
def test_crash_mid_write_keeps_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, make_fake: object
) -> None:
    """A write that dies before the rename leaves the old file intact and no temp file."""
    path = tmp_path / "state"
    store = StateFile(str(path))
    store.save(PersistentState(6, "old"))
    before = path.read_bytes()
    assert callable(make_fake)
    monkeypatch.setattr(graft_tx.statefile.os, name, make_fake())
    with pytest.raises(LogAccessError):
        store.save(PersistentState(7, "new"))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert StateFile(str(path)).load() == PersistentState(6, "old")
    assert sorted(os.listdir(tmp_path)) == ["state"]


# -- symbolic links and permissions --------------------------------------------


@pytest.fixture
def no_umask() -> Iterator[None]:
    """umask 0 for the test: only the modes graft_tx asks for limit the new files."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_planted_temp_link_is_not_written_through(tmp_path: Path) -> None:
    """A symlink planted at <state>.tmp is removed, not written through; the save succeeds."""
    target = write(tmp_path / "root-only", b"precious")
    path = tmp_path / "state"
    os.symlink(target, f"{path}.tmp")
    StateFile(str(path)).save(PersistentState(3, "a", "a"))
    assert target.read_bytes() == b"precious"
    assert not path.is_symlink()
    assert StateFile(str(path)).load() == PersistentState(3, "a", "a")
    assert sorted(os.listdir(tmp_path)) == ["root-only", "state"]


def test_dangling_temp_link_target_is_not_created(tmp_path: Path) -> None:
    """A dangling symlink at <state>.tmp does not make save() create the file it names."""
    target = tmp_path / "created-by-root"
    path = tmp_path / "state"
    os.symlink(target, f"{path}.tmp")
    StateFile(str(path)).save(PersistentState(1, "a"))
    assert not os.path.lexists(target)
    assert StateFile(str(path)).load() == PersistentState(1, "a")


def test_temp_link_planted_again_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link planted again between the unlink and the retry fails the save; the target stands."""
    target = write(tmp_path / "root-only", b"precious")
    path = tmp_path / "state"
    store = StateFile(str(path))
    store.save(PersistentState(1, "old"))
    tmp = f"{path}.tmp"
    os.symlink(target, tmp)
    real_unlink = os.unlink

    def unlink_and_replant(name: str) -> None:
        real_unlink(name)
        os.symlink(target, name)

    monkeypatch.setattr(graft_tx.statefile.os, "unlink", unlink_and_replant)
    with pytest.raises(LogAccessError):
        store.save(PersistentState(2, "new"))
    monkeypatch.undo()
    assert target.read_bytes() == b"precious"
    assert StateFile(str(path)).load() == PersistentState(1, "old")


def test_leftover_temp_file_is_replaced(tmp_path: Path) -> None:
    """A regular <state>.tmp left by a crash is replaced, not appended to or reused."""
    path = tmp_path / "state"
    write(tmp_path / "state.tmp", b"x" * 4096)
    os.chmod(tmp_path / "state.tmp", 0o666)
    StateFile(str(path)).save(PersistentState(5, "b"))
    assert path.read_bytes() == encode_state(PersistentState(5, "b"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not os.path.lexists(tmp_path / "state.tmp")


def test_save_replaces_a_link_at_the_state_path_not_its_target(tmp_path: Path) -> None:
    """save() renames over a symlink at the state path: the link goes, its target is untouched."""
    target = write(tmp_path / "root-only", b"precious")
    path = tmp_path / "state"
    os.symlink(target, path)
    StateFile(str(path)).save(PersistentState(2, "a"))
    assert target.read_bytes() == b"precious"
    assert not path.is_symlink()
    assert StateFile(str(path)).load() == PersistentState(2, "a")


def test_load_refuses_a_dangling_link_and_creates_nothing(tmp_path: Path) -> None:
    """load() refuses a dangling symlink at the state path and does not create its target."""
    target = tmp_path / "created-by-root"
    path = tmp_path / "state"
    os.symlink(target, path)
    with pytest.raises(LogAccessError) as caught:
        StateFile(str(path)).load()
    assert "symbolic link" in str(caught.value)
    assert "does not follow links" in str(caught.value)
    assert str(path) in str(caught.value)
    assert not os.path.lexists(target)


def test_load_refuses_a_link_to_a_real_file(tmp_path: Path) -> None:
    """load() refuses a symlink at the state path even when it leads to a valid state file."""
    real = tmp_path / "real.state"
    StateFile(str(real)).save(PersistentState(4, "a", "a"))
    path = tmp_path / "state"
    os.symlink(real, path)
    with pytest.raises(LogAccessError, match="symbolic link"):
        StateFile(str(path)).load()


@pytest.mark.usefixtures("no_umask")
def test_new_state_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """With umask 0, load() creates the state file 0600 and save() replaces it with a 0600 one."""
    path = tmp_path / "state"
    store = StateFile(str(path))
    store.load()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store.save(PersistentState(1, "a"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.usefixtures("no_umask")
def test_temp_file_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file is 0600 from its creation, before its content is written."""
    path = tmp_path / "state"
    modes: list[int] = []
    real_fsync = os.fsync

    def fsync_and_look(fd: int) -> None:
        if os.path.exists(f"{path}.tmp"):
            modes.append(stat.S_IMODE(os.stat(f"{path}.tmp").st_mode))
        real_fsync(fd)

    monkeypatch.setattr(graft_tx.statefile.os, "fsync", fsync_and_look)
    StateFile(str(path)).save(PersistentState(1, "a"))
    assert modes == [0o600]
