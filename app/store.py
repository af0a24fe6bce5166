"""The artifact store: one place for the large files of every job (model.pth, the last
checkpoint) shared by the app and every worker. A local directory (one host, or one NFS path
mounted on every host) or S3-compatible storage (`s3://bucket/prefix`: AWS S3, MinIO, R2, Ceph),
both through fsspec. Endpoint and credentials come from the standard AWS_* variables, never from
the URL, so the URL can be shown.

Writes are atomic: a local file is copied under a temporary name and renamed; an S3 object
appears whole when its single PUT (or multipart upload) completes. Readers never see a torn file.
"""

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

import fsspec

log = logging.getLogger("trainboard.store")

CHUNK_BYTES = 1024 * 1024


class StoreError(RuntimeError):
    """The store refused or failed an operation; the message names the URL, never a credential."""


class StoreUnavailable(StoreError):
    """The store cannot be reached (network, DNS, timeout): a fault of the host, not of the job."""


class StoreMisconfigured(StoreError):
    """Access denied, no such bucket: no retry fixes it until the configuration changes."""


def redact(url: str) -> str:
    """The URL without any user:password part."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _classify(url: str, exc: BaseException) -> StoreError:
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    if isinstance(exc, PermissionError) or "AccessDenied" in reason or "InvalidAccessKeyId" in reason or "SignatureDoesNotMatch" in reason:
        return StoreMisconfigured(f"the artifact store {redact(url)} refused access: {reason}")
    if "NoSuchBucket" in reason or (isinstance(exc, FileNotFoundError) and "bucket" in reason.lower()):
        return StoreMisconfigured(f"the artifact store {redact(url)} has no such bucket: {reason}")
    return StoreUnavailable(f"the artifact store {redact(url)} is unreachable: {reason}")


class ArtifactStore:
    """Objects named `jobs/<id>/<name>` under the store's root."""

    def __init__(self, url: str):
        self.url = url
        self.is_local = "://" not in url or url.startswith("file://")
        if self.is_local:
            self.fs = fsspec.filesystem("file")
            self.root = str(Path(url.removeprefix("file://")).resolve())
        else:
            protocol = urlsplit(url).scheme
            self.fs = fsspec.filesystem(protocol, skip_instance_cache=True)
            self.root = self.fs._strip_protocol(url).rstrip("/")

    @property
    def public_url(self) -> str:
        return redact(self.url) if not self.is_local else self.root

    def key(self, job_id: int, name: str) -> str:
        return f"jobs/{job_id}/{name}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _call(self, operation, *args, **kwargs):
        try:
            return operation(*args, **kwargs)
        except FileNotFoundError:
            raise
        except StoreError:
            raise
        except Exception as exc:
            raise _classify(self.url, exc) from exc

    def probe(self) -> None:
        """Raise StoreUnavailable or StoreMisconfigured unless the store answers a listing."""
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise StoreMisconfigured(f"the artifact store {self.root} is not writable")
            return
        try:
            self._call(self.fs.ls, self.root.split("/", 1)[0], refresh=True)
        except FileNotFoundError as exc:
            raise StoreMisconfigured(f"the artifact store {redact(self.url)} has no such bucket") from exc

    def put_file(self, local: Path, key: str) -> int:
        """Upload a local file atomically; returns its size."""
        target = self._path(key)
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            partial = f"{target}.partial-{uuid.uuid4().hex[:8]}"
            try:
                self._call(self.fs.put_file, str(local), partial)
                os.replace(partial, target)
            finally:
                if os.path.exists(partial):
                    os.unlink(partial)
        else:
            self._call(self.fs.put_file, str(local), target)
        return local.stat().st_size

    def get_file(self, key: str, local: Path) -> None:
        """Download to a local file (written under a temporary name, then renamed)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".partial")
        self._call(self.fs.get_file, self._path(key), str(partial))
        os.replace(partial, local)

    def size(self, key: str) -> int | None:
        try:
            return int(self._call(self.fs.info, self._path(key))["size"])
        except FileNotFoundError:
            return None

    def open(self, key: str) -> BinaryIO:
        return self._call(self.fs.open, self._path(key), "rb")

    def read_chunks(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The object's bytes from `start`, `length` of them (all without), a chunk at a time."""
        with self.open(key) as stream:
            stream.seek(start)
            remaining = length
            while remaining is None or remaining > 0:
                chunk = stream.read(CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def delete(self, key: str) -> None:
        try:
            self._call(self.fs.rm, self._path(key))
        except FileNotFoundError:
            pass

    def delete_job(self, job_id: int) -> None:
        """Every object of the job (the local folder too)."""
        try:
            self._call(self.fs.rm, self._path(f"jobs/{job_id}"), recursive=True)
        except FileNotFoundError:
            pass
