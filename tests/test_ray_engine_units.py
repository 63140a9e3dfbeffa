"""The Ray engine's own logic, without starting Ray: the address probe (against small local socket servers
speaking just enough HTTP/2), joining and leaving Ray (a stand-in ``ray`` module), the task sizes, the table
rows an actor sends back and the driver putting them back into plan order. Fast: this file is in the mutation
run's test selection (setup.cfg ``[mutmut]``); tests/test_ray_engine.py runs the engine on a real local Ray."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import socket
import sys
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install -e '.[dev]' (or '.[ray]') installs it")
pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data: pip install -e '.[dev]' installs it")

from _images import write_class_folder  # noqa: E402
from cvae_features import ray_engine as re_  # noqa: E402
from cvae_features.data import ArraySource, Batch, infer_preprocess, iter_batches, open_source  # noqa: E402
from cvae_features.errors import ConfigError, EngineError  # noqa: E402
from cvae_features.featurizers import pixels  # noqa: E402
from cvae_features.ray_engine import (  # noqa: E402
    RayEngine, _actor_death, _batch, _ChunkEncoder, _columns, _task_part, _env_address, _grpc_answers, _InOrder, _same_address,
    _spread, check_address)

# ------------------------------------------------------------------------------------------------
# the address probe: one gRPC call, written out here byte by byte (RFC 7540 frames, RFC 7541 HPACK)


def _request(port: int) -> bytes:
    """The bytes the probe must send to 127.0.0.1:``port``: preface, empty SETTINGS, HEADERS, an empty message."""
    path, authority = b"/ray.rpc.NodeInfoGcsService/GetClusterId", f"127.0.0.1:{port}".encode()
    block = (b"\x83\x86"  # :method POST, :scheme http (static table 3 and 6)
             + b"\x04" + bytes([len(path)]) + path  # :path (index 4), literal value, not indexed
             + b"\x01" + bytes([len(authority)]) + authority  # :authority (index 1)
             + b"\x0f\x10" + bytes([16]) + b"application/grpc"  # content-type (index 31 = 15 + 16)
             + b"\x00\x02te\x08trailers")  # a literal name, not in the static table
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # SETTINGS, no flags, stream 0, empty
            + len(block).to_bytes(3, "big") + b"\x01\x04\x00\x00\x00\x01" + block  # HEADERS, END_HEADERS, stream 1
            + b"\x00\x00\x05\x00\x01\x00\x00\x00\x01" + bytes(5))  # DATA, END_STREAM: an empty gRPC message


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


SETTINGS_ACK = _frame(4, 0x1, 0)
OK, NOT_FOUND = b"\x88", b"\x8d"  # HPACK static table: ':status 200', ':status 404'


class _Server:
    """A one-connection TCP server on 127.0.0.1: reads the probe's request, sends ``replies`` (each after
    ``pause`` seconds; None: close at once; "ack": wait for the probe to acknowledge the settings), then records
    whatever else comes until the probe closes."""

    def __init__(self, replies=(), pause=0.0):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.received = b""
        self.replies, self.pause = replies, pause
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(3)
            want = len(_request(self.port))
            try:
                while len(self.received) < want:
                    data = conn.recv(65536)
                    if not data:
                        return
                    self.received += data
                for reply in self.replies:
                    if reply is None:
                        return
                    while reply == "ack" and SETTINGS_ACK not in self.received[want:]:
                        data = conn.recv(65536)
                        if not data:
                            return
                        self.received += data
                    if reply == "ack":
                        continue
                    time.sleep(self.pause)
                    conn.sendall(reply)
                while data := conn.recv(65536):
                    self.received += data
            except OSError:
                return

    def after_request(self) -> bytes:
        """What the probe sent after its request (acknowledgements); the request itself must be exact."""
        self.thread.join(5)
        self.sock.close()
        request = _request(self.port)
        assert self.received[:len(request)] == request
        return self.received[len(request):]


def _answers(replies, timeout=2.0, pause=0.0):
    server = _Server(replies, pause)
    return _grpc_answers("127.0.0.1", server.port, timeout), server.after_request()


def test_a_grpc_answer_with_status_200_is_a_grpc_server_and_its_settings_are_acknowledged_once():
    settings = _frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64")  # SETTINGS_MAX_CONCURRENT_STREAMS = 100
    window = _frame(8, 0, 0, b"\x00\x00\x10\x00")  # WINDOW_UPDATE: a frame with a payload, ignored
    assert _answers([settings + SETTINGS_ACK + window + _frame(1, 0x4, 1, OK + b"\x5f\x8b" + b"x" * 11)]) \
        == (True, SETTINGS_ACK)  # the server's own acknowledgement is not acknowledged
    assert _answers([_frame(1, 0x4, 1, NOT_FOUND)]) == (False, b"")  # an HTTP/2 server, not gRPC's 200
    assert _answers([_frame(1, 0x5, 0x80000001, OK)]) == (True, b"")  # the reserved high bit of the stream id
    assert _answers([_frame(1, 0x4, 0x01000001, OK) + _frame(1, 0x4, 1, NOT_FOUND)]) == (False, b"")  # all 31 bits


def test_a_server_that_waits_for_its_settings_to_be_acknowledged_gets_it():
    """An empty frame alone in the buffer (9 bytes) is read at once, not when more comes."""
    assert _answers([_frame(4, 0, 0), "ack", _frame(1, 0x4, 1, OK)], timeout=1.0) == (True, SETTINGS_ACK)


def test_answers_cut_into_pieces_are_put_together():
    reply = _frame(4, 0, 0) + _frame(8, 0, 0, b"\x00\x00\x10\x00") + _frame(1, 0x4, 1, OK)
    assert _answers([reply[i:i + 1] for i in range(len(reply))], pause=0.002) == (True, SETTINGS_ACK)
    assert _answers([reply[:5], reply[5:16], reply[16:]], pause=0.02) == (True, SETTINGS_ACK)


@pytest.mark.parametrize("payload, flags, answer", [
    (b"\x02" + OK + b"\x00\x00", 0x8, True),  # padded: the pad length first, the padding last
    (b"\x01" + OK, 0x8, False),  # padded, an empty header block: the padding is no status
    (b"\x00\x00\x00\x03\x10" + OK, 0x20, True),  # with a priority (5 bytes) first
    (b"\x00\x00\x00\x03\x10" + NOT_FOUND, 0x20, False),
    (b"\x03\x00\x00\x00\x03\x10" + OK + OK + OK + OK, 0x28, True),  # both; three bytes of padding
    (b"\x02\x00\x00\x00\x03\x88" + NOT_FOUND + OK + OK, 0x28, False),
])
def test_padded_and_prioritised_headers_are_read_past(payload, flags, answer):
    assert _answers([_frame(1, 0x4 | flags, 1, payload)]) == (answer, b"")
    # the same with another frame after it in the same read: the padding ends where the frame does
    assert _answers([_frame(1, 0x4 | flags, 1, payload) + _frame(8, 0, 0, b"\x88" * 4)]) == (answer, b"")


@pytest.mark.parametrize("replies", [
    [_frame(7, 0, 0, bytes(8)) + _frame(1, 0x4, 1, OK)],  # GOAWAY, then a status: too late
    [_frame(3, 0, 1, bytes(4)) + _frame(1, 0x4, 1, OK)],  # RST_STREAM of the call
    [_frame(1, 0x4, 3, OK) + _frame(1, 0x4, 1, NOT_FOUND)],  # a 200 on another stream is not the call's
    [b"HTTP/1.1 400 Bad Request\r\n\r\n", None],  # a web server: closes after its answer
    [None],  # closes without a word
])
def test_what_is_not_a_grpc_answer(replies):
    assert _answers(replies)[0] is False


def test_a_reset_of_another_stream_is_not_the_calls():
    assert _answers([_frame(3, 0, 3, bytes(4)) + _frame(1, 0x4, 1, OK)]) == (True, b"")


def test_a_server_that_trickles_bytes_past_the_timeout_is_cut_off_at_the_timeout():
    server = _Server([b"\x00"] * 8, pause=0.1)  # a frame header never finished, a byte every 0.1 s
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^cannot reach a Ray cluster at --ray-address {server.address}: timed out"):
        check_address(server.address, 0.3)
    assert time.monotonic() - started < 0.6  # the whole exchange within the timeout, not each read


def test_a_server_that_starts_a_frame_then_falls_silent_is_cut_off_at_the_timeout():
    server = _Server([b"\x00"])  # one byte of a frame header at once, then nothing until the probe gives up
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^cannot reach a Ray cluster at --ray-address {server.address}: timed out"):
        check_address(server.address, 0.3)
    assert time.monotonic() - started < 0.8  # each read waits only for what is left of the timeout


def test_a_host_that_never_takes_the_connection_times_out_within_the_timeout():
    """A silent host (a firewall dropping the connection request): here a server whose queue is full."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        address = "127.0.0.1:%d" % server.getsockname()[1]
        with socket.create_connection(server.getsockname(), timeout=1):  # fills the queue: the next one waits
            started = time.monotonic()
            with pytest.raises(ConfigError, match=f"^cannot reach a Ray cluster at --ray-address {address}: timed out"):
                check_address(address, 0.3)
            assert time.monotonic() - started < 1.5


def test_a_silent_server_times_out_as_an_oserror_within_the_timeout():
    server = _Server([b""], pause=0.6)  # reads the request, says nothing for 0.6 s
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^cannot reach a Ray cluster at RAY_ADDRESS {server.address}: timed out "
                                          r"\(is `ray start --head` running there\?\)$"):
        check_address(server.address, 0.3, given_as="RAY_ADDRESS")
    assert time.monotonic() - started < 1.5
    server.after_request()


def test_check_address_accepts_a_grpc_server_and_names_the_others():
    server = _Server([_frame(1, 0x4, 1, OK)])
    assert check_address(server.address) is None
    assert server.after_request() == b""
    server = _Server([_frame(1, 0x4, 1, OK)])
    assert check_address(f"[127.0.0.1]:{server.port}", 2.0) is None  # brackets (of an IPv6 host) are taken off
    server.after_request()
    server = _Server([_frame(1, 0x4, 1, NOT_FOUND)])
    with pytest.raises(ConfigError, match=rf"^RAY_ADDRESS {server.address} answers, but not as a Ray cluster \(not "
                                          r"its GCS port; the dashboard port 8265 is not it\): give the head's GCS "
                                          r"address, port 6379 by default$"):
        check_address(server.address, given_as="RAY_ADDRESS")
    server.after_request()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"^cannot reach a Ray cluster at --ray-address 127.0.0.1:{closed}: "
                                          "Connection refused"):
        check_address(f"127.0.0.1:{closed}")


def test_check_address_leaves_auto_to_ray_and_refuses_what_is_no_host_and_port(monkeypatch):
    monkeypatch.setattr(re_, "_grpc_answers", lambda *a: pytest.fail("no probe"))
    assert check_address("auto") is None and check_address("local") is None
    with pytest.raises(ConfigError, match=r"^RAY_ADDRESS ray://head:10001: Ray Client addresses are not supported"):
        check_address("ray://head:10001", given_as="RAY_ADDRESS")
    for bad in ("head", ":6379", "head:", "head:63x9", "head:-1"):
        with pytest.raises(ConfigError, match=rf"^invalid RAY_ADDRESS '{bad}': expected HOST:PORT of a Ray head "
                                              r"\(e.g. 10.0.0.5:6379\) or auto$"):
            check_address(bad, given_as="RAY_ADDRESS")


def test_the_probe_is_given_the_host_without_brackets_the_port_and_the_timeout(monkeypatch):
    calls = []
    monkeypatch.setattr(re_, "_grpc_answers", lambda *a: calls.append(a) or True)
    for address in ("XRAY-HEAD:6379", "[XRAY-HEAD]:6379", "[fe80::1]:10001"):
        assert check_address(address, 0.5) is None
    assert calls == [("XRAY-HEAD", 6379, 0.5), ("XRAY-HEAD", 6379, 0.5), ("fe80::1", 10001, 0.5)]


@pytest.mark.parametrize("err, reason", [
    (OSError(errno.EHOSTUNREACH, "No route to host"), "No route to host"),  # its strerror
    (OSError("the words of it"), "the words of it"),
    (OSError(), "OSError"),  # nothing said: its type
])
def test_the_reason_a_probe_could_not_be_made(monkeypatch, err, reason):
    calls = []

    def probe(host, port, timeout):
        calls.append((host, port, timeout))
        raise err

    monkeypatch.setattr(re_, "_grpc_answers", probe)
    with pytest.raises(ConfigError, match=f"^cannot reach a Ray cluster at --ray-address \\[::1\\]:6379: {reason} "):
        check_address("[::1]:6379", 0.25)
    assert calls == [("::1", 6379, 0.25)]


# ------------------------------------------------------------------------------------------------
# joining and leaving Ray, with a stand-in for the ray module


class _FakeRay:
    def __init__(self, initialized=False, address="127.0.0.1:6379", fail=None, cpus=None):
        self.initialized, self.address, self.fail = initialized, address, fail
        self.cpus, self.inits, self.shutdowns = cpus, [], 0

    def is_initialized(self):
        return self.initialized

    def init(self, **kw):
        self.inits.append((kw, os.environ.get("RAY_BACKEND_LOG_LEVEL")))
        if self.fail:
            raise ConnectionError(self.fail)
        self.initialized = True

    def shutdown(self):
        self.shutdowns += 1

    def get_runtime_context(self):
        return type("Context", (), {"gcs_address": self.address})()

    def cluster_resources(self):
        return {} if self.cpus is None else {"CPU": self.cpus, "memory": 1e9}


@pytest.fixture
def engine(monkeypatch):
    """A RayEngine(None) on a stand-in ray module, RAY_ADDRESS unset, ray.data's log level restored."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)
    level = logging.getLogger("ray.data").level
    eng = RayEngine()
    assert eng._ray is sys.modules["ray"] and hasattr(eng._ray, "data")  # the module, with Ray Data imported
    eng._ray = _FakeRay()
    yield eng
    logging.getLogger("ray.data").setLevel(level)


def test_a_local_ray_is_started_once_quietly_and_stopped_on_close(engine):
    ray = engine._ray
    logging.getLogger("ray.data").setLevel(logging.INFO)
    with engine as same:
        assert same is engine and engine._connected and engine._started
        engine.connect()  # joined already: nothing more
    assert ray.inits == [({"address": None, "include_dashboard": False, "log_to_driver": False,
                           "logging_level": logging.ERROR}, "fatal")]
    assert "RAY_BACKEND_LOG_LEVEL" not in os.environ and logging.getLogger("ray.data").level == logging.ERROR
    assert ray.shutdowns == 1 and not engine._connected and not engine._started
    engine.close()
    assert ray.shutdowns == 1


def test_a_log_level_the_user_set_for_ray_is_kept(engine, monkeypatch):
    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "debug")
    engine.connect()
    assert engine._ray.inits[0][1] == "debug" and os.environ["RAY_BACKEND_LOG_LEVEL"] == "debug"


def test_a_ray_this_process_already_uses_is_joined_not_started_nor_stopped(engine, monkeypatch):
    engine._ray = ray = _FakeRay(initialized=True, address="127.0.0.1:6379")
    for address in (None, "auto", "127.0.0.1:6379", "localhost:6379"):
        engine.address = address
        engine.connect()
        assert engine._connected and not engine._started
        engine.close()
    assert ray.inits == [] and ray.shutdowns == 0 and not engine._connected
    engine.address = "127.0.0.1:6380"
    with pytest.raises(ConfigError, match=r"^--ray-address 127.0.0.1:6380: this process is already connected to the "
                                          r"Ray cluster at 127.0.0.1:6379$"):
        engine.connect()
    assert not engine._connected


def test_a_cluster_that_refuses_the_connection_is_named_by_where_its_address_came_from(engine, monkeypatch):
    engine._ray = _FakeRay(fail="no GCS")
    with pytest.raises(ConfigError, match=r"^cannot connect to Ray: no GCS$"):
        engine.connect()
    assert not engine._connected and not engine._started

    probed = []
    monkeypatch.setattr(re_, "check_address", lambda address, **kw: probed.append((address, kw)))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    eng = RayEngine()
    eng._ray = _FakeRay(fail="timed out")
    with pytest.raises(ConfigError, match=r"^cannot connect to a Ray cluster at RAY_ADDRESS 10.0.0.5:6379: timed out$"):
        eng.connect()
    eng = RayEngine("10.0.0.6:6379")
    eng._ray = _FakeRay(fail="timed out")
    with pytest.raises(ConfigError, match=r"^cannot connect to a Ray cluster at --ray-address 10.0.0.6:6379: "):
        eng.connect()
    assert eng._ray.inits[0][0]["address"] == "10.0.0.6:6379"
    assert probed == [("10.0.0.5:6379", {"given_as": "RAY_ADDRESS"}), ("10.0.0.6:6379", {"given_as": "--ray-address"})]


def test_the_address_probe_runs_at_construction_naming_where_the_address_came_from(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("RAY_ADDRESS", closed)
    with pytest.raises(ConfigError, match=f"^cannot reach a Ray cluster at RAY_ADDRESS {closed}: Connection refused"):
        RayEngine()
    with pytest.raises(ConfigError, match=f"^cannot reach a Ray cluster at --ray-address {closed}: "):
        RayEngine(closed)
    monkeypatch.setenv("RAY_ADDRESS", "")
    eng = RayEngine(actors=3, task_batches=1)  # nothing to probe
    assert (eng.address, eng.actors, eng.task_batches, eng._connected, eng._started) == (None, 3, 1, False, False)
    assert eng._given_as == "RAY_ADDRESS"


def test_extraction_makes_an_engine_of_its_address_and_workers_only_for_engine_ray(monkeypatch):
    from cvae_features.extraction import ExtractOptions, _ray_engine

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _ray_engine(ExtractOptions(workers=2)) is None
    eng = _ray_engine(ExtractOptions(engine="ray", workers=3, ray_address="auto"))  # 'auto' is left to Ray: no probe
    assert isinstance(eng, RayEngine) and (eng.address, eng.actors, eng._connected) == ("auto", 3, False)
    assert eng._given_as == "--ray-address"


def test_task_batches_below_one_is_refused():
    with pytest.raises(ConfigError, match=r"invalid task_batches=0: expected an integer >= 1"):
        RayEngine(task_batches=0)


def test_env_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _env_address() is None
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert _env_address() is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert _env_address() == "10.0.0.5:6379"


def test_same_address_resolves_host_names_and_compares_ports(monkeypatch):
    assert _same_address("localhost:6379", "127.0.0.1:6379")
    assert _same_address("[127.0.0.1]:6379", "127.0.0.1:6379")  # brackets off, as check_address does
    assert _same_address("[::ffff:127.0.0.1]:6379", "localhost:6379")  # IPv4 in IPv6: the host is its last colon's
    assert not _same_address("127.0.0.1:6379", "127.0.0.1:6380")
    assert not _same_address("127.0.0.2:6379", "127.0.0.1:6379")
    assert _same_address("[::1]:6379", "[::1]:6379")  # not an IPv4 name: compared as written
    assert not _same_address("[::1]:6379", "[::2]:6379")
    names = {"XRAY-HEAD": "10.0.0.5"}  # a host name as a resolver would give it (here without one)

    def resolve(name):
        if name not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return names[name]

    monkeypatch.setattr(re_.socket, "gethostbyname", resolve)
    assert _same_address("XRAY-HEAD:6379", "10.0.0.5:6379") and _same_address("[XRAY-HEAD]:6379", "10.0.0.5:6379")


# ------------------------------------------------------------------------------------------------
# sizes of the pool and of its tasks


@pytest.mark.parametrize("n_batches, actors, given, expected", [
    (195, 2, None, 8),  # 50,000 files at batch 256 on 2 CPUs: the largest task
    (39, 2, None, 4),  # four tasks per actor at least
    (8, 2, None, 1), (7, 2, None, 1), (1, 1, None, 1), (0, 1, None, 1),
    (64, 4, None, 4), (1000, 64, None, 3), (16, 2, None, 2),
    (195, 2, 3, 3), (2, 2, 5, 5),  # given: as given
])
def test_batches_per_task(n_batches, actors, given, expected):
    assert RayEngine(task_batches=given).batches_per_task(n_batches, actors) == expected


@pytest.mark.parametrize("actors, cpus, n_chunks, expected", [
    (None, 6.0, 10, 6), (None, 6.0, 4, 4), (None, None, 10, 1), (None, 0.0, 10, 1), (None, 6.0, 0, 1),
    (2, 6.0, 10, 2), (8, 6.0, 5, 5),
])
def test_n_actors_the_given_or_the_clusters_cpus_at_most_one_per_chunk(engine, actors, cpus, n_chunks, expected):
    engine.actors, engine._ray = actors, _FakeRay(cpus=cpus)
    assert engine.n_actors(n_chunks) == expected


# ------------------------------------------------------------------------------------------------
# an actor's tasks, the table rows they send back, the driver's chunks


def _task(source, rows, task, task_rows):
    """Task ``task``'s block as an actor receives it (batch_size=1, numpy format)."""
    return {"part": np.array([_task_part(source, rows, task * task_rows, task_rows)], dtype=object)}


def test_a_task_carries_its_rows_of_the_source_and_nothing_else(tmp_path):
    folder = tmp_path / "images"
    write_class_folder(folder, per_class=4)
    source = open_source(folder)
    rows = np.array([5, 1, 7, 0, 6, 2])
    first, requested, sub = pickle.loads(_task_part(source, rows, 4, 4))  # the short last task of 4 rows
    assert first == 4 and requested.tolist() == [6, 2] and requested.dtype == np.int64
    assert sub.keys == [source.keys[6], source.keys[2]] and sub.paths == [source.paths[6], source.paths[2]]
    assert sub.labels.tolist() == source.labels[[6, 2]].tolist()
    whole = len(pickle.dumps(source))
    assert len(_task_part(source, rows, 0, 1)) < whole / 2  # a one-row task is far smaller than the listing
    array = ArraySource(np.arange(40, dtype=np.uint8).reshape(10, 1, 2, 2))
    first, requested, sub = pickle.loads(_task_part(array, np.arange(10)[::-1].copy(), 3, 3))
    assert first == 3 and requested.tolist() == [6, 5, 4]
    np.testing.assert_array_equal(sub.images, array.images[[6, 5, 4]])


def _encoder(*args):
    """An actor's callable, made here: it sets torch to one thread (as in an actor), set back afterwards."""
    threads = torch.get_num_threads()
    try:
        encoder = _ChunkEncoder(*args)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    return encoder


def test_an_actor_decodes_and_encodes_its_task_batch_by_batch_as_the_local_engine(tmp_path):
    folder = tmp_path / "images"
    write_class_folder(folder, per_class=4)
    (folder / "circle" / "img_bad.png").write_bytes(b"not an image")
    source = open_source(folder)
    pre = infer_preprocess(source)
    bad = source.keys.index("circle/img_bad.png")
    calls = []

    def transform(images):
        calls.append(len(images))
        feats = pixels(images)
        return feats, {"mean": feats.mean(axis=1), "pair": np.stack([feats[:, 0], feats[:, 1]], axis=1)}

    good = [i for i in range(len(source)) if i != bad]
    rows = np.array([good[7], good[1], bad, good[5], good[0], good[4], good[2], good[6], good[3]])  # plan order
    encoder = _encoder(pre, transform, 2)  # batches of 2; tasks of 4 rows, each carrying its rows of the source
    tasks = [_task(source, rows, t, 4) for t in range(3)]
    local = list(iter_batches(source, pre, batch_size=2, workers=0, indices=rows, transform=transform))
    calls.clear()
    second = encoder(tasks[1])  # rows[4:8]
    assert calls == [2, 2]
    assert set(second) == {"at", "row", "ok", "reason", "features", "extra:mean", "extra:pair"}
    assert second["at"].tolist() == [4, 5, 6, 7] and second["row"].tolist() == rows[4:8].tolist()
    assert second["ok"].tolist() == [True] * 4 and second["reason"].tolist() == [""] * 4
    first = encoder(tasks[0])
    assert first["at"].tolist() == [0, 1, 2, 3] and first["ok"].tolist() == [True, True, False, True]
    assert first["reason"][2] == local[1].skipped[0][1] and first["reason"][2] != ""
    calls.clear()
    last = encoder(tasks[2])  # the short last task
    assert calls == [1] and last["at"].tolist() == [8] and last["row"].tolist() == rows[8:].tolist()

    order = _InOrder(len(rows), 2)
    got = list(order.add(last)) + list(order.add(second)) + list(order.add(first))
    order.check_complete()
    assert len(got) == len(local) == 5
    for mine, theirs in zip(got, local):
        assert mine.indices.tolist() == theirs.indices.tolist() and mine.skipped == theirs.skipped
        np.testing.assert_array_equal(mine.output[0], theirs.output[0])
        assert mine.output[1].keys() == theirs.output[1].keys()
        for name in theirs.output[1]:
            np.testing.assert_array_equal(mine.output[1][name], theirs.output[1][name])


def test_an_actor_asks_for_batches_of_the_given_size_also_above_the_default_256():
    source = ArraySource(np.arange(700 * 4, dtype=np.uint8).reshape(700, 2, 2))
    pre = infer_preprocess(source)
    rows = np.arange(700)[::-1].copy()
    sizes = []

    def transform(images):
        sizes.append(len(images))
        return pixels(images), {}

    encoder = _encoder(pre, transform, 300)
    table = encoder(_task(source, rows, 1, 600))
    assert sizes == [100] and table["at"].tolist() == list(range(600, 700))
    assert table["row"].tolist() == list(range(99, -1, -1))
    sizes.clear()
    table = encoder(_task(source, rows, 0, 600))
    assert sizes == [300, 300] and table["row"].tolist() == rows[:600].tolist()
    np.testing.assert_array_equal(table["features"], pixels(torch.from_numpy(source.images[rows[:600]])))


def test_columns_one_row_per_requested_row_zeros_where_it_did_not_decode():
    requested = np.array([7, 3, 9], dtype=np.int64)
    batch = Batch(np.array([7, 9]), None, [(3, "truncated")],
                  (np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), {"s": np.array([5, 6], np.int16)}))
    cols = _columns(10, requested, batch)
    assert sorted(cols) == ["at", "extra:s", "features", "ok", "reason", "row"]
    assert cols["at"].dtype == np.int64 and cols["at"].tolist() == [10, 11, 12]
    assert cols["row"] is requested and cols["ok"].tolist() == [True, False, True]
    assert cols["reason"].dtype == object and cols["reason"].tolist() == ["", "truncated", ""]
    assert cols["features"].dtype == np.float32 and cols["features"].tolist() == [[1, 2], [0, 0], [3, 4]]
    assert cols["extra:s"].dtype == np.int16 and cols["extra:s"].tolist() == [5, 0, 6]
    none = _columns(0, np.array([4, 2]), Batch(np.array([], np.int64), None, [(4, "a"), (2, "b")],
                                               (np.zeros((0, 3), np.float64), {})))
    assert none["reason"].tolist() == ["a", "b"] and none["features"].shape == (2, 3)
    assert none["features"].dtype == np.float64 and not none["features"].any()


def test_spread_puts_the_values_where_ok_and_zeros_elsewhere():
    out = _spread(np.array([[1, 2], [3, 4]], np.uint8), np.array([False, True, False, True]))
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0], [1, 2], [0, 0], [3, 4]]


def _table(at, rows, ok, **extra):
    n = len(at)
    cols = {"at": np.asarray(at, np.int64), "row": np.asarray(rows, np.int64), "ok": np.asarray(ok, bool),
            "reason": np.array(["" if o else f"bad {r}" for r, o in zip(rows, ok)], dtype=object),
            "features": np.asarray(rows, np.float32)[:, None] * np.ones((n, 2), np.float32)}
    cols.update({f"extra:{k}": np.asarray(v) for k, v in extra.items()})
    return cols


def test_batch_of_pieces_in_any_order_is_the_chunk_in_plan_order():
    pieces = [_table([5, 3], [50, 30], [True, False], s=[5.0, 0.0]), _table([4], [40], [True], s=[4.0])]
    b = _batch(pieces)
    assert b.indices.dtype == np.int64 and b.indices.tolist() == [40, 50] and b.images is None
    assert b.skipped == [(30, "bad 30")] and type(b.skipped[0][0]) is int and type(b.skipped[0][1]) is str
    feats, extras = b.output
    assert feats.tolist() == [[40, 40], [50, 50]] and feats.flags.c_contiguous
    assert list(extras) == ["s"] and extras["s"].tolist() == [4.0, 5.0] and extras["s"].flags.c_contiguous
    # ok that came back as integers (a table through Arrow) is still a mask, not indices
    ints = _batch([dict(_table([0, 1, 2], [9, 8, 7], [True, False, True]), ok=np.array([1, 0, 1]))])
    assert ints.indices.tolist() == [9, 7] and ints.skipped == [(8, "bad 8")]


def test_chunks_are_yielded_once_whole_and_in_plan_order_whatever_comes_back():
    """What the driver does with the rows coming back: a retried task's copy, a chunk split or early, one missing."""
    rows = np.array([7, 3, 9, 1, 5])  # plan order: source rows 7, 3, 9, 1, 5; chunks of 2: (7, 3) (9, 1) (5,)

    def chunk(c, skipped=()):
        requested = rows[2 * c:2 * c + 2]
        ok = np.array([r for r in requested if r not in skipped])
        out = (ok[:, None] * np.ones((1, 3), np.float32), {"neg_elbo": ok.astype(np.float32)})
        return _columns(2 * c, requested, Batch(ok, None, [(r, f"bad {r}") for r in skipped], out))

    def cut(block, part):
        return {k: v[part] for k, v in block.items()}

    order = _InOrder(len(rows), 2)
    assert (order.n_rows, order.batch_size, order.n_chunks, order.next) == (5, 2, 3, 0)
    assert order.received.dtype == bool and order.received.tolist() == [False] * 5 and order.pieces == {}
    assert [order._span(c) for c in range(3)] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    first, second, third = chunk(0), chunk(1, skipped=(9,)), chunk(2)
    got = list(order.add(third)) + list(order.add(cut(second, slice(1, 2))))  # chunk 0 not there yet: nothing
    assert got == [] and sorted(order.pieces) == [1, 2]
    got = list(order.add(first)) + list(order.add(first))  # a copy: dropped
    got += list(order.add(cut(second, slice(0, 1)))) + list(order.add(second))
    order.check_complete()
    assert order.pieces == {} and order.next == 3
    assert [b.indices.tolist() for b in got] == [[7, 3], [1], [5]]
    assert [b.skipped for b in got] == [[], [(9, "bad 9")], []]
    assert got[1].output[0].tolist() == [[1, 1, 1]] and got[2].output[1]["neg_elbo"].tolist() == [5]

    short = _InOrder(len(rows), 2)
    assert [b.indices.tolist() for b in short.add(first)] == [[7, 3]]
    with pytest.raises(EngineError, match=r"^the Ray pipeline ended without 3 of the 5 rows asked for; the rows "
                                          "committed so far are kept: finish with --resume$"):
        short.check_complete()


def test_a_block_of_several_chunks_and_a_partial_copy():
    order = _InOrder(2500, 1000)  # chunks of 1000, 1000, 500
    whole = _table(np.arange(2500), np.arange(2500) + 10_000, np.ones(2500, bool))
    got = list(order.add({k: v[:1500] for k, v in whole.items()}))  # chunk 0 whole, half of chunk 1
    assert [len(b) for b in got] == [1000] and order.next == 1
    with pytest.raises(EngineError, match="ended without 1,000 of the 2,500 rows asked for"):
        order.check_complete()
    got = list(order.add({k: v[1000:] for k, v in whole.items()}))  # a copy of 500 rows with the 1000 missing
    assert [len(b) for b in got] == [1000, 500]
    assert got[0].indices.tolist() == list(range(11_000, 12_000))  # each row once, in order
    assert got[1].indices.tolist() == list(range(12_000, 12_500))
    order.check_complete()
    assert list(order.add({k: v[:0] for k, v in whole.items()})) == []  # an empty block: nothing


def test_nothing_asked_for_is_complete_at_once():
    order = _InOrder(0, 4)
    assert order.n_chunks == 0 and list(order.add(_table([], [], []))) == []
    order.check_complete()


@pytest.mark.parametrize("message, expected", [
    ("The actor died because of an error raised in its creation task, ActorDiedError\n\n  ModuleNotFoundError: No "
     "module named 'cvae_features'  \n\n",
     "a Ray actor could not start (ModuleNotFoundError: No module named 'cvae_features'): every node of the cluster "
     "needs cvae-features and its dependencies, the version this driver runs; the rows committed so far are kept"),
    ("The actor died unexpectedly before finishing this task.\n\tclass_name: _ChunkEncoder\n\tpid: 4242\n"
     "\tworker exit type: SYSTEM_ERROR " + "x" * 400,
     "a Ray worker died more than 3 times on the same rows (killed, out of memory, its node lost, or a file that "
     "crashes the decoder; the Ray logs say which): " + ("worker exit type: SYSTEM_ERROR " + "x" * 400)[:300]
     + "; the rows committed so far are kept: finish with --resume"),
    ("", "a Ray worker died more than 3 times on the same rows (killed, out of memory, its node lost, or a file that "
         "crashes the decoder; the Ray logs say which): RuntimeError; the rows committed so far are kept: finish "
         "with --resume"),
])
def test_actor_death_is_one_line_naming_its_last_cause(message, expected):
    assert _actor_death(RuntimeError(message)) == expected


@pytest.mark.parametrize("n, encoded", [(0, [0]), (10, [10]), (126, [126]), (127, [127, 0]), (128, [127, 1]),
                                        (254, [127, 127]), (255, [127, 128, 1]), (1337, [127, 186, 9])])
def test_hpack_lengths_use_the_7_bit_prefix_integer(n, encoded):
    from cvae_features.ray_engine import _hpack_length

    assert _hpack_length(n) == bytes(encoded)  # RFC 7541 5.1 (1337 = 127 + 58 + 9 * 128)


def test_a_host_name_too_long_to_look_up_is_one_line():
    address = "x" * 70 + ".example:6379"  # a DNS label of at most 63 characters: Python's idna codec refuses it
    with pytest.raises(ConfigError) as err:
        check_address(address, timeout=1)
    assert str(err.value).startswith(f"cannot reach a Ray cluster at --ray-address {address}: encoding with 'idna'")
    assert "\n" not in str(err.value)
