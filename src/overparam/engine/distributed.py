"""Run experiments on a Dask cluster: a ``LocalCluster`` of worker processes or a scheduler address.

The unit of work is an experiment and, inside it, every independent piece it declares through its
run context (``ctx.cached_all`` pieces and ``ctx.map`` items).  Each experiment's ``run`` executes on
a worker with a :class:`RemoteContext`; its independent pieces are submitted to the cluster from
there (the worker task secedes while it waits, so the pieces spread over every worker), each with a
:class:`RemoteContext` of its own whose log lines and nested ``ctx.cached`` results also reach the
client.  A ``ctx.cached`` sub-result runs inside the task that asks for it.  Every finished piece is
sent back to the client through a Dask queue, and the client alone writes the SQLite store, piece by
piece: an interrupted run keeps every finished piece and a rerun resumes from them.

Workers need the ``overparam`` package (the same version) and, for the dataset experiments, the data
directory under the same ``OVERPARAM_DATA`` path; a ``LocalCluster`` inherits both from the client.
Results do not depend on the worker: every random draw is seeded from the config, and each task runs
with the experiment's declared intra-op thread count.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from overparam._threads import intra_op_threads
from overparam.engine.experiment import Experiment, Metrics, RunContext
from overparam.engine.pieces import Piece, item_pieces
from overparam.engine.store import Store, config_hash, to_jsonable

T = TypeVar("T")
RETRIES = 1
_CLUSTERS: dict[int, Any] = {}  # id(client) -> the LocalCluster it started


def open_client(workers: int | None = None, scheduler: str | None = None) -> Any:
    """A ``distributed.Client``: on a new ``LocalCluster`` of ``workers`` one-thread processes, or
    connected to the scheduler at ``scheduler`` (``"tcp://host:8786"``).  Closing the client closes
    a cluster it started."""
    if (workers is None) == (scheduler is None):
        raise ValueError(
            f"give exactly one of `workers` and `scheduler`, got {workers!r} and {scheduler!r}"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise ValueError(f"`workers` must be an integer >= 1, got {workers!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"`workers` must be an integer >= 1, got {workers!r}")
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:  # pragma: no cover - dask is a dependency
        raise ValueError(
            "distributed execution needs `dask[distributed]`: pip install distributed"
        ) from error
    if scheduler is not None:
        try:
            return Client(scheduler, timeout="20s")
        except OSError as error:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler!r}: {error}") from None
        except (ValueError, TypeError) as error:  # an address distributed cannot parse
            raise ValueError(
                f"`scheduler` must be an address such as tcp://host:8786, got {scheduler!r} "
                f"({error})"
            ) from None
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # any free port: never collides with another cluster
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    _CLUSTERS[id(client)] = cluster  # closed with the client
    return client


def close_client(client: Any) -> None:
    """Close ``client`` and the ``LocalCluster`` it started, if any."""
    cluster = _CLUSTERS.pop(id(client), None)
    client.close()
    if cluster is not None:
        cluster.close()


class RemoteWarning(UserWarning):
    """A warning raised inside a task on a worker, issued again on the client."""


@dataclass
class _Message:
    """One thing a worker tells the client: a finished piece, a log line, or new pieces to expect."""

    kind: str  # "piece", "log", "warning" or "expect"
    store_kind: str = ""
    config: Any = None
    metrics: Any = None
    seconds: float = 0.0
    text: str = ""
    count: int = 0


class RemoteContext:
    """The :class:`~overparam.engine.experiment.RunContext` of a run executing on a worker.

    ``known`` maps the config hash of every piece the client's store already holds for this
    experiment to its metrics; new pieces are computed and sent to the client's queue.
    """

    def __init__(
        self, name: str, known: Mapping[str, Any], queue_name: str, force: bool, threads: int | None
    ) -> None:
        from distributed import Queue

        self.name, self.known, self.force, self.threads = name, dict(known), force, threads
        self.queue_name, self.queue = queue_name, Queue(queue_name)

    def _lookup(self, kind: str, config: Mapping[str, Any]) -> Any | None:
        return None if self.force else self.known.get(config_hash(kind, config))

    def _send(self, message: _Message) -> None:
        self.queue.put(message)

    def progress(self, items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
        yield from items

    def log(self, message: str) -> None:
        self._send(_Message("log", text=f"[{self.name}] {message}"))

    def warn(self, texts: Sequence[str]) -> None:
        """Pass warnings raised on a worker to the client, where they are issued again."""
        for text in texts:
            self._send(_Message("warning", text=text))

    def cached(
        self, key: str, config: Mapping[str, Any], compute: Callable[[], Metrics]
    ) -> Metrics:
        kind = f"{self.name}/{key}"
        found = self._lookup(kind, config)
        if found is not None:
            return found
        self._send(_Message("expect", count=1))
        start = time.perf_counter()
        clean = to_jsonable(compute())
        self._send(_Message("piece", kind, to_jsonable(config), clean, time.perf_counter() - start))
        return clean

    def map(
        self,
        key: str,
        function: Callable[[Any], Metrics],
        items: Sequence[Any],
        config: Mapping[str, Any],
        desc: str = "",
    ) -> list[Metrics]:
        return self.cached_all(item_pieces(key, function, items, config), desc=desc or key)

    def cached_all(self, pieces: Sequence[Piece], desc: str = "") -> list[Metrics]:
        """The stored pieces from ``known``; every missing one a task of its own (with a
        :class:`RemoteContext` of its worker), sent to the client as it finishes."""
        from distributed import as_completed, worker_client

        kinds = [f"{self.name}/{p.key}" for p in pieces]
        results: list[Any] = [self._lookup(k, p.config) for k, p in zip(kinds, pieces, strict=True)]
        todo = [i for i, r in enumerate(results) if r is None]
        if not todo:
            return results
        self._send(_Message("expect", count=len(todo)))
        scope = _Scope(self.name, self.queue_name, self.force, self.threads)
        errors = []
        with worker_client() as client:
            [known] = client.scatter([self.known], hash=False)
            futures = {
                client.submit(
                    _compute_piece,
                    pieces[i].compute,
                    scope,
                    known,
                    pure=False,
                    retries=RETRIES,
                    key=f"piece-{self.name}-{pieces[i].key}-{uuid.uuid4().hex[:8]}",
                ): i
                for i in todo
            }
            for future in as_completed(futures):
                i = futures[future]
                try:
                    clean, seconds, texts = future.result()
                except Exception as error:  # the others still finish and are kept
                    errors.append(f"{pieces[i].name}: {type(error).__name__}: {error}")
                    continue
                self.warn(texts)
                results[i] = clean
                config = to_jsonable(pieces[i].config)
                self._send(_Message("piece", kinds[i], config, clean, seconds))
        if errors:
            raise RuntimeError(
                f"{len(errors)} piece(s) of {self.name} failed: " + "; ".join(errors)
            )
        return results


@dataclass(frozen=True)
class _Scope:
    """What a piece's task needs to build the :class:`RemoteContext` of its worker."""

    name: str
    queue_name: str
    force: bool
    threads: int | None


def _compute_piece(
    compute: Callable[[RunContext], Metrics], scope: _Scope, known: Mapping[str, Any]
) -> tuple[Any, float, list[str]]:
    """Executed on a worker: one piece, its log lines and nested pieces sent to the client."""
    context = RemoteContext(scope.name, known, scope.queue_name, scope.force, scope.threads)
    start = time.perf_counter()
    with intra_op_threads(scope.threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        clean = to_jsonable(compute(context))
    return clean, time.perf_counter() - start, _texts(caught)


def _texts(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """The distinct warning messages of a task, in order, for the client to show."""
    return list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))


def _remote_run(
    experiment: Experiment,
    config: dict[str, Any],
    known: dict[str, Any],
    queue_name: str,
    force: bool,
) -> tuple[Any, float]:
    """Executed on a worker: the experiment's ``run`` with a :class:`RemoteContext`."""
    context = RemoteContext(experiment.name, known, queue_name, force, experiment.threads)
    start = time.perf_counter()
    with intra_op_threads(experiment.threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        raw = experiment.run(dict(config), context)
    context.warn(_texts(caught))
    return to_jsonable(raw), time.perf_counter() - start


@dataclass
class Job:
    """One experiment run to compute remotely: the experiment, its store kind and resolved config."""

    experiment: Experiment
    kind: str
    config: dict[str, Any]
    on_done: Callable[[Any, float], None]
    on_error: Callable[[BaseException], None]
    future: Any = field(default=None)


def run_jobs(
    client: Any, store: Store, jobs: Sequence[Job], force: bool, bar: Any | None = None
) -> None:
    """Compute ``jobs`` on ``client``'s cluster; write every finished piece and run into ``store``.

    ``on_done(metrics, seconds)`` is called on the client for each finished run (after its metrics
    are stored), ``on_error(error)`` for a run that failed after its retries; the others go on.
    ``bar`` (a tqdm bar) counts runs and pieces.  On ``KeyboardInterrupt`` the pending tasks are
    cancelled; what finished is already stored.
    """
    from distributed import Queue, wait

    queue_name = f"overparam-{uuid.uuid4().hex}"
    queue = Queue(queue_name, client=client)
    pending: dict[Any, Job] = {}
    seen: set[str] = set()
    for job in jobs:
        name = job.experiment.name
        known = {} if force else store.prefixed(f"{name}/")
        job.future = client.submit(
            _remote_run,
            job.experiment,
            job.config,
            known,
            queue_name,
            force,
            pure=False,
            retries=RETRIES,
            key=f"{name}-{config_hash(job.kind, job.config)}-{uuid.uuid4().hex[:6]}",
        )
        pending[job.future] = job
    try:
        while pending:
            _drain(queue, store, bar, seen)
            try:
                done, _ = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            _drain(queue, store, bar, seen)
            for future in done:
                job = pending.pop(future)
                try:
                    metrics, seconds = future.result()
                except Exception as error:
                    job.on_error(error)
                else:
                    job.on_done(store.put(job.kind, job.config, metrics, seconds), seconds)
                if bar is not None:
                    bar.update(1)
    except KeyboardInterrupt:
        client.cancel(list(pending))
        _drain(queue, store, bar, seen)
        raise


def _drain(queue: Any, store: Store, bar: Any | None, seen: set[str]) -> None:
    """Store every piece that arrived and print the log lines; never blocks."""
    while True:
        try:
            size = queue.qsize()
        except Exception:  # the scheduler is gone (shutdown)
            return
        if not size:
            return
        for message in queue.get(batch=size):
            _handle(message, store, bar, seen)


def _handle(message: _Message, store: Store, bar: Any | None, seen: set[str]) -> None:
    if message.kind == "piece":
        store.put(message.store_kind, message.config, message.metrics, message.seconds)
        if bar is not None:
            bar.update(1)
    elif message.kind == "expect" and bar is not None:
        bar.total = (bar.total or 0) + message.count
        bar.refresh()
    elif message.kind == "log":
        print(message.text, file=sys.stderr, flush=True)
    elif message.kind == "warning" and message.text not in seen:  # once per run_jobs call
        seen.add(message.text)
        warnings.warn(message.text, RemoteWarning, stacklevel=2)
