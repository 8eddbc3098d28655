"""oskar_ray.storage (local paths and URIs through pyarrow filesystems) and the dataset store on URIs.

No object store is available here: ``file://`` URIs take the same code path as
``s3://``/``gs://`` (``pyarrow.fs.FileSystem.from_uri``), and a SubTreeFileSystem
stands in for a remote store where a download must really happen.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from oskar_ray import storage
from oskar_ray.data import store


def _uri(path) -> str:
    return path.resolve().as_uri()


@pytest.fixture(params=["local", "file-uri"])
def where(request, tmp_path):
    """The same directory, as a plain path or as a file:// URI."""
    return str(tmp_path) if request.param == "local" else _uri(tmp_path)


def test_is_uri_and_join_keep_schemes_and_queries():
    assert storage.is_uri("s3://b/k") and storage.is_uri("file:///tmp") and storage.is_uri("gs://b")
    assert not storage.is_uri("runs/x") and not storage.is_uri("/abs") and not storage.is_uri("C:\\data")
    assert storage.join("s3://bucket/oskar", "runs", "r1/") == "s3://bucket/oskar/runs/r1"
    assert storage.join("s3://bucket", "a/b") == "s3://bucket/a/b"
    assert storage.join("s3://bucket/p?region=us-east-1", "x") == "s3://bucket/p/x?region=us-east-1"
    assert storage.join("runs", "r1", "c") == "runs/r1/c"
    with pytest.raises(ValueError, match="absolute"):
        storage.join("s3://bucket/p", "/etc")
    assert storage.parent("s3://bucket/a/b") == "s3://bucket/a"
    assert storage.name("s3://bucket/a/b/") == "b" and storage.name("/x/y.json") == "y.json"


def test_filesystem_and_path_and_back():
    fs, path = storage.filesystem_and_path("s3://bucket/runs/r1?region=us-east-1")
    assert fs.type_name == "s3" and path == "bucket/runs/r1"
    assert storage.to_uri(fs, path) == "s3://bucket/runs/r1"
    assert storage.to_uri(pafs.GcsFileSystem(anonymous=True), "bucket/ds") == "gs://bucket/ds"  # offline
    fs, path = storage.filesystem_and_path("relative/dir")
    assert fs.type_name == "local" and path.endswith("/relative/dir") and path.startswith("/")


def test_resolve_puts_relative_paths_under_the_storage_root(tmp_path, monkeypatch):
    monkeypatch.delenv(storage.STORAGE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("runs") == str(tmp_path.resolve() / "runs")
    assert storage.resolve("s3://b/runs") == "s3://b/runs"
    monkeypatch.setenv(storage.STORAGE_ENV, "s3://bucket/oskar")
    assert storage.storage_root() == "s3://bucket/oskar"
    assert storage.resolve("runs") == "s3://bucket/oskar/runs"
    assert storage.resolve("/abs/runs") == "/abs/runs"           # absolute paths stay where they are
    assert storage.resolve("runs", root="") == str(tmp_path.resolve() / "runs")  # root="" ignores the env
    assert storage.resolve("runs", root=str(tmp_path / "store")) == str(tmp_path.resolve() / "store" / "runs")


def test_read_write_exists_list_makedirs(where):
    target = storage.join(where, "a", "b", "note.txt")
    assert not storage.exists(target)
    storage.write_text(target, "hello")
    assert storage.read_text(target) == "hello" and storage.read_bytes(target) == b"hello"
    assert storage.exists(target) and storage.is_file(target) and not storage.is_dir(target)
    assert storage.is_dir(storage.join(where, "a", "b"))
    storage.write_text(target, "again")  # overwrite
    assert storage.read_text(target) == "again"
    assert storage.list_dir(storage.join(where, "a", "b")) == ["note.txt"]  # no temp files left behind
    assert storage.list_dir(storage.join(where, "missing")) == []
    storage.makedirs(storage.join(where, "x", "y"))
    assert storage.is_dir(storage.join(where, "x", "y"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        storage.read_text(storage.join(where, "nope.txt"))


def test_copy_directories_and_files_both_ways(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.bin").write_bytes(b"\x00\x01")
    (src / "top.txt").write_text("t")
    remote = storage.join(_uri(tmp_path), "bucket", "prefix")
    storage.copy(src, remote)                                      # upload a tree
    assert storage.read_bytes(storage.join(remote, "sub", "x.bin")) == b"\x00\x01"
    storage.copy(remote, tmp_path / "back")                        # download it
    assert (tmp_path / "back" / "top.txt").read_text() == "t"
    storage.copy(storage.join(remote, "top.txt"), tmp_path / "one" / "deep" / "t.txt")  # a single file
    assert (tmp_path / "one" / "deep" / "t.txt").read_text() == "t"
    with pytest.raises(FileNotFoundError):
        storage.copy(tmp_path / "absent", tmp_path / "x")


def test_local_file_downloads_once_and_refetches_a_changed_object(tmp_path, monkeypatch):
    remote_root = tmp_path / "remote"
    remote_root.mkdir()
    (remote_root / "tokenizer.json").write_text('{"v": 1}')
    real = storage.filesystem_and_path

    def fake(path):  # mem://<key> -> a non-local pyarrow filesystem over remote_root
        text = str(path)
        if text.startswith("mem://"):
            return pafs.SubTreeFileSystem(str(remote_root), pafs.LocalFileSystem()), text[len("mem://"):]
        return real(path)

    monkeypatch.setattr(storage, "filesystem_and_path", fake)
    cache = tmp_path / "cache"
    first = storage.local_file("mem://tokenizer.json", cache_dir=cache)
    assert first.startswith(str(cache)) and Path(first).read_text() == '{"v": 1}'
    assert storage.local_file("mem://tokenizer.json", cache_dir=cache) == first   # cached
    (remote_root / "tokenizer.json").write_text('{"v": 22}')                      # rewritten object
    second = storage.local_file("mem://tokenizer.json", cache_dir=cache)
    assert second != first and Path(second).read_text() == '{"v": 22}'
    with pytest.raises(FileNotFoundError):
        storage.local_file("mem://missing.json", cache_dir=cache)
    # local paths and file:// URIs are used in place, never copied
    assert storage.local_file(str(remote_root / "tokenizer.json")) == str(remote_root / "tokenizer.json")
    assert storage.local_file(_uri(remote_root / "tokenizer.json")) == str((remote_root / "tokenizer.json").resolve())


def test_backup_sqlite_snapshot_and_cli(tmp_path):
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("create table runs (id text)")
    con.execute("insert into runs values ('r1')")
    con.commit()  # the connection stays open, as the MLflow server's would
    dest = storage.join(_uri(tmp_path), "backup", "mlflow.db")
    assert storage.main(["backup-sqlite", str(db), dest]) == 0
    copy = sqlite3.connect(tmp_path / "backup" / "mlflow.db")
    assert copy.execute("select id from runs").fetchall() == [("r1",)]
    copy.close()
    con.close()
    assert storage.main(["copy", dest, str(tmp_path / "restored.db")]) == 0
    assert (tmp_path / "restored.db").stat().st_size > 0
    assert storage.main(["copy", str(tmp_path / "absent.db"), str(tmp_path / "x.db")]) == 2


def test_dataset_store_reads_manifests_and_shards_through_uris(synth_dir, tmp_path):
    uri = _uri(synth_dir)
    manifest = store.load_manifest(uri)
    assert manifest == store.load_manifest(synth_dir)
    paths = store.split_paths(uri, "pretrain", manifest)
    assert paths and all(p.startswith("file:///") and p.endswith(".parquet") for p in paths)
    assert [p.removeprefix("file://") for p in paths] == store.split_paths(synth_dir, "pretrain")
    rows = sum(pq.read_table(p, columns=["id"]).num_rows for p in paths)  # pyarrow reads the URIs directly
    assert rows == store.split_info(uri, "pretrain")["samples"]
    assert store.tokenizer_file(uri) == str(synth_dir.resolve() / manifest["tokenizer"])
    with pytest.raises(ValueError, match="no split 'nope'"):
        store.split_info(uri, "nope")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        store.load_manifest(_uri(tmp_path / "empty"))
    # a manifest written to a URI is read back the same
    out = storage.join(_uri(tmp_path), "ds")
    store.save_manifest(out, manifest)
    assert json.loads(storage.read_text(storage.join(out, "manifest.json"))) == manifest
    assert store.load_manifest(out)["splits"] == manifest["splits"]
