"""Video decoders behind one small interface, and a guarded frame iterator.

``open_video(path, decoder)`` returns a ``VideoClip``::

    clip.reported_length   frames the container/decoder claims (None when it cannot tell)
    clip.length_source     where that number comes from: "index", "header", "duration", "unknown"
    clip.fps               average frame rate the container reports
    iter(clip)             frames in order, each ``H×W×3 uint8`` RGB
    clip.read(i)           frame ``i`` (random access; decord seeks, PyAV decodes from the start)
    clip.close()           (also a context manager)

Decoders (``DECODERS``, by name):

- ``decord`` (the primary one): ``len(VideoReader)`` comes from the packet index decord builds
  when it opens the file (``length_source="index"``), so a file cut short usually reports only
  the packets that are left; packets that fail to decode raise mid-stream.
- ``av`` (PyAV): the stream header's frame count when the container stores one (AVI, MP4:
  ``"header"``), else ``round(duration × fps)`` (Matroska: ``"duration"``). A truncated AVI
  keeps its header count and so over-reports.

Both decode on one thread by default (``num_threads=1``): the frame job overlaps decoding with
its own work and its workers fill the cores.

Decoders can lie about their length or hang, so ``guarded_frames`` never trusts them: frames
are decoded on a helper thread and handed over through a small queue, and it raises
``VideoError`` when no frame arrives within ``frame_timeout`` seconds, when the clip's total
time passes ``clip_timeout``, when the decoder yields more frames than it reported, or when it
fails mid-stream. The caller compares the final count with ``reported_length``
(``check_length``). A decoder blocked inside one C call cannot be killed from Python: its
thread is abandoned (a daemon thread; the clip is not closed under it) and the run goes on.

Library log output: decoders report through exceptions, which become the clip's error row; what
the libraries print on their own never reaches the console. decord's bundled FFmpeg is set to
log nothing (``decord.logging.QUIET``, once per process) and the line decord's C++ core writes to
stderr when a file does not open is captured and folded into the error message; PyAV logs
nothing unless asked (``av.logging`` level None). The captured text goes to the
``blurforge.video`` logger at DEBUG level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


class VideoError(Exception):
    """A clip that cannot be (fully) decoded; the message names the file, the reason and a fix.

    ``stage`` says where it failed: open, decode, length, timeout.
    """

    def __init__(self, message: str, stage: str = "decode"):
        super().__init__(message)
        self.stage = stage


class VideoClip:
    """The common interface; subclasses fill ``reported_length``, ``length_source``, ``fps``."""

    decoder = "?"

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self.reported_length: int | None = None
        self.length_source = "unknown"
        self.fps = 0.0

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def read(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "VideoClip":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DecordClip(VideoClip):
    decoder = "decord"

    def __init__(self, path: str | os.PathLike, num_threads: int = 1):
        super().__init__(path)
        import decord

        if not os.path.isfile(self.path):
            raise VideoError(f"{self.path}: no such file — check the path", stage="open")
        _quiet_decord(decord)
        with _captured_stderr() as printed:
            try:
                self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=num_threads)
                failure = None
            except Exception as exc:  # decord raises RuntimeError / DECORDError with its own text
                failure = exc
        if failure is not None:
            reason = _decord_open_reason(printed.text)
            raise VideoError(
                f"{self.path}: decord cannot open it ({_first_line(failure)}{'; ' + reason if reason else ''}) — the "
                "file is corrupt or not a video; re-encode it (e.g. ffmpeg -i IN -c:v ffv1 OUT.mkv) or remove it",
                stage="open",
            ) from None
        self.reported_length = len(self._vr)
        self.length_source = "index"
        self.fps = float(self._vr.get_avg_fps())

    def __iter__(self) -> Iterator[np.ndarray]:
        self._vr.seek(0)
        i = 0
        while True:
            failure = None
            try:
                frame = self._vr.next().asnumpy()
            except StopIteration:
                return
            except Exception as exc:
                failure = _first_line(exc)
            if failure is not None:
                # raised outside the handler: decord's exception (whose traceback holds the reader)
                # must not ride along as __context__. A reader kept alive that way is freed only at
                # interpreter shutdown, where decord aborts the process after a decoding error
                # ("terminate called without an active exception", exit status 134).
                raise VideoError(f"{self.path}: decord failed at frame {i} ({failure}) — the stream is corrupt; "
                                 "re-encode or remove the clip", stage="decode")
            yield frame
            i += 1

    def read(self, index: int) -> np.ndarray:
        return self._vr[index].asnumpy()

    def close(self) -> None:
        self._vr = None


class AVClip(VideoClip):
    decoder = "av"

    def __init__(self, path: str | os.PathLike, num_threads: int = 1):
        super().__init__(path)
        import av

        try:
            self._container = av.open(self.path)
        except Exception as exc:  # av.FFmpegError subclasses, FileNotFoundError
            raise VideoError(
                f"{self.path}: PyAV cannot open it ({_first_line(exc)}) — the file is corrupt or not a video; "
                "re-encode it or remove it", stage="open"
            ) from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.path}: no video stream — pass a video file", stage="open")
        stream = self._container.streams.video[0]
        # One decoding thread by default, as decord: a job's workers already fill the cores, and
        # FFmpeg's own threads cost as much CPU per frame (scripts/bench_frames.py measures both).
        stream.thread_type = "NONE" if num_threads == 1 else "AUTO"
        stream.thread_count = num_threads  # 0: FFmpeg picks
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else 0.0
        if stream.frames and stream.frames > 0:
            self.reported_length, self.length_source = int(stream.frames), "header"
        else:
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif self._container.duration is not None:
                seconds = self._container.duration / 1_000_000  # av.time_base: microseconds
            if seconds is not None and self.fps > 0:
                self.reported_length, self.length_source = int(round(seconds * self.fps)), "duration"

    def __iter__(self) -> Iterator[np.ndarray]:
        self._container.seek(0)
        stream = self._container.streams.video[0]
        i = 0
        try:
            for frame in self._container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
                i += 1
        except Exception as exc:  # av.InvalidDataError and friends
            raise VideoError(
                f"{self.path}: PyAV failed at frame {i} ({_first_line(exc)}) — the stream is corrupt; "
                "re-encode or remove the clip", stage="decode"
            ) from None

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` by decoding from the start (exact, O(index); the job iterates instead)."""
        for i, frame in enumerate(self):
            if i == index:
                return frame
        raise IndexError(f"{self.path}: frame {index} out of range (decoded {i + 1 if index else 0})")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


DECODERS: dict[str, Callable[[str], VideoClip]] = {"decord": DecordClip, "av": AVClip}


def open_video(path: str | os.PathLike, decoder: str = "decord") -> VideoClip:
    """Open ``path`` with the named decoder; raises ``VideoError`` (stage "open") on failure."""
    if decoder not in DECODERS:
        raise ValueError(f"--decoder {decoder!r}: unknown — choose one of {', '.join(DECODERS)}")
    return DECODERS[decoder](path)


def find_videos(directory: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the video files under ``directory`` (recursive, sorted)."""
    from pathlib import Path

    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"--videos {root}: not a directory — pass the folder that holds the clips")
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir()
    )


def length_tolerance(clip: VideoClip) -> int:
    """Frames by which a decoded count may differ from the reported one: 0 for counts the
    decoder read from an index or header, 1 for estimates from the duration (rounding)."""
    return 1 if clip.length_source == "duration" else 0


def check_length(clip: VideoClip, decoded: int) -> None:
    """Raise ``VideoError`` (stage "length") when ``decoded`` disagrees with the reported length."""
    n = clip.reported_length
    if decoded == 0:
        raise VideoError(f"{clip.path}: no frame could be decoded (zero frames) — the clip is empty or corrupt",
                         stage="length")
    if n is None:
        return
    if abs(decoded - n) > length_tolerance(clip):
        what = "over-reported" if decoded < n else "under-reported"
        raise VideoError(
            f"{clip.path}: {clip.decoder} reported {n} frames ({clip.length_source}) but {decoded} decoded — "
            f"{what} length; the file is truncated or its index/header is wrong: re-encode it "
            "(e.g. ffmpeg -i IN -c:v ffv1 OUT.mkv) or try the other --decoder", stage="length"
        )


def guarded_frames(
    clip: VideoClip, frame_timeout: float | None = 60.0, clip_timeout: float | None = None
) -> Iterator[np.ndarray]:
    """Iterate ``clip``'s frames on a helper thread, with time and count limits (see module doc).

    Stops with ``VideoError`` (stage "timeout" or "length") instead of waiting forever or
    reading forever; decoding errors come through as the decoder's ``VideoError``.
    """
    n = clip.reported_length
    cap = None if n is None else n + length_tolerance(clip) + 1  # one past: proves an under-report
    q: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            count = 0
            for frame in clip:
                if not put(("frame", frame)):
                    return
                count += 1
                if cap is not None and count >= cap:
                    put(("cap", count))
                    return
            put(("end", count))
        except BaseException as exc:  # noqa: BLE001 — handed to the consumer
            put(("error", exc))

    thread = threading.Thread(target=produce, name=f"decode:{os.path.basename(clip.path)}", daemon=True)
    t0 = time.monotonic()
    thread.start()
    try:
        while True:
            wait = frame_timeout
            if clip_timeout is not None:
                left = clip_timeout - (time.monotonic() - t0)
                wait = left if wait is None else min(wait, left)
            try:
                kind, value = q.get(timeout=None if wait is None else max(wait, 0.0))
            except queue.Empty:
                elapsed = time.monotonic() - t0
                which = ("clip" if clip_timeout is not None and elapsed >= clip_timeout else "frame")
                limit = clip_timeout if which == "clip" else frame_timeout
                raise VideoError(
                    f"{clip.path}: {clip.decoder} timed out ({which} time limit {limit:g} s, after "
                    f"{elapsed:.1f} s) — the decoder hangs on this file; re-encode it or try the other --decoder",
                    stage="timeout",
                ) from None
            if kind == "frame":
                yield value
            elif kind == "end":
                return
            elif kind == "cap":
                raise VideoError(
                    f"{clip.path}: {clip.decoder} reported {n} frames but kept yielding more (stopped at "
                    f"{value}) — under-reported length; re-encode it or try the other --decoder",
                    stage="length",
                )
            else:
                if isinstance(value, VideoError):
                    raise value
                raise VideoError(f"{clip.path}: {clip.decoder} failed: {type(value).__name__}: {value}",
                                 stage="decode")
    finally:
        stop.set()
        thread.join(timeout=1.0)
        if not thread.is_alive():
            clip.close()  # never close a clip under a thread that is still inside the decoder


_log = logging.getLogger(__name__)
_DECORD_QUIET = False


def _quiet_decord(decord) -> None:
    """Stop decord's bundled FFmpeg from printing (``av_log`` level QUIET), once per process."""
    global _DECORD_QUIET
    if not _DECORD_QUIET:
        decord.logging.set_level(decord.logging.QUIET)
        _DECORD_QUIET = True


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_stderr() -> Iterator[_Captured]:
    """Capture what C code writes to file descriptor 2 inside the block (decord's core logs there,
    past Python's ``sys.stderr``); the text is logged at DEBUG level and left in ``.text``. Used
    only around opening a file, a few milliseconds."""
    captured = _Captured()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")
    if captured.text.strip():
        _log.debug("decoder output: %s", captured.text.strip())


def _decord_open_reason(text: str) -> str:
    """FFmpeg's reason from decord's 'ERROR opening: PATH, REASON' log line ('' if absent)."""
    m = re.search(r"ERROR opening: .*, ([^,\n]+)\s*$", text, flags=re.M)
    return m.group(1).strip() if m else ""


_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")  # decord's "[10:46:33] src/x.cc:83: "


def _first_line(exc: BaseException) -> str:
    text = _LOG_PREFIX.sub("", str(exc)).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
