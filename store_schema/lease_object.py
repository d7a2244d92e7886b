"""Leases on s3:// roots: the same one-writer guarantee as on a filesystem, from S3 conditional writes.

Stage one's whole-shard writes (AM-RADIO, arXiv 2312.06709's teachers run once into the store) are not
atomic across processes, on object storage either: two extractions writing one s3:// store can lose data.
The lease object `<target>.lease` holds the holder's record (store_schema/lease.py), and every change to it
is a conditional request, so S3 itself arbitrates:

- taking the lease: PutObject with `If-None-Match: *` (created only if no lease object exists; 412 else);
- the heartbeat: the holder rewrites its record with `If-Match: <its ETag>` every heartbeat_s; the
  object's Last-Modified is the heartbeat time (server clock; hosts are assumed to agree with it to well
  within stale_after_s, as for a shared filesystem). A 412 means another run took the lease over;
- taking over a stale lease: PutObject with `If-Match: <the stale ETag>`: of several runs that found it
  stale, exactly one succeeds (no break lock needed);
- releasing: DeleteObject with `If-Match: <its ETag>`, so a run never deletes a lease that is not its own.

AWS S3 honours If-None-Match on PutObject since August 2024 and If-Match on PutObject / DeleteObject since
late 2024; other S3-compatible servers may ignore them. So before the first use on a root, the lease
checks that the server refuses a conditional create of an object that exists (`prepare`), and refuses
to run (LeaseUnsupportedError) on a server that does not: there the guarantee cannot be given.
"""

from __future__ import annotations

import json
import time
from typing import Any

from store_schema.errors import StoreError
from store_schema.lease_record import lost_reason, parse_holder

_RETRIES = 5


class LeaseUnsupportedError(StoreError):
    """The object store cannot give the lease's guarantee (no conditional writes): writing is refused."""


def _precondition_failed(e: BaseException) -> bool:
    """True for S3's 412 Precondition Failed as s3fs raises it (FileExistsError for If-None-Match, an
    OSError naming the precondition for If-Match)."""
    text = str(e)
    return isinstance(e, FileExistsError) or "pre-conditions you specified did not hold" in text or \
        "PreconditionFailed" in text


class ObjectLeaseFile:
    """The lease object of an s3:// target (see the module docstring for the protocol)."""

    def __init__(self, url: str) -> None:
        from store_schema.location import filesystem

        if not url.startswith(("s3://", "s3a://")):
            proto = url.split("://", 1)[0]
            raise LeaseUnsupportedError(
                f"{url}: no lease on {proto}:// roots (the pipeline's leases need S3 conditional writes, or a "
                "filesystem's atomic create): two writers there could lose data, so writing is refused. Put the "
                "root on a local or shared filesystem, or on S3")
        self.path = url
        self.fs, inner = filesystem(url)
        self.bucket, _, self.key = inner.partition("/")
        self._etag: str | None = None  # of the record this process last wrote

    # ---- S3 calls ----------------------------------------------------------------------------------
    def _put(self, body: bytes, **condition: str) -> str | None:
        """PutObject with a condition; the new ETag, or None when the precondition failed."""
        try:
            out = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)
        except OSError as e:
            if _precondition_failed(e):
                return None
            raise
        return out["ETag"]

    def _head(self) -> dict | None:
        try:
            return self.fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None

    # ---- the lease file interface (store_schema/lease.py) -------------------------------------------
    def prepare(self) -> None:
        """Refuse a server that ignores If-None-Match (LeaseUnsupportedError): a conditional create of an
        object that exists must fail. The probe is an object of its own beside the lease."""
        probe = self.key + ".probe"
        try:
            self.fs.call_s3("put_object", Bucket=self.bucket, Key=probe, Body=b"probe")
            try:
                self.fs.call_s3("put_object", Bucket=self.bucket, Key=probe, Body=b"probe", IfNoneMatch="*")
            except OSError as e:
                if _precondition_failed(e):
                    return
                raise
            raise LeaseUnsupportedError(
                f"the object store of {self.path} ignores conditional writes (If-None-Match), so a lease there "
                "cannot keep a second writer out and writing is refused. Use a store that honours S3 conditional "
                "writes (AWS S3 does), or a local / shared filesystem root")
        finally:
            try:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=probe)
            except OSError:
                pass

    def read(self) -> tuple[dict[str, Any], float, str] | None:
        """(holder, heartbeat time = Last-Modified, ETag) or None; the record and its ETag belong together
        (read again when the object changed between the calls)."""
        for _ in range(_RETRIES):
            head = self._head()
            if head is None:
                return None
            try:
                body = self.fs.cat_file(f"{self.bucket}/{self.key}")
            except FileNotFoundError:
                return None
            again = self._head()
            if again is not None and again["ETag"] == head["ETag"]:
                return parse_holder(body.decode("utf-8", "replace")), head["LastModified"].timestamp(), head["ETag"]
            time.sleep(0.01)
        raise OSError(f"the lease object {self.path} keeps changing while it is read")

    def create(self, record: dict[str, Any]) -> bool:
        etag = self._put(json.dumps(record, indent=1).encode(), IfNoneMatch="*")
        if etag is not None:
            self._etag = etag
        return etag is not None

    def replace(self, version: str, record: dict[str, Any]) -> bool:
        """Take over the stale lease still at ETag `version`; False when another run changed it first."""
        etag = self._put(json.dumps(record, indent=1).encode(), IfMatch=version)
        if etag is not None:
            self._etag = etag
        return etag is not None

    def beat(self, token: str) -> str | None:
        """Rewrite the record (new Last-Modified) only if it is still ours; the reason when it is not."""
        found = self.read()
        if found is None or found[0].get("token") != token:
            return lost_reason(found)
        try:
            etag = self._put(json.dumps({**found[0], "heartbeat_at": time.time()}, indent=1).encode(), IfMatch=found[2])
        except OSError:
            return None  # the next beat tries again; a lease that goes stale is caught by check()
        if etag is None:
            return lost_reason(self.read())
        self._etag = etag
        return None

    def remove(self, token: str) -> None:
        found = self.read()
        if found is None or found[0].get("token") != token:
            return
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=found[2])
        except OSError as e:
            if not _precondition_failed(e):
                raise
