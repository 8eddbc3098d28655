"""Where datasets, runs and checkpoints live: a local directory or an object-store URI.

On a laptop everything is a local path; on a cluster the driver's disk is not
the workers' disk, so runs, checkpoints and datasets go to object storage
(``s3://bucket/prefix``, ``gs://bucket/prefix``) that every node reads and
writes. This module is the one vocabulary for both, through pyarrow
filesystems — the layer Ray Train (``RunConfig(storage_path=...)``) and Ray
Data (``read_parquet``) already use::

    storage.join("s3://bucket/oskar", "runs", "r1")     # 's3://bucket/oskar/runs/r1'
    storage.join("runs", "r1")                            # 'runs/r1'
    storage.read_text("s3://bucket/ds/manifest.json")
    fs, path = storage.filesystem_and_path("gs://bucket/ds")   # (GcsFileSystem, 'bucket/ds')
    storage.copy("data/synth", "s3://bucket/oskar/data/synth")  # upload a directory

Local paths stay plain paths (never turned into URIs; ``pathlib`` would mangle
``s3://`` into ``s3:/``). ``file://`` URIs go through pyarrow's
``LocalFileSystem``: the same code path as ``s3://``/``gs://``, which is how
the tests exercise it without cloud credentials.

``$OSKAR_STORAGE`` (e.g. ``s3://my-bucket/oskar``, set on every node by
``cluster.yaml``) is the root that :func:`resolve` puts *relative* storage
paths under, so the same command (``oskar pretrain --config ...`` with
``train.output_dir=runs``) writes to object storage on a cluster and to
``./runs`` on a laptop.

Credentials are never configured here: pyarrow takes them from the
environment (instance profile / ``AWS_*`` variables / ``GOOGLE_APPLICATION_CREDENTIALS``).

Command line (used by ``cluster.yaml`` and the README)::

    python -m oskar_ray.storage copy SRC DST              # file or directory, local <-> URI
    python -m oskar_ray.storage backup-sqlite DB DST      # consistent snapshot of a live SQLite file
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

#: root for relative storage paths (runs, datasets) when set, e.g. s3://my-bucket/oskar
STORAGE_ENV = "OSKAR_STORAGE"
#: where object-store files needed as local files (tokenizers) are cached, per node
CACHE_ENV = "OSKAR_CACHE"

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

PathLike = str | os.PathLike


def is_uri(path: PathLike) -> bool:
    """``scheme://...`` (s3, gs, file, hdfs, ...); plain and Windows paths are not."""
    return bool(_URI.match(os.fspath(path)))


def is_local(path: PathLike) -> bool:
    """A plain path or a ``file://`` URI: on this machine's disk."""
    return not is_uri(path) or os.fspath(path).lower().startswith("file://")


def filesystem_and_path(path: PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``path`` and the path inside it (absolute for local files)."""
    text = os.fspath(path)
    if is_uri(text):
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))


def to_uri(filesystem: pafs.FileSystem, path: str) -> str:
    """Inverse of :func:`filesystem_and_path`, e.g. for a Ray ``Checkpoint``'s ``(filesystem, path)``."""
    kind = filesystem.type_name
    if kind == "local":
        return path
    if kind == "s3":
        return f"s3://{path}"
    if kind == "gcs":
        return f"gs://{path}"
    return f"{kind}://{path}"


def join(base: PathLike, *parts: PathLike) -> str:
    """Join path components; URIs keep their scheme and query (``?region=...``)."""
    base = os.fspath(base)
    parts = tuple(os.fspath(p) for p in parts)
    if not is_uri(base):
        return os.path.join(base, *parts) if parts else base
    scheme, netloc, path, query, fragment = urlsplit(base)
    for part in parts:
        if is_uri(part) or part.startswith("/"):
            raise ValueError(f"cannot join absolute {part!r} onto {base!r}")
        path = path.rstrip("/") + "/" + part.strip("/") if part.strip("/") else path
    return urlunsplit((scheme, netloc, path, query, fragment))


def parent(path: PathLike) -> str:
    text = os.fspath(path)
    if not is_uri(text):
        return os.path.dirname(os.path.abspath(text))
    scheme, netloc, p, query, fragment = urlsplit(text)
    return urlunsplit((scheme, netloc, p.rstrip("/").rsplit("/", 1)[0], query, fragment))


def name(path: PathLike) -> str:
    text = os.fspath(path)
    return (urlsplit(text).path if is_uri(text) else text).rstrip("/").rsplit("/", 1)[-1]


def storage_root() -> str | None:
    """``$OSKAR_STORAGE`` if set (the cluster's object-storage root), else None."""
    return os.environ.get(STORAGE_ENV) or None


def resolve(path: PathLike, root: PathLike | None = None) -> str:
    """A location every node can use, for the driver to hand to workers.

    URIs are returned unchanged. A relative path goes under ``root`` (default
    ``$OSKAR_STORAGE``) when one is given; otherwise local paths become
    absolute (a worker's working directory is not the driver's).
    """
    text = os.fspath(path)
    if is_uri(text):
        return text
    root = os.fspath(root) if root is not None else storage_root()
    expanded = os.path.expanduser(text)
    if root and not os.path.isabs(expanded):
        return resolve(join(root, text))
    return str(Path(expanded).resolve())


def _info(path: PathLike) -> pafs.FileInfo:
    fs, inner = filesystem_and_path(path)
    return fs.get_file_info(inner)


def exists(path: PathLike) -> bool:
    return _info(path).type != pafs.FileType.NotFound


def is_file(path: PathLike) -> bool:
    return _info(path).type == pafs.FileType.File


def is_dir(path: PathLike) -> bool:
    """True for a directory (or, on object stores, a non-empty prefix)."""
    return _info(path).type == pafs.FileType.Directory


def list_dir(path: PathLike) -> list[str]:
    """Names (not paths) directly under ``path``, sorted; [] when it does not exist."""
    fs, inner = filesystem_and_path(path)
    selector = pafs.FileSelector(inner, allow_not_found=True, recursive=False)
    return sorted(info.base_name for info in fs.get_file_info(selector))


def makedirs(path: PathLike) -> None:
    """``mkdir -p`` locally; nothing on object stores (prefixes exist once an object is written)."""
    fs, inner = filesystem_and_path(path)
    if fs.type_name == "local":
        fs.create_dir(inner, recursive=True)


def read_bytes(path: PathLike) -> bytes:
    fs, inner = filesystem_and_path(path)
    try:
        with fs.open_input_stream(inner) as stream:
            return stream.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{os.fspath(path)}: no such file") from None
    except OSError:
        if not exists(path):  # some object stores report a missing key as a generic OSError
            raise FileNotFoundError(f"{os.fspath(path)}: no such file") from None
        raise


def read_text(path: PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(path).decode(encoding)


def write_bytes(path: PathLike, data: bytes) -> str:
    """Write a whole file. Local writes are atomic (temp file + rename); an object-store
    PUT is atomic per object already. Parent directories are created as needed."""
    text = os.fspath(path)
    fs, inner = filesystem_and_path(text)
    if fs.type_name == "local":
        Path(inner).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{inner}.{uuid.uuid4().hex[:12]}.tmp"  # same directory: the rename is atomic
        try:
            with open(tmp, "xb") as out:  # normal umask permissions (mkstemp would give 0600)
                out.write(data)
            os.replace(tmp, inner)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return text
    with fs.open_output_stream(inner) as out:
        out.write(data)
    return text


def write_text(path: PathLike, text: str, encoding: str = "utf-8") -> str:
    return write_bytes(path, text.encode(encoding))


def copy(src: PathLike, dst: PathLike) -> str:
    """Copy a file or a directory tree between any two locations (local, file://, s3://, gs://)."""
    src_fs, src_path = filesystem_and_path(src)
    dst_fs, dst_path = filesystem_and_path(dst)
    kind = src_fs.get_file_info(src_path).type
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{os.fspath(src)}: no such file or directory")
    if dst_fs.type_name == "local":
        target = dst_path if kind == pafs.FileType.Directory else os.path.dirname(dst_path)
        os.makedirs(target, exist_ok=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)
    return os.fspath(dst)


def local_file(path: PathLike, cache_dir: PathLike | None = None) -> str:
    """A local file with the content of ``path``: itself when local, else a cached download.

    For libraries that only open local files (e.g. a tokenizer on object
    storage). The cache key includes the object's size and mtime, so a
    rewritten object is fetched again; a download is written atomically, so
    concurrent processes on one node never read half a file.
    """
    text = os.fspath(path)
    if not is_uri(text):
        return text
    fs, inner = filesystem_and_path(text)
    if fs.type_name == "local":
        return inner
    info = fs.get_file_info(inner)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{text}: no such file")
    stamp = f"{text}|{info.size}|{info.mtime_ns}"
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "oskar")
    target = root / hashlib.sha256(stamp.encode()).hexdigest()[:16] / info.base_name
    if not target.is_file():
        write_bytes(target, read_bytes(text))
    return str(target)


def backup_sqlite(db: PathLike, dst: PathLike) -> str:
    """A consistent snapshot of a live SQLite database (e.g. the MLflow store on a cluster's
    head) copied to ``dst`` — readers and writers may keep using the database meanwhile."""
    db = os.fspath(db)
    if not os.path.isfile(db):
        raise FileNotFoundError(f"{db}: no such SQLite database")
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = os.path.join(tmp, os.path.basename(db))
        source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        target = sqlite3.connect(snapshot)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return copy(snapshot, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oskar_ray.storage",
                                     description="copy between local paths and object storage")
    commands = parser.add_subparsers(dest="command", required=True)
    cp = commands.add_parser("copy", help="copy a file or directory (local, file://, s3://, gs://)")
    cp.add_argument("src")
    cp.add_argument("dst")
    bk = commands.add_parser("backup-sqlite", help="consistent snapshot of a live SQLite file to DST")
    bk.add_argument("db")
    bk.add_argument("dst")
    args = parser.parse_args(argv)
    try:
        if args.command == "copy":
            copy(args.src, args.dst)
        else:
            backup_sqlite(args.db, args.dst)
    except (FileNotFoundError, OSError, ValueError) as err:
        print(f"{parser.prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
