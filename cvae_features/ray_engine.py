"""The Ray engine: decode and encode a plan's rows on a Ray cluster, hand them back in plan order.

``cvae extract ... --engine ray`` runs the same plan as the local engine, but the work of
:func:`cvae_features.data.iter_batches` (decoding, then the featurizer's batch call) runs in a
Ray Data actor pool: the pending plan rows are cut into tasks of a few batches of ``batch_size``
rows (up to :data:`MAX_BATCHES_PER_TASK`, at least four tasks per actor: Ray's cost per task made
one-batch tasks run at half the local engine's rate, measured in benchmarks/bench_scale.py), a
dataset holds one task number per block, and ``map_batches`` sends each task to one actor. Every
actor builds its featurizer once (in ``__init__``, one torch thread, one CPU) and decodes its
tasks batch by batch with the data layer's own code, so a file fails (or not) for the same reason
in both engines. The driver receives the batches ("chunks") in plan order and yields
:class:`~cvae_features.data.Batch` objects like ``iter_batches`` with a ``transform``; the caller
commits them with the one store writer (why one writer rather than shards joined at the end:
docs/scaling.md, measured).

Exactly once: an actor that dies (killed, out of memory, its node lost) is restarted and its
task retried by Ray (``max_restarts`` / ``max_task_retries``); a chunk is only ever yielded
whole, once (a copy delivered again by a retry is dropped), and a chunk that never came back
stops the run with an error, so a store never misses or repeats a row; the rows committed stay
and ``--resume`` finishes. A driver that dies leaves a store that ``--resume`` finishes (with
either engine).

Ray is an optional dependency (``pip install "cvae-features[ray]"``) imported only here, and only
when the engine is used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import time
import warnings
from typing import Iterator, Optional

import numpy as np

from .errors import ConfigError, EngineError, MissingExtraError

__all__ = ["RayEngine", "import_ray", "check_address", "RAY_EXTRA", "MAX_RETRIES"]

RAY_EXTRA = 'pip install "cvae-features[ray]"'
MAX_BATCHES_PER_TASK = 8  # a Ray task encodes up to this many batches: fewer tasks, less of Ray's per-task cost
MAX_RETRIES = 3  # restarts of one actor and retries of one chunk: a file that kills its decoder every time must stop
_PROBE_SECONDS = 5.0
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_GCS_CALL = "/ray.rpc.NodeInfoGcsService/GetClusterId"  # any reply (even an error status) is a gRPC server's
_EXTRA = "extra:"  # column prefix of the featurizer's extra outputs


def import_ray():
    """The ``ray`` module with Ray Data, or a one-line MissingExtraError naming the extra that installs it."""
    try:
        import ray
        import ray.data  # noqa: F401  (its own dependencies: pyarrow, pandas)
    except ImportError as err:
        raise MissingExtraError(f"--engine ray needs Ray Data, which is not installed ({err}): {RAY_EXTRA}") from None
    return ray


def check_address(address: str, timeout: float = _PROBE_SECONDS, *, given_as: str = "--ray-address") -> None:
    """ConfigError within ``timeout`` seconds unless a gRPC server (a Ray head's GCS) answers at ``address``.

    ``ray.init`` waits a minute or more on an address where nothing answers (20 s where a proxy
    answers for it); this probe fails at once on a refused connection, an unknown host, a web
    server or a proxy, and after ``timeout`` seconds on a silent host. It makes one gRPC call
    (``GetClusterId``) and only checks that an HTTP/2 ``:status 200`` comes back.
    ``"auto"`` (the cluster started on this machine by ``ray start``) is left to Ray, which fails fast.
    ``given_as`` names where the address came from in the messages.
    """
    if address in ("auto", "local"):
        return
    if address.startswith("ray://"):
        raise ConfigError(f"{given_as} {address}: Ray Client addresses are not supported; run cvae extract on "
                          "the cluster (ray job submit) and give the head's GCS address HOST:PORT (port 6379 by "
                          "default), or auto")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"invalid {given_as} {address!r}: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379) "
                          "or auto")
    try:
        answered = _grpc_answers(host.strip("[]"), int(port), timeout)
    except (OSError, UnicodeError) as err:  # UnicodeError: a host name label longer than 63 characters
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise ConfigError(f"cannot reach a Ray cluster at {given_as} {address}: {reason} (is `ray start --head` "
                          "running there?)") from None
    if not answered:
        raise ConfigError(f"{given_as} {address} answers, but not as a Ray cluster (not its GCS port; the "
                          "dashboard port 8265 is not it): give the head's GCS address, port 6379 by default")


def _hpack_length(n: int) -> bytes:
    """A string length as HPACK writes it: an integer with a 7-bit prefix, the Huffman bit off (RFC 7541, 5.1)."""
    if n < 127:
        return bytes([n])
    out, n = [127], n - 127
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes(out + [n])


def _grpc_answers(host: str, port: int, timeout: float) -> bool:
    """Whether a gRPC call to ``host:port`` gets an HTTP/2 ``:status 200`` back; OSError if it cannot be made."""
    def frame(kind, flags, stream, payload=b""):
        return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload

    def header(index, value):  # HPACK: a literal value under a static-table name, not indexed
        value = value.encode()
        return (bytes([index]) if index < 15 else bytes([15, index - 15])) + _hpack_length(len(value)) + value

    headers = (b"\x83\x86" + header(4, _GCS_CALL) + header(1, f"{host}:{port}")  # POST, http, :path, :authority
               + header(31, "application/grpc") + b"\x00\x02te\x08trailers")
    call = _H2_PREFACE + frame(4, 0, 0) + frame(1, 0x4, 1, headers) + frame(0, 0x1, 1, bytes(5))  # empty message
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as conn:  # the send, too, within ``timeout``
        conn.sendall(call)
        buf = b""
        while time.monotonic() < deadline:
            conn.settimeout(max(deadline - time.monotonic(), 0.001))  # the whole exchange within ``timeout``
            data = conn.recv(65536)
            if not data:
                return False  # closed: not an HTTP/2 server
            buf += data
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                n, kind, flags = int.from_bytes(buf[:3], "big"), buf[3], buf[4]
                stream, payload, buf = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n], buf[9 + n:]
                if kind == 4 and not flags & 0x1:
                    conn.sendall(frame(4, 0x1, 0))  # acknowledge the server's settings
                elif kind == 7 or (stream == 1 and kind == 3):
                    return False  # GOAWAY, RST_STREAM
                elif stream == 1 and kind == 1:
                    if flags & 0x8:  # padded
                        payload = payload[1:len(payload) - payload[0]]
                    if flags & 0x20:  # with a priority
                        payload = payload[5:]
                    return payload[:1] == b"\x88"  # ':status 200' (static table), whatever the gRPC status
    raise TimeoutError("timed out")  # bytes kept coming, but no answer within ``timeout``


class RayEngine:
    """A connection to Ray that computes the batches of a plan there.

    Made cheaply and early: the constructor checks that Ray Data is installed and that the cluster
    answers (one-line errors, before any training or writing); Ray itself is joined on the first
    :meth:`iter_batches` (or ``with``) and left by :meth:`close`.

    Parameters
    ----------
    address : str or None
        None: the Ray this process already uses, else the one ``RAY_ADDRESS`` or ``ray start`` on
        this machine points to, else a local Ray started here (and stopped by :meth:`close`). A
        string is passed to ``ray.init(address=...)`` after :func:`check_address`.
    actors : int or None
        Actors of the pool (one CPU each); None: as many as the cluster has CPUs.
    task_batches : int or None
        Batches per Ray task; None: as many as leave every actor at least four tasks, at most
        :data:`MAX_BATCHES_PER_TASK` (each Ray task has a fixed cost of scheduling and hand-over;
        benchmarks/bench_scale.py measures the difference).

    Ray's own logs stay in its log folder (``/tmp/ray/session_latest/logs`` on the head); only its
    errors reach this terminal, as exceptions.
    """

    def __init__(self, address: Optional[str] = None, *, actors: Optional[int] = None,
                 task_batches: Optional[int] = None):
        if task_batches is not None and task_batches < 1:
            raise ConfigError(f"invalid task_batches={task_batches!r}: expected an integer >= 1")
        self.address, self.actors, self.task_batches = address, actors, task_batches
        self._ray = import_ray()
        self._given_as, env = ("--ray-address", None) if address else ("RAY_ADDRESS", _env_address())
        if address or env:
            check_address(address or env, given_as=self._given_as)
        self._connected = self._started = False

    def __enter__(self) -> "RayEngine":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        """Join Ray (see the class notes); a no-op when joined already."""
        ray = self._ray
        if self._connected:
            return
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # it logs each execution's start and plan
        if ray.is_initialized():
            if self.address not in (None, "auto") and not _same_address(self.address, _current_address(ray)):
                raise ConfigError(f"--ray-address {self.address}: this process is already connected to the Ray "
                                  f"cluster at {_current_address(ray)}")
        else:
            # Ray's C++ core logs to this terminal: an ERROR about every actor of a data pipeline (ray issue 53727,
            # harmless here: the pipeline holds its arguments) and, at start, a line saying that it was told not to
            with _environ(RAY_BACKEND_LOG_LEVEL="fatal"), _stderr_silenced():
                try:
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                             logging_level=logging.ERROR)
                except ConnectionError as err:
                    where = self.address or _env_address()
                    cluster = f"a Ray cluster at {self._given_as} {where}" if where else "Ray"
                    raise ConfigError(f"cannot connect to {cluster}: {err}") from None
            self._started = True
        self._connected = True

    def close(self) -> None:
        """Leave Ray; a local Ray that this engine started stops."""
        if self._started:
            self._ray.shutdown()
        self._connected = self._started = False

    def n_actors(self, n_chunks: int) -> int:
        """Actors of the pool for ``n_chunks`` chunks: ``actors``, else the cluster's CPUs; at most one per chunk."""
        n = self.actors if self.actors is not None else int(self._ray.cluster_resources().get("CPU", 1))
        return max(1, min(n, n_chunks))

    def batches_per_task(self, n_batches: int, n_actors: int) -> int:
        """Batches one Ray task encodes: ``task_batches``, else enough for four tasks per actor, at most
        :data:`MAX_BATCHES_PER_TASK` and at least one."""
        if self.task_batches is not None:
            return self.task_batches
        return max(1, min(MAX_BATCHES_PER_TASK, n_batches // (4 * n_actors)))

    def iter_batches(self, source, pre, transform, *, indices, batch_size: int) -> Iterator:
        """Yield ``indices``' rows of ``source`` as :class:`~cvae_features.data.Batch` objects, in order.

        Like :func:`~cvae_features.data.iter_batches` with ``transform``: one Batch per ``batch_size``
        chunk of ``indices`` (a chunk whose files all failed too), ``output = transform(images)`` of
        the rows decoded OK, ``skipped`` the (row, reason) of the others. ``images`` is None: the
        pixels stay on the cluster.
        """
        self.connect()
        ray = self._ray
        rows = np.asarray(indices, dtype=np.int64)
        n_batches = -(-len(rows) // batch_size)
        if n_batches == 0:
            return
        actors = self.n_actors(n_batches)
        task_rows = batch_size * self.batches_per_task(n_batches, actors)
        n_tasks = -(-len(rows) // task_rows)
        # one block per task, holding its rows of the source: an actor never holds the whole listing
        parts = [_task_part(source, rows, t * task_rows, task_rows) for t in range(n_tasks)]
        ds = ray.data.from_items([{"part": part} for part in parts], override_num_blocks=n_tasks)
        del parts
        with warnings.catch_warnings():
            # Ray 2.60 deprecates these per-call arguments without a replacement for them; without them (a later
            # Ray), its actor pools restart actors and retry their tasks without end (-1), still exactly once
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            ds = ds.map_batches(_ChunkEncoder, batch_size=1, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=min(actors, n_tasks)), num_cpus=1,
                                fn_constructor_args=(pre, transform, batch_size),
                                max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
        ds.context.execution_options.preserve_order = True  # plan order: the store is the local engine's
        ds.context.enable_progress_bars = False  # the caller has its own bar
        chunks = _InOrder(len(rows), batch_size)
        try:
            for block in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                yield from chunks.add(block)
        except ray.exceptions.RayActorError as err:  # a featurizer's own exception is not this: it propagates
            raise EngineError(_actor_death(err)) from None
        chunks.check_complete()


def _task_part(source, rows: np.ndarray, first: int, task_rows: int) -> bytes:
    """One task's share of the plan, pickled: (its first place in the run, its plan rows, the source's subset of
    those rows, in that order). Tasks carry their own rows so that no actor is sent the whole listing."""
    requested = rows[first:first + task_rows]
    return pickle.dumps((first, requested, source.subset(requested)))


class _ChunkEncoder:
    """Ray Data callable class: one per actor; decodes and encodes the tasks it is handed (a task: its rows of the
    source, see :func:`_task_part`, taken ``batch_size`` at a time, as the local engine does)."""

    def __init__(self, pre, transform, batch_size):
        import torch

        torch.set_num_threads(1)  # one CPU per actor: threads would only compete with the other actors
        self.pre, self.transform, self.batch_size = pre, transform, batch_size

    def __call__(self, batch: dict) -> dict:
        from .data import iter_batches

        (part,) = batch["part"]
        first, requested, sub = pickle.loads(part)
        parts = []
        for start in range(0, len(requested), self.batch_size):
            ask = np.arange(start, min(start + self.batch_size, len(requested)))  # rows of the subset
            (out,) = iter_batches(sub, self.pre, batch_size=len(ask), workers=0, indices=ask,
                                  transform=self.transform)
            parts.append(_columns(first + start, requested[ask], out, asked=ask))
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _columns(start: int, requested: np.ndarray, batch, asked=None) -> dict:
    """One table row per requested row: its place in the run (``at``), whether it decoded, its outputs (zeros
    when it did not) or its reason. ``asked``: the rows the batch was read with, when not ``requested`` itself
    (a task's subset numbers its rows from 0; ``requested`` are the plan's rows)."""
    n = len(requested)
    asked = requested if asked is None else asked
    ok = np.isin(asked, batch.indices)
    feats, extras = batch.output
    cols = {"at": np.arange(start, start + n, dtype=np.int64), "row": requested, "ok": ok,
            "reason": np.array([""] * n, dtype=object), "features": _spread(feats, ok)}
    cols.update({_EXTRA + name: _spread(values, ok) for name, values in extras.items()})
    position = {int(r): j for j, r in enumerate(asked)}
    for row, reason in batch.skipped:
        cols["reason"][position[int(row)]] = reason
    return cols


def _spread(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    full = np.zeros((len(ok), *values.shape[1:]), dtype=values.dtype)
    full[ok] = values
    return full


class _InOrder:
    """Collects the table rows coming back from the cluster and yields whole chunks as Batches, in plan order.

    A row already received (a copy from a retried task) is dropped, so a chunk is yielded once, whole.
    """

    def __init__(self, n_rows: int, batch_size: int):
        self.batch_size, self.n_rows = batch_size, n_rows
        self.n_chunks = -(-n_rows // batch_size)
        self.received = np.zeros(n_rows, dtype=bool)
        self.pieces = {}  # chunk -> [table pieces]
        self.next = 0

    def add(self, block: dict):
        fresh = ~self.received[block["at"]]
        if not fresh.all():
            block = {k: v[fresh] for k, v in block.items()}
        self.received[block["at"]] = True
        chunk_of = block["at"] // self.batch_size
        for chunk in np.unique(chunk_of):
            self.pieces.setdefault(int(chunk), []).append({k: v[chunk_of == chunk] for k, v in block.items()})
        while self.next < self.n_chunks and self.received[self._span(self.next)].all():
            yield _batch(self.pieces.pop(self.next))
            self.next += 1

    def _span(self, chunk: int) -> slice:
        return slice(chunk * self.batch_size, min((chunk + 1) * self.batch_size, self.n_rows))

    def check_complete(self) -> None:
        if self.next < self.n_chunks:
            missing = int((~self.received).sum())
            raise EngineError(f"the Ray pipeline ended without {missing:,} of the {self.n_rows:,} rows asked for; "
                              "the rows committed so far are kept: finish with --resume")


def _actor_death(err) -> str:
    """One line on a Ray actor lost for good: one that could not start, or one that died beyond its retries."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = lines[-1][:300] if lines else type(err).__name__
    if "creation task" in str(err):
        return (f"a Ray actor could not start ({cause}): every node of the cluster needs cvae-features and its "
                "dependencies, the version this driver runs; the rows committed so far are kept")
    return (f"a Ray worker died more than {MAX_RETRIES} times on the same rows (killed, out of memory, its node lost, "
            f"or a file that crashes the decoder; the Ray logs say which): {cause}; the rows committed so far are "
            "kept: finish with --resume")


def _batch(pieces: list):
    """The Batch of one chunk from its table pieces."""
    from .data import Batch

    cols = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    order = np.argsort(cols["at"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    ok = cols["ok"].astype(bool)
    extras = {k[len(_EXTRA):]: np.ascontiguousarray(v[ok]) for k, v in cols.items() if k.startswith(_EXTRA)}
    skipped = [(int(r), str(reason)) for r, reason in zip(cols["row"][~ok], cols["reason"][~ok])]
    return Batch(cols["row"][ok].astype(np.int64), None, skipped,
                 (np.ascontiguousarray(cols["features"][ok]), extras))


def _env_address() -> Optional[str]:
    return os.environ.get("RAY_ADDRESS") or None


def _current_address(ray) -> str:
    return ray.get_runtime_context().gcs_address


def _same_address(a: str, b: str) -> bool:
    def resolved(address):
        host, _, port = address.rpartition(":")
        try:
            return socket.gethostbyname(host.strip("[]")), port
        except OSError:
            return host, port

    return resolved(a) == resolved(b)


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 to /dev/null for the duration: what Ray's C++ code writes there too."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _environ(**values):
    """Set environment variables the user has not set, for the duration (Ray reads some at ``init``)."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)
