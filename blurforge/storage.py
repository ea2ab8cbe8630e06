"""Output locations: a local directory, or any filesystem pyarrow understands.

``Location("pairs/")`` is a local directory; ``Location("s3://bucket/pairs")``,
``Location("gs://bucket/pairs")``, ``Location("hdfs://host/pairs")`` or ``Location("file:///data/pairs")``
go through ``pyarrow.fs.FileSystem.from_uri`` (credentials come from the environment, as pyarrow
reads them). Every write is atomic: locally through a temp file and ``os.replace``; on an object
store a PUT publishes the object whole when the stream closes, so readers never see half a file.
Paths inside a location are POSIX paths relative to it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

TMP_SUFFIX = ".tmp"


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


class Location:
    """A directory on some filesystem, addressed by POSIX paths relative to it."""

    def __init__(self, location: str | os.PathLike, filesystem: pafs.FileSystem | None = None):
        """``location``: a local path or a URI; ``filesystem``: use this pyarrow filesystem with
        ``location`` as its path instead of resolving a URI."""
        self.uri = str(location)
        if filesystem is not None:
            self.fs, root = filesystem, self.uri
        elif is_uri(location):
            try:
                self.fs, root = pafs.FileSystem.from_uri(self.uri)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
                raise ValueError(
                    f"{self.uri}: not a filesystem pyarrow can open ({exc}) — use a local path or an "
                    "s3://, gs://, hdfs:// or file:// URI"
                ) from exc
        else:
            self.fs, root = pafs.LocalFileSystem(), os.path.abspath(location)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.root = root.rstrip("/") or "/"

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def path(self, rel: str = "") -> str:
        """The filesystem path of ``rel`` (a local path when the location is local)."""
        return posixpath.join(self.root, rel) if rel else self.root

    def local_path(self, rel: str = "") -> Path:
        if not self.local:
            raise ValueError(f"{self.uri}: not a local directory")
        return Path(self.path(rel))

    # ---------------------------------------------------------------------------------- queries

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def list(self, rel: str, suffix: str = "") -> list[str]:
        """Names (not paths) of the files directly in ``rel`` ending in ``suffix``, sorted."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(i.base_name for i in info if i.type == pafs.FileType.File and i.base_name.endswith(suffix))

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    # ----------------------------------------------------------------------------------- writes

    def makedirs(self, rel: str = "") -> None:
        self.fs.create_dir(self.path(rel), recursive=True)

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write ``data`` to ``rel`` atomically; returns the written path."""
        target = self.path(rel)
        if self.local:
            return str(write_local_atomic(Path(target), data))
        parent = posixpath.dirname(target)
        if parent:
            self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(target) as f:
            f.write(data)
        return target

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))


    def delete(self, rel: str) -> None:
        """Remove the file ``rel`` if it exists."""
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def sweep_temp_files(self) -> int:
        """Remove temp files a killed local run left behind (``.NAME.*.tmp``); returns how many.
        Object stores never hold partial objects, so there is nothing to sweep there."""
        if not self.local or not os.path.isdir(self.root):
            return 0
        n = 0
        for p in Path(self.root).rglob(f".*{TMP_SUFFIX}"):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
        return n


def check_separate(out: Location, input_dir: str | os.PathLike, input_flag: str) -> None:
    """Refuse an output location inside the input folder (the next run over the inputs would
    read these outputs as new inputs) or an input folder inside the output (the run would write
    into what it reads). Non-local outputs cannot overlap a local input folder."""
    if not out.local:
        return
    o, i = Path(os.path.realpath(out.root)), Path(os.path.realpath(input_dir))
    if o == i or i in o.parents:
        raise ValueError(
            f"--out {out.uri} is inside {input_flag} {input_dir}: a later run over {input_dir} would read "
            f"these outputs as new inputs — choose an --out outside it, e.g. --out {i.parent / (i.name + '-pairs')}"
        )
    if o in i.parents:
        raise ValueError(
            f"{input_flag} {input_dir} is inside --out {out.uri}: the run would write into the folder it reads — "
            "choose an --out that does not contain the inputs"
        )


def file_exists(target: str | os.PathLike) -> bool:
    """Whether a single file, given as a local path or a URI, exists."""
    text = str(target)
    if is_uri(text):
        parent, name = text.rsplit("/", 1)
        return Location(parent).exists(name)
    return os.path.exists(text)


def write_file(target: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` atomically to a single file given as a local path or a URI."""
    text = str(target)
    if is_uri(text):
        parent, name = text.rsplit("/", 1)
        return Location(parent).write_bytes(name, data)
    return str(write_local_atomic(Path(text), data))


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(tree: str | os.PathLike) -> None:
    """Give a freshly written folder and everything in it the modes plain ``open``/``mkdir`` give
    (``0666``/``0777`` less the umask): for trees written by libraries that create files ``0600``
    (safetensors writes through a private temp file) before they are renamed into place."""
    mask = current_umask()
    for folder, dirs, files in os.walk(tree):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def replacing_folder(target: str | os.PathLike):
    """Write a folder whole: yields a temporary sibling of ``target`` to fill; when the block ends
    without error the sibling gets the modes plain ``mkdir``/``open`` give (:func:`apply_umask`)
    and replaces ``target`` (an existing one is moved aside, then deleted); on any error it is
    deleted and ``target`` stays as it was."""
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        apply_umask(tmp)  # mkdtemp makes the folder 0700 and safetensors its files 0600: owner-only
        old = target.with_name(f".{target.name}.old-{os.getpid()}") if target.exists() else None
        if old is not None:
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_local_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to a local ``path`` through a temp file in the same directory + ``os.replace``.
    The file gets the mode a plain ``open`` gives (``0666`` less the umask), not ``mkstemp``'s ``0600``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with contextlib.suppress(OSError):  # filesystems without POSIX modes keep their own
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
