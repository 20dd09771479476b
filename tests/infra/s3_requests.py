"""What the product asks of S3, as IAM authorisation requests.

``tests/orchestration/store/test_s3.py`` records every HTTP request that a sweep (and the Storage API)
sends to moto's S3 server (moto's own request recorder, :class:`MotoRecording`), turns each into the
S3 operation it is (:func:`parse`) and each operation into the IAM requests AWS authorises it with
(:func:`iam_requests`, after the S3 User Guide's "Actions, resources, and condition keys for Amazon
S3" table), and writes them, generalised (:func:`generalise`), to ``s3_requests.json`` beside this
file. ``tests/infra/test_iam_policies.py`` then checks ``infra/aws/iam-policy.json`` offline: it allows
every recorded request and nothing else.

Modelled on purpose:

- HeadBucket is authorised as ``s3:ListBucket`` on the bucket with no ``s3:prefix`` in the request.
- HeadObject / GetObject of a key that does not exist answer 404 only to a caller that also holds
  ``s3:ListBucket`` on the bucket (else 403, which pyarrow reports as an error, not as "missing"), so
  each of them also needs ``s3:ListBucket`` on the bucket, with no ``s3:prefix`` in that check.
- DeleteObjects (the multi-object ``POST ?delete``) is ``s3:DeleteObject`` on each key in its body.
- Only ``s3:prefix`` is kept as a condition key (the policy conditions on nothing else).
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.etree import ElementTree

from tests.infra.iam import Request

RECORD = Path(__file__).with_name("s3_requests.json")

#: what stands for the sweep's bucket and prefix in a generalised request (as in iam-policy.json)
BUCKET, PREFIX = "BUCKET", "PREFIX"
#: the bucket name of the HeadBucket that pyarrow sends once per file system to learn from the error
#: which S3 implementation it talks to (arrow/filesystem/s3fs.cc, GetBackend); it is meant to fail,
#: so it needs no permission
ARROW_BACKEND_PROBE = "$extremelyunlikelytoexist$"
#: a key under the prefix, standing for all of them
UNDER = f"{PREFIX}/k"


@dataclass(frozen=True)
class Operation:
    """One S3 API call: its name, bucket, key ("" for bucket operations), query and a few headers."""

    name: str
    bucket: str
    key: str
    query: dict[str, str] = field(default_factory=dict)
    copy_source: str = ""
    deleted_keys: tuple[str, ...] = ()


def _operation_name(method: str, key: str, query: dict[str, str], copy_source: str) -> str:
    q = set(query)
    if not key:
        if method == "HEAD":
            return "HeadBucket"
        if method == "GET" and "location" in q:
            return "GetBucketLocation"
        if method == "GET" and "uploads" in q:
            return "ListMultipartUploads"
        if method == "GET" and "versions" in q:
            return "ListObjectVersions"
        if method == "GET" and not (
            q
            - {
                "list-type",
                "prefix",
                "delimiter",
                "max-keys",
                "continuation-token",
                "start-after",
                "encoding-type",
                "marker",
                "fetch-owner",
            }
        ):
            return "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
        if method == "POST" and "delete" in q:
            return "DeleteObjects"
        if method == "PUT" and not q:
            return "CreateBucket"
        if method == "DELETE" and not q:
            return "DeleteBucket"
    else:
        if method == "HEAD" and not (q - {"partNumber", "versionId"}):
            return "HeadObject"
        if method == "GET" and "uploadId" in q:
            return "ListParts"
        if method == "GET" and not (q - {"partNumber", "versionId", "response-content-type"}):
            return "GetObject"
        if method == "PUT" and "uploadId" in q:
            return "UploadPartCopy" if copy_source else "UploadPart"
        if method == "PUT" and not q:
            return "CopyObject" if copy_source else "PutObject"
        if method == "POST" and "uploads" in q:
            return "CreateMultipartUpload"
        if method == "POST" and "uploadId" in q:
            return "CompleteMultipartUpload"
        if method == "DELETE" and "uploadId" in q:
            return "AbortMultipartUpload"
        if method == "DELETE" and not (q - {"versionId"}):
            return "DeleteObject"
    raise ValueError(f"an S3 request this model does not know: {method} key={key!r} query={sorted(q)}")


def _deleted_keys(body: bytes) -> tuple[str, ...]:
    root = ElementTree.fromstring(body)
    return tuple(el.text or "" for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Key")


def parse(entry: dict[str, Any]) -> Operation:
    """The S3 operation of one entry of moto's recording (path-style addressing)."""
    url = urlsplit(entry["url"])
    path = url.path.lstrip("/")
    bucket, _, raw_key = path.partition("/")
    key = unquote(raw_key)
    query = dict(parse_qsl(url.query, keep_blank_values=True))
    headers = {k.lower(): v for k, v in entry.get("headers", {}).items()}
    copy_source = unquote(headers.get("x-amz-copy-source", ""))
    name = _operation_name(entry["method"], key, query, copy_source)
    deleted: tuple[str, ...] = ()
    if name == "DeleteObjects":
        body = entry.get("body") or ""
        raw = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
        deleted = _deleted_keys(raw)
    return Operation(name, unquote(bucket), key, query, copy_source, deleted)


def _bucket_arn(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}"


def _object_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


_OBJECT_ACTION = {
    "HeadObject": "s3:GetObject", "GetObject": "s3:GetObject", "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject", "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts", "DeleteObject": "s3:DeleteObject",
}  # fmt: skip
_BUCKET_ACTION = {
    "GetBucketLocation": "s3:GetBucketLocation", "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "ListObjectVersions": "s3:ListBucketVersions", "CreateBucket": "s3:CreateBucket",
    "DeleteBucket": "s3:DeleteBucket",
}  # fmt: skip


def iam_requests(op: Operation) -> list[tuple[str, Request]]:
    """``(why, request)`` for each IAM authorisation ``op`` needs on AWS."""
    bucket = _bucket_arn(op.bucket)
    if op.name == "HeadBucket" and op.bucket == ARROW_BACKEND_PROBE:
        return []  # Arrow's backend probe: a HeadBucket meant to fail (any error will do)
    if op.name == "HeadBucket":
        return [(op.name, Request("s3:ListBucket", bucket))]
    if op.name in ("ListObjectsV2", "ListObjects"):
        ctx = {"s3:prefix": op.query["prefix"]} if "prefix" in op.query else {}
        return [(op.name, Request("s3:ListBucket", bucket, ctx))]
    if op.name == "DeleteObjects":
        return [(op.name, Request("s3:DeleteObject", _object_arn(op.bucket, k))) for k in op.deleted_keys]
    if op.name in _BUCKET_ACTION:
        return [(op.name, Request(_BUCKET_ACTION[op.name], bucket))]
    if op.name in ("CopyObject", "UploadPartCopy"):
        src_bucket, _, src_key = op.copy_source.lstrip("/").partition("/")
        return [
            (op.name, Request("s3:PutObject", _object_arn(op.bucket, op.key))),
            (f"{op.name} (source)", Request("s3:GetObject", _object_arn(src_bucket, src_key.split("?")[0]))),
        ]
    out = [(op.name, Request(_OBJECT_ACTION[op.name], _object_arn(op.bucket, op.key)))]
    if op.name in ("HeadObject", "GetObject"):
        out.append((f"{op.name} (404, not 403, for a missing key)", Request("s3:ListBucket", bucket)))
    return out


def _general(value: str, bucket: str, prefix: str) -> str:
    """``value`` (a key or an ``s3:prefix``) with the sweep's prefix replaced: the prefix itself ->
    ``PREFIX``, anything under it -> ``PREFIX/k``; anything else as it is."""
    if value == prefix:
        return PREFIX
    if value.startswith(prefix + "/"):
        return UNDER
    return value


def generalise(req: Request, bucket: str, prefix: str) -> Request:
    """``req`` with the test's bucket and prefix replaced by ``BUCKET``/``PREFIX`` (see :func:`_general`)."""
    resource = req.resource
    head = f"arn:aws:s3:::{bucket}"
    if resource == head:
        resource = f"arn:aws:s3:::{BUCKET}"
    elif resource.startswith(head + "/"):
        resource = f"arn:aws:s3:::{BUCKET}/{_general(resource[len(head) + 1 :], bucket, prefix)}"
    ctx = dict(req.context)
    if "s3:prefix" in ctx:
        ctx["s3:prefix"] = _general(str(ctx["s3:prefix"]), bucket, prefix)
    return Request(req.action, resource, ctx)


def load_record(path: Path = RECORD) -> list[tuple[str, Request]]:
    """The checked-in record: ``(operation, generalised request)`` pairs."""
    return [(d["operation"], Request.from_json(d)) for d in json.loads(path.read_text())["requests"]]


def write_record(pairs: set[tuple[str, Request]], path: Path = RECORD) -> None:
    rows = sorted(
        ({"operation": why, **r.as_json()} for why, r in pairs), key=lambda d: json.dumps(d, sort_keys=True)
    )
    doc = {
        "about": "S3 requests a sweep and the Storage API make, generalised; written by "
        "tests/orchestration/store/test_s3.py::test_every_s3_request_is_allowed_by_the_shipped_iam_policy "
        "with DEEPSAD_RECORD_S3_REQUESTS=1 (see tests/infra/s3_requests.py)",
        "requests": rows,
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")


class MotoRecording:
    """Moto's request recorder on a running moto server, as a context manager: everything any process
    sends to ``endpoint`` inside the ``with`` block is recorded; :meth:`operations` parses it."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._raw = ""

    def _call(self, what: str, method: str = "POST") -> bytes:
        req = urllib.request.Request(
            f"{self.endpoint}/moto-api/recorder/{what}", method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(req, timeout=30) as resp:  # 127.0.0.1 only: the test's moto server
            return bytes(resp.read())

    def __enter__(self) -> MotoRecording:
        self._call("reset-recording")
        self._call("start-recording")
        return self

    def __exit__(self, *exc: object) -> None:
        self._call("stop-recording")
        self._raw = self._call("download-recording", "GET").decode()
        self._call("reset-recording")

    def entries(self) -> Iterator[dict[str, Any]]:
        # moto's threaded server appends each entry and its newline in two writes, so concurrent
        # requests can leave two entries on one line: read a stream of JSON values, not lines.
        decoder, text, i = json.JSONDecoder(), self._raw, 0
        while True:
            while i < len(text) and text[i].isspace():
                i += 1
            if i >= len(text):
                return
            entry, i = decoder.raw_decode(text, i)
            yield entry

    def operations(self) -> list[Operation]:
        return [parse(e) for e in self.entries()]
