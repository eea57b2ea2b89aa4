"""One way to read and write files on a sweep's storage: a local folder, an NFS mount, or an object
store (``s3://``, ``gs://``, ...) through ``pyarrow.fs``, the same filesystem layer Tune uses.

A location is a string: a local path or a URI. Object-store credentials and endpoints come from
the usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...; query parameters such as
``?endpoint_override=...`` in the URI work too). Local writes go to a temp file then a rename;
object-store writes are a single PUT, which is atomic per object.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from mgas_common.errors import UserInputError
from mgas_common.object_stores import probe_store
from mgas_core.files.atomic import atomic_write_bytes


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def normalize(location: str | Path) -> str:
    """An absolute local path, or the URI unchanged (``file://`` becomes a local path)."""
    text = str(location)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if is_uri(text):
        scheme, rest = text.split("://", 1)
        if not rest.split("?", 1)[0].split("/", 1)[0]:
            raise UserInputError(f"{text}: no bucket named (expected {scheme}://BUCKET/PATH)")
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    if is_uri(location):
        scheme, rest = location.split("://", 1)
        path, _, query = rest.partition("?")
        joined = posixpath.join(path.rstrip("/"), *parts)
        return f"{scheme}://{joined}" + (f"?{query}" if query else "")
    return str(Path(location, *parts))


@dataclass(frozen=True)
class Location:
    """A resolved location: the filesystem and the path inside it."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *parts), join(self.uri, *parts))

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def write_bytes(self, data: bytes) -> None:
        if self.local:
            atomic_write_bytes(self.path, data)
            return
        with self.fs.open_output_stream(self.path) as stream:  # one PUT: readers see all or nothing
            stream.write(data)

    def files(self, suffix: str = "") -> list[Location]:
        """Every file under this folder (recursively) whose name ends with ``suffix``, sorted."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        out = []
        for info in infos:
            name = posixpath.basename(info.path)
            if info.type == pafs.FileType.File and name.endswith(suffix) and not name.startswith("."):
                rel = posixpath.relpath(info.path, self.path)
                out.append(self.child(*rel.split("/")))
        return sorted(out, key=lambda loc: loc.path)

    def subfolders(self) -> list[Location]:
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        return sorted((self.child(posixpath.basename(i.path)) for i in infos if i.type == pafs.FileType.Directory),
                      key=lambda loc: loc.path)

    def delete_dir(self) -> None:
        if self.is_dir():
            self.fs.delete_dir(self.path)


def reach(location: str | Path, what: str = "results location") -> Location:
    """:func:`resolve`, for a command's entry: an object store must answer within
    :data:`~mgas_common.object_stores.STORE_TIMEOUT_S` (else one line naming ``what``)."""
    uri = normalize(location)
    if not is_uri(uri):
        return Location(pafs.LocalFileSystem(), uri, uri)
    fs, path = probe_store(uri, what)
    return Location(fs, path.rstrip("/"), uri)


def resolve(location: str | Path) -> Location:
    """The filesystem and path of a local path or a URI."""
    uri = normalize(location)
    if not is_uri(uri):
        return Location(pafs.LocalFileSystem(), uri, uri)
    fs, path = pafs.FileSystem.from_uri(uri)
    return Location(fs, path.rstrip("/"), uri)


def copy_file(source_fs: pafs.FileSystem, source_path: str, target: Location) -> bool:
    """Copy one file from any filesystem to ``target``; False if the source does not exist."""
    if source_fs.get_file_info(source_path).type != pafs.FileType.File:
        return False
    with source_fs.open_input_stream(source_path) as stream:
        target.write_bytes(stream.read())
    return True
