"""The S3 side of :class:`~orchestration.store.storage.Storage`: URIs, configuration, and one-line errors.

A location ``s3://bucket/prefix`` names only the bucket and key prefix. How to reach it comes from
the environment, read each time a Storage is made (so a Ray worker, which inherits the driver's
environment, rebuilds the same file system from ``Storage.uri``):

``DEEPSAD_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``
    ``http(s)://host[:port]`` of an S3-compatible store (MinIO, SeaweedFS, Ceph, moto). Unset: AWS.
``DEEPSAD_S3_REGION``, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION``
    The region. Unset: ``us-east-1`` with a custom endpoint; on AWS the SDK decides (profile, then
    instance metadata).
``DEEPSAD_S3_ADDRESSING`` = ``path`` | ``virtual``
    Bucket addressing. Default: ``path`` with a custom endpoint (what self-hosted stores expect),
    the SDK's choice (virtual hosting) on AWS; ``path`` on AWS needs a region.

Credentials come only from the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the shared config files, an instance role). They are never
part of a URI or an endpoint (user info is refused), never passed to pyarrow explicitly (so a pickled
file system carries none), and :func:`scrub` removes them from every message. The AWS SDK's log is
kept at ``Fatal`` so that request signatures never reach a log.

Timeouts are short on purpose: a connect timeout of :data:`CONNECT_TIMEOUT_S` and
:data:`MAX_ATTEMPTS` attempts, so that an unreachable endpoint fails in seconds, before any trial.

Some S3-compatible servers store the ``aws-chunked`` checksum framing of newer AWS SDKs as object
data; with those set ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required`` and
``AWS_RESPONSE_CHECKSUM_VALIDATION=when_required``. Either way :class:`Storage` verifies the size of
what it uploads and the sha256 of what it downloads, so such a server fails loudly, not silently.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from deepsad.errors import StorageError

CONNECT_TIMEOUT_S = 3.0
MAX_ATTEMPTS = 3
DEFAULT_CUSTOM_REGION = "us-east-1"
ADDRESSING = ("path", "virtual")
ACCESS_DENIED = "access denied — check the AWS credentials (profile/env/instance role)"

_ENDPOINT_VARS = ("DEEPSAD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_REGION_VARS = ("DEEPSAD_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
# DNS-compatible bucket names (3-63 lowercase letters, digits, '.', '-'), as S3 requires for new buckets.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]")
_REGION = re.compile(r"[a-z0-9-]{1,32}")


def _first_set(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def parse_uri(uri: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket/prefix`` (prefix without outer slashes, maybe empty).

    Raises StorageError, without echoing user info or query, if the URI carries credentials, a port,
    a query or fragment, or an invalid bucket name. The prefix is not checked here (see
    :func:`orchestration.store.storage.safe_key`).
    """
    parts = urlsplit(uri)
    host = parts.hostname or ""
    shown = f"s3://{host}{parts.path}"
    if "@" in parts.netloc:
        raise StorageError(
            f"storage {shown}: credentials must not be part of the URI; "
            "they come from the AWS chain (env, profile, instance role)"
        )
    if parts.query or parts.fragment:
        raise StorageError(
            f"storage {shown}: a query or fragment is not allowed; configure the endpoint with "
            "DEEPSAD_S3_ENDPOINT and the region with DEEPSAD_S3_REGION"
        )
    if ":" in parts.netloc:
        raise StorageError(
            f"storage {shown}: a port belongs to the endpoint (DEEPSAD_S3_ENDPOINT), not the URI"
        )
    if not _BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
        raise StorageError(
            f"storage {shown}: invalid bucket name {parts.netloc!r} (3-63 lowercase letters, digits, '.', '-')"
        )
    return parts.netloc, parts.path.strip("/")


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3: ``endpoint`` (``scheme://host[:port]``, "" for AWS), ``region`` (None: the
    SDK decides) and ``addressing`` (``"path"``, ``"virtual"``, or None: the SDK's default)."""

    endpoint: str = ""
    region: str | None = None
    addressing: str | None = None

    def __post_init__(self) -> None:
        if self.addressing not in (None, *ADDRESSING):
            raise StorageError(
                f"S3 addressing must be one of {', '.join(ADDRESSING)} (got {self.addressing!r})"
            )
        if self.addressing == "path" and not self.endpoint and not self.region:
            raise StorageError("DEEPSAD_S3_ADDRESSING=path on AWS needs a region (set AWS_REGION)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """The settings of the environment (see the module docstring). Raises StorageError naming the
        variable on a malformed value."""
        env = os.environ if environ is None else environ
        endpoint = ""
        found = _first_set(env, _ENDPOINT_VARS)
        if found:
            endpoint = _check_endpoint(*found)
        region: str | None = None
        found = _first_set(env, _REGION_VARS)
        if found:
            name, region = found
            if not _REGION.fullmatch(region):
                raise StorageError(f"{name}: not a region name (got {region!r})")
        elif endpoint:
            region = DEFAULT_CUSTOM_REGION
        addressing = env.get("DEEPSAD_S3_ADDRESSING", "").strip().lower() or None
        if addressing is not None and addressing not in ADDRESSING:
            raise StorageError(
                f"DEEPSAD_S3_ADDRESSING: must be one of {', '.join(ADDRESSING)} (got {addressing!r})"
            )
        if addressing is None and endpoint:
            addressing = "path"
        return cls(endpoint, region, addressing)

    def filesystem(self) -> pafs.S3FileSystem:
        """A pyarrow S3 file system for these settings; credentials from the AWS chain."""
        _initialize()
        endpoint, virtual = self.endpoint, self.addressing == "virtual"
        if self.addressing == "path" and not endpoint:
            # pyarrow has no "force path style": name the regional endpoint, which then uses paths.
            endpoint = f"https://s3.{self.region}.amazonaws.com"
        kwargs: dict[str, Any] = {}
        if endpoint:
            parts = urlsplit(endpoint)
            kwargs.update(
                scheme=parts.scheme, endpoint_override=parts.netloc, force_virtual_addressing=virtual
            )
        try:
            return pafs.S3FileSystem(
                region=self.region,
                connect_timeout=CONNECT_TIMEOUT_S,
                retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS),
                # a bucket is infrastructure: a typo must fail, not create (or delete) one
                allow_bucket_creation=False,
                allow_bucket_deletion=False,
                # small objects then go in one PUT instead of a three-request multipart upload
                allow_delayed_open=True,
                **kwargs,
            )
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"S3 ({describe(self)}): cannot configure ({scrub(str(e))})") from e


def _check_endpoint(name: str, value: str) -> str:
    """``scheme://host[:port]`` of an endpoint variable; StorageError (never echoing it whole)."""
    parts = urlsplit(value if "://" in value else f"//{value}")
    shown = f"{parts.scheme}://{parts.hostname or ''}" if parts.scheme else parts.hostname or "?"
    if "@" in parts.netloc:
        raise StorageError(
            f"{name}: credentials must not be part of the endpoint ({shown}); use the AWS chain"
        )
    if parts.scheme not in ("http", "https"):
        raise StorageError(f"{name}: must be http://host[:port] or https://host[:port] (got {shown})")
    try:
        port = parts.port
    except ValueError as e:
        raise StorageError(f"{name}: invalid port in {shown}") from e
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if not _HOST.fullmatch(host):
        raise StorageError(f"{name}: invalid host in {shown}")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise StorageError(
            f"{name}: must be {parts.scheme}://host[:port] without a path or query (got {shown})"
        )
    return f"{parts.scheme}://{parts.netloc}"


_init_lock = threading.Lock()
_initialized = False


def _initialize() -> None:
    """Start pyarrow's S3 support with the SDK log at Fatal (signed requests never reach a log).

    pyarrow finalizes it at exit (an atexit hook of ``pyarrow.fs``); if someone else initialized it
    first (Ray, a user), their settings stand.
    """
    global _initialized
    with _init_lock:
        if _initialized:
            return
        # "already initialized" (by Ray, a user): safe to use, the options of the first caller apply
        with contextlib.suppress(pa.ArrowInvalid):
            pafs.initialize_s3(pafs.S3LogLevel.Fatal)
        _initialized = True


# ------------------------------------------------------------------------------------- messages


def describe(settings: S3Settings) -> str:
    """``endpoint <url>`` for messages (``endpoint AWS S3`` plus the region on AWS)."""
    if settings.endpoint:
        return f"endpoint {settings.endpoint}"
    return f"endpoint AWS S3, region {settings.region}" if settings.region else "endpoint AWS S3"


def describe_filesystem(fs: pafs.FileSystem) -> str:
    """:func:`describe` for a built file system (e.g. one that travelled to a Ray worker)."""
    try:
        options = fs.__reduce__()[1][0]  # how pyarrow pickles it: its options, never our credentials
        endpoint, scheme = options.get("endpoint_override") or "", options.get("scheme") or "https"
        region = options.get("region") or None
    except (AttributeError, IndexError, KeyError, TypeError):
        return "endpoint unknown"
    if endpoint and not endpoint.endswith(".amazonaws.com"):
        return f"endpoint {scheme}://{endpoint}"
    return describe(S3Settings("", region, None))


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with the AWS credentials of the environment, anything shaped like an access key id,
    and signature/credential fields of signed requests replaced by ``***``."""
    env = os.environ if environ is None else environ
    for name in SECRET_VARS:
        secret = env.get(name, "")
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    text = re.sub(r"\b(?:AKIA|ASIA|AROA|AIDA|AGPA|ANPA)[A-Z0-9]{8,}\b", "***", text)
    return re.sub(
        r"(?i)\b(credential|signature|x-amz-security-token|authorization)([=:]\s*)[^\s,;&]+", r"\1\2***", text
    )


_CURL = {
    6: "cannot resolve the host name",
    7: "connection refused",
    28: "timed out",
    35: "TLS handshake failed",
    60: "TLS certificate not trusted",
}
_DENIED = {
    "ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "MISSING_AUTHENTICATION_TOKEN",
    "EXPIRED_TOKEN", "INVALID_CLIENT_TOKEN_ID", "UNRECOGNIZED_CLIENT", "INVALID_SIGNATURE",
}  # fmt: skip


def explain(e: BaseException, *, bucket: str, where: str) -> tuple[str, bool]:
    """A one-line reason for an S3 failure and whether it is one of the well-known cases.

    Well-known: the endpoint cannot be reached (``cannot reach endpoint <url> (connection refused)``),
    the credentials are refused (:data:`ACCESS_DENIED`), the bucket does not exist (``bucket 'b' does
    not exist (endpoint <url>)``). Otherwise the first line of the scrubbed error. ``where`` is the
    endpoint description from :func:`describe`.
    """
    if isinstance(e, FileNotFoundError):
        return "not found", False
    text = scrub(str(e))
    match = re.search(r"AWS Error ([A-Z_]+)", text)
    code = match.group(1) if match else ""
    if code == "NETWORK_CONNECTION" or "curlCode" in text:
        curl = re.search(r"curlCode: (\d+)", text)
        why = _CURL.get(int(curl.group(1)), "network error") if curl else "network error"
        return f"cannot reach {where} ({why})", True
    if code in _DENIED or re.search(r"HTTP status 403\b|InvalidAccessKeyId|SignatureDoesNotMatch", text):
        return ACCESS_DENIED, True
    if code == "NO_SUCH_BUCKET" or re.search(r"Bucket '[^']*' not found|NoSuchBucket", text):
        return f"bucket {bucket!r} does not exist ({where})", True
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    return first[:300], False
