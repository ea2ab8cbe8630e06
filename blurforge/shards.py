"""Sharded, resumable jobs: reader → pure worker per shard → atomic writer.

Layout of an output directory ``OUT``::

    OUT/run.json                  the job's settings; a resume with other settings is refused
    OUT/manifest/shard-00000.parquet
    OUT/errors/shard-00000.parquet   (always written, possibly empty)
    OUT/stats/shard-00000.json       written LAST: its presence marks the shard done
    OUT/<images...>

A shard's work items and keys are fixed by the sorted inputs and the shard size, never by the
worker count or finishing order, so a killed run (even ``kill -9``) resumes by redoing only the
shards without a stats file, and its output equals an uninterrupted run's.

Distributors share one signature, ``distribute(worker, tasks, workers) -> iterator of statuses``
(``distribute_local``: this process or a process pool; ``distribute_ray``: Ray tasks): the worker
is a picklable top-level function ``worker(task) -> dict`` that returns a status instead of
raising into the pool. Because a shard's bytes depend only on its task, every backend and
worker count writes byte-identical output.

Progress: after each work item a worker calls :func:`report_progress` with its shard's running
counts (items done, pairs, errors). In this process (one worker) the call feeds the driver's bar
directly; in a local process pool it goes through a ``multiprocessing.Manager`` queue that the
driver drains on a helper thread, so the bar counts items and pairs while a shard runs. Ray
tasks do not report: under ``--backend ray`` the bar moves by a whole shard's items when the shard
finishes. Reports never change what a worker writes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator, Sequence

from blurforge.manifest import errors_table, parquet_bytes, rows_table
from blurforge.storage import Location

@dataclass(frozen=True)
class ShardTask:
    """One shard of work: picklable, self-contained."""

    shard: str  # "shard-00000"
    items: tuple  # the shard's work items, in a fixed order
    out: str  # output directory
    config: dict = field(default_factory=dict)  # job settings shared by every shard


OUTPUT_MARKERS = ("run.json", "manifest", "stats")  # what makes a folder a blurforge output


def is_output_dir(path: str | os.PathLike) -> bool:
    """Whether the local folder ``path`` is a synthesize/frames output (``run.json``, ``manifest/``
    and ``stats/`` inside): scans for inputs skip such folders, so outputs never become inputs."""
    p = os.fspath(path)
    return (os.path.isfile(os.path.join(p, "run.json")) and os.path.isdir(os.path.join(p, "manifest"))
            and os.path.isdir(os.path.join(p, "stats")))


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def make_tasks(items: Sequence, shard_size: int, out: str | os.PathLike, config: dict) -> list[ShardTask]:
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    return [
        ShardTask(shard_name(i // shard_size), tuple(items[i : i + shard_size]), str(out), config)
        for i in range(0, len(items), shard_size)
    ]


def shard_done(out: str | os.PathLike, shard: str) -> bool:
    """Whether ``shard``'s stats file (written last) exists in the output location ``out``."""
    return Location(out).exists(f"stats/{shard}.json")


def finish_shard(task: ShardTask, rows: list[dict], errors: list[dict], stats: dict) -> dict:
    """Write the shard's manifest and errors tables, then its stats file (the done marker)."""
    out = Location(task.out)
    out.write_bytes(f"manifest/{task.shard}.parquet", parquet_bytes(rows_table(rows), kind="manifest"))
    for e in errors:
        e.setdefault("shard", task.shard)
    out.write_bytes(f"errors/{task.shard}.parquet", parquet_bytes(errors_table(errors), kind="errors"))
    stats = {"shard": task.shard, "status": "done", "pairs": len(rows), "errors": len(errors), **stats}
    out.write_text(f"stats/{task.shard}.json", json.dumps(stats, sort_keys=True))
    return stats


# ------------------------------------------------------------------------------- live progress

_REPORT: Callable[[tuple], None] | None = None  # where report_progress sends (shard, items, pairs, errors)
_SHARD: str | None = None  # the shard this process is working on


def report_progress(items: int, pairs: int, errors: int) -> None:
    """Called by a shard worker after each work item with the shard's running counts: items
    done, pairs made, error rows. Feeds the driver's progress bar; a no-op when nothing listens
    (Ray tasks, ``--quiet``, direct calls of a worker). Never raises: progress is not output."""
    if _REPORT is None or _SHARD is None:
        return
    try:
        _REPORT((_SHARD, int(items), int(pairs), int(errors)))
    except Exception:  # noqa: BLE001 — a broken progress channel must not fail the shard
        pass


_MALLOC_TUNED = False


def reuse_freed_images() -> None:
    """Let glibc's malloc hand freed image-sized blocks (up to 32 MiB: a 1080p RGBA float frame)
    back to the next allocation instead of returning them to the OS.

    By default a block over 128 KiB is its own mapping: freeing it unmaps it, and the next frame
    of the same size is a fresh mapping whose every page faults and is zeroed by the kernel on
    first touch (≈ 2 ms per 1280×720 RGBA float image). Raising the mmap threshold to 32 MiB
    (glibc's documented maximum on 64-bit) and the trim threshold to 512 MiB keeps them in the
    heap. Once per process; a no-op where the C library is not glibc. Values are
    unaffected: every array the workers allocate with ``np.empty`` is written before it is read
    (the byte-identity tests compare against runs made with fresh, zeroed pages)."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD


def guarded(worker: Callable[[ShardTask], dict], task: ShardTask) -> dict:
    """Run ``worker`` on ``task``; an unexpected exception becomes a 'failed' status, not a crash."""
    global _SHARD
    reuse_freed_images()
    _SHARD = task.shard
    try:
        return worker(task)
    except Exception as exc:  # noqa: BLE001 — reported as data; the shard stays not-done
        return {
            "shard": task.shard,
            "status": "failed",
            "pairs": 0,
            "errors": len(task.items),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    finally:
        _SHARD = None


def _init_worker(progress_queue=None) -> None:
    """Pool initializer: the pool is the parallelism, so keep OpenCV single-threaded in each
    worker; send progress reports to ``progress_queue`` (a Manager queue) when given."""
    global _REPORT
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    if progress_queue is not None:
        _REPORT = progress_queue.put


def distribute_local(worker: Callable[[ShardTask], dict], tasks: Sequence[ShardTask], workers: int = 1,
                     progress_queue=None) -> Iterator[dict]:
    """Run shards in this process (workers <= 1) or a process pool; yields statuses as they finish.
    ``progress_queue``: a ``Manager().Queue()`` the pool's workers send their progress reports to
    (in this process, reports go wherever :func:`report_progress` was pointed)."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield guarded(worker, task)
        return
    # spawn, not fork: a forked child can deadlock on locks held by the parent's OpenCV/BLAS threads
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=(progress_queue,)) as pool:
        futures = [pool.submit(guarded, worker, task) for task in tasks]
        for fut in as_completed(futures):
            yield fut.result()


def check_run_config(out: str | os.PathLike, config: dict) -> None:
    """Record the job's settings in ``OUT/run.json``; refuse to resume with different ones."""
    loc = Location(out)
    text = json.dumps(config, sort_keys=True, indent=1)
    if loc.exists("run.json"):
        old = json.loads(loc.read_text("run.json"))
        if old != json.loads(text):
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            if "manifest_schema" in diff:
                raise ValueError(
                    f"{out}: holds a run of an older blurforge (manifest schema {old.get('manifest_schema', '1')}, "
                    "keys without the run seed) — finish it with that version, or choose a new --out"
                )
            if diff == ["png"]:
                raise ValueError(_png_mismatch(out, old["png"], config["png"]))
            raise ValueError(
                f"{out}: already holds a run with other settings ({', '.join(diff)}) — "
                "resume with the same command, or choose a new --out"
            )
        return
    loc.write_text("run.json", text)


def _png_mismatch(out, old: dict, new: dict) -> str:
    """Why a run's PNG settings cannot be resumed with ``new``, and the options that can."""
    compressor = old.get("compressor", "libdeflate")  # runs from before the choice used libdeflate
    options = f"--png-compressor {compressor} --png-level {old.get('level', 1)}"
    if compressor == new.get("compressor") and old.get("level") == new.get("level"):
        return (f"{out}: its PNGs were written by {old.get('encoder')}, this blurforge has {new.get('encoder')} — "
                "finish the run with that version (the bytes would differ, never the pixels), or choose a new --out")
    return f"{out}: its PNGs were written with {options} — resume with those options, or choose a new --out"


def _ray_guarded(worker: Callable[[ShardTask], dict], task: ShardTask) -> dict:
    _init_worker()
    return guarded(worker, task)


def ensure_ray(address: str | None = None, workers: int | None = None):
    """Connect to the Ray cluster at ``address`` (``auto``, ``ray://HOST:PORT``, ``HOST:PORT``), or
    start a local one with ``workers`` CPUs when no address is given; reuse an existing session.
    Returns the ``ray`` module."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "--backend ray needs Ray: PIP_CONSTRAINT=scripts/constraints.txt pip install -e '.[distributed]'"
        ) from exc
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers, **kwargs)
    return ray


def distribute_ray(
    worker: Callable[[ShardTask], dict], tasks: Sequence[ShardTask], workers: int = 1, progress_queue=None,
    address: str | None = None,
) -> Iterator[dict]:
    """Run shards as Ray tasks (one CPU each, at most ``workers`` at a time, like the local pool);
    yields statuses as they finish. Same signature and same outputs as :func:`distribute_local`;
    ``progress_queue`` is ignored (Ray tasks report nothing while they run: the driver's bar moves
    a shard at a time)."""
    ray = ensure_ray(address, workers)
    remote = ray.remote(num_cpus=1, max_retries=2)(_ray_guarded)
    queue = list(tasks)[::-1]
    in_flight: dict = {}
    limit = max(1, workers)
    while queue or in_flight:
        while queue and len(in_flight) < limit:
            task = queue.pop()
            in_flight[remote.remote(worker, task)] = task
        done, _ = ray.wait(list(in_flight), num_returns=1)
        task = in_flight.pop(done[0])
        try:
            yield ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 — a lost worker or node: the shard stays not-done
            yield {"shard": task.shard, "status": "failed", "pairs": 0, "errors": len(task.items),
                   "error": f"Ray task failed: {type(exc).__name__}: {exc}"}


def get_distributor(backend: str = "local", ray_address: str | None = None) -> Callable[..., Iterator[dict]]:
    """The distributor of ``backend`` ('local' or 'ray'); all share ``(worker, tasks, workers)``."""
    if backend == "local":
        if ray_address:
            raise ValueError("--ray-address only applies with --backend ray")
        return distribute_local
    if backend == "ray":
        return partial(distribute_ray, address=ray_address)
    raise ValueError(f"unknown backend {backend!r}; choose 'local' or 'ray'")


@dataclass
class RunSummary:
    shards: int = 0
    skipped: int = 0  # shards already done before this run
    failed: list = field(default_factory=list)  # statuses of shards still failed after all retries
    retried: int = 0  # shard attempts repeated after a failure
    pairs: int = 0  # made by this run
    errors: int = 0  # error rows written by this run (one input can give several: one per pair it was to make)
    seconds: float = 0.0
    stats: list = field(default_factory=list)  # statuses of the shards this run finished
    earlier: list = field(default_factory=list)  # stats files of the shards done before this run
    notes: list = field(default_factory=list)  # lines for the user (e.g. output folders skipped in the inputs)

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    @property
    def earlier_pairs(self) -> int:
        return sum(st.get("pairs", 0) for st in self.earlier)

    @property
    def total_pairs(self) -> int:
        """Pairs in the output: this run's and those of shards done before it."""
        return self.pairs + self.earlier_pairs


class _Progress:
    """The driver's bar over work items, fed by the workers' :func:`report_progress` calls and
    reconciled with each shard's final status (a shard that reported nothing, e.g. a Ray task,
    moves the bar by all its items at once; a failed attempt's items are taken back)."""

    def __init__(self, tasks: Sequence[ShardTask], desc: str, unit: str, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=sum(len(t.items) for t in tasks), desc=desc, unit=unit,
                        disable=not enabled or not tasks)
        self.lock = threading.Lock()
        self.live: dict[str, tuple[int, int, int]] = {}  # shard -> (items, pairs, errors) of its running attempt
        self.pairs = self.errors = 0  # of the shards finished so far
        self.queue = None  # a Manager queue the pool's workers report to
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = 0.0  # when a pairs-only report last redrew the bar

    def report(self, message: tuple) -> None:
        with self.lock:
            self._apply(message)

    def _apply(self, message: tuple) -> None:
        shard, items, pairs, errors = message
        before = self.live.get(shard, (0, 0, 0))
        self.live[shard] = (items, pairs, errors)
        self.bar.update(items - before[0])
        self._postfix()
        if items == before[0] and pairs != before[1]:  # a long item made pairs: show them (at most twice a second)
            now = time.monotonic()
            if now - self._drawn >= 0.5:
                self._drawn = now
                self.bar.refresh()

    def _postfix(self) -> None:
        pairs = self.pairs + sum(v[1] for v in self.live.values())
        errors = self.errors + sum(v[2] for v in self.live.values())
        self.bar.set_postfix(pairs=pairs, failed=errors, refresh=False)

    def _drain(self) -> None:
        """Apply every report waiting in the queue (call with the lock held)."""
        while self.queue is not None:
            try:
                self._apply(self.queue.get_nowait())
            except queue.Empty:
                return
            except (EOFError, OSError):  # the manager went away: no more live reports
                self.queue = None

    def listen(self, queue_) -> None:
        """Drain ``queue_`` on a helper thread until :meth:`close`."""
        self.queue = queue_

        def loop() -> None:
            while not self._stop.wait(0.2):
                with self.lock:
                    self._drain()

        self._thread = threading.Thread(target=loop, name="progress", daemon=True)
        self._thread.start()

    def finished(self, status: dict, task: ShardTask) -> None:
        """A shard's final status arrived: every report it sent is already queued (a worker
        reports before it returns), so drain them, then settle the shard's count."""
        with self.lock:
            self._drain()
            items, _, _ = self.live.pop(task.shard, (0, 0, 0))
            if status.get("status") == "done":
                self.pairs += status.get("pairs", 0)
                self.errors += status.get("errors", 0)
                self.bar.update(len(task.items) - items)
            else:  # retried or reported: its items are not done
                self.bar.update(-items)
            self._postfix()
            self.bar.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.close()


def run_shards(
    worker: Callable[[ShardTask], dict],
    tasks: Sequence[ShardTask],
    workers: int = 1,
    progress: bool = True,
    desc: str = "shards",
    backend: str = "local",
    ray_address: str | None = None,
    retries: int = 2,
    unit: str = "item",
) -> RunSummary:
    """Run the shards not yet done, with one progress bar over their work items (``unit``: what
    an item is, e.g. "pair" or "clip") in the driver.

    A shard whose worker failed as a whole (not a per-sample error, which is data) is retried up
    to ``retries`` times; shards still failing are listed in ``summary.failed`` and a re-run of
    the same command resumes them. ``summary.earlier`` holds the stats of the shards an earlier
    run finished.
    """
    global _REPORT
    distribute = get_distributor(backend, ray_address)
    t0 = time.perf_counter()
    todo = [t for t in tasks if not shard_done(t.out, t.shard)]
    summary = RunSummary(shards=len(tasks), skipped=len(tasks) - len(todo))
    if tasks:
        loc = Location(tasks[0].out)
        loc.sweep_temp_files()
        names = {t.shard for t in todo}
        summary.earlier = [json.loads(loc.read_text(f"stats/{t.shard}.json")) for t in tasks if t.shard not in names]
    by_name = {t.shard: t for t in todo}
    bar = _Progress(todo, desc, unit, progress)
    manager = None
    if progress and todo:
        _REPORT = bar.report  # shards run in this process report straight to the bar
        if backend == "local" and workers > 1 and len(todo) > 1:
            manager = multiprocessing.get_context("spawn").Manager()
            bar.listen(manager.Queue())
    try:
        failed: list = []
        for attempt in range(retries + 1):
            failed = []
            for status in distribute(worker, todo, workers, progress_queue=bar.queue):
                bar.finished(status, by_name[status["shard"]])
                if status.get("status") == "done":
                    summary.stats.append(status)
                    summary.pairs += status.get("pairs", 0)
                    summary.errors += status.get("errors", 0)
                else:
                    failed.append(status)
            if not failed:
                break
            if attempt < retries:
                summary.retried += len(failed)
                todo = [by_name[f["shard"]] for f in failed]
        summary.failed = failed
    finally:
        _REPORT = None
        bar.close()
        if manager is not None:
            manager.shutdown()
    summary.seconds = time.perf_counter() - t0
    return summary
