"""Range reads from ``s3://`` with obstore (Rust object_store), when it is installed.

obstore makes a ranged GET for about a tenth of s3fs's client CPU (78 us against about
1,000 us per request, issue 13), so :class:`~shardprune.storage.Storage` reads sample
bytes through it for ``s3://`` URLs when ``pip install 'shardprune[obstore]'`` was run.
Writes, listings and other protocols stay on fsspec.

obstore's client is not fork-safe; a reader is built lazily in the process that uses it
(the loader's workers start by forkserver or spawn, never fork). Its own retries are
off (``max_retries=0``): :mod:`shardprune.retry` is the one retry layer. obstore reports
an HTTP failure as a ``GenericError`` whose text carries the status in a fixed form
(``status code: 503``) and a transport failure's kind (``kind: Connect``); they are turned
into :class:`HTTPStatusError` / ``ConnectionError`` here so the retry layer decides by
status code, as for every other client.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

_STATUS = re.compile(r"status code: (\d{3})")
_TRANSPORT = re.compile(r"kind: (Connect|Request|Timeout|Io|Decode|Interrupted)\b")
#: s3fs-style options this reader understands; any other option keeps the URL on s3fs,
#: which knows what it means.
_KNOWN = frozenset({"key", "secret", "token", "anon", "client_kwargs", "config_kwargs"})


class HTTPStatusError(OSError):
    """An HTTP error answer, with its status code (read by :func:`shardprune.retry.status_code`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def available() -> bool:
    """Whether obstore can be imported."""
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


def supports(url: str, storage_options: dict[str, Any]) -> bool:
    """Whether :class:`ObstoreReader` can read ``url`` with these s3fs-style options."""
    if not url.startswith("s3://") or "::" in url:
        return False
    if set(storage_options) - _KNOWN:
        return False
    client_kwargs = storage_options.get("client_kwargs", {})
    return isinstance(client_kwargs, dict) and not set(client_kwargs) - {"endpoint_url", "region_name"}


class ObstoreReader:
    """Ranged GETs below one ``s3://bucket/prefix`` root.

    Args:
        url: ``s3://bucket/prefix``.
        storage_options: s3fs-style options (``key``, ``secret``, ``token``, ``anon``,
            ``client_kwargs={"endpoint_url", "region_name"}``); the standard ``AWS_*``
            variables fill in what they leave out.
    """

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        from obstore.store import S3Store

        bucket, _, prefix = url[len("s3://") :].partition("/")
        client_kwargs = dict(storage_options.get("client_kwargs", {}))
        config: dict[str, Any] = {}
        endpoint = client_kwargs.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL"
        )
        if endpoint:
            config["endpoint"] = endpoint
        region = client_kwargs.get("region_name") or os.environ.get("AWS_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION"
        )
        if region:
            config["region"] = region
        for ours, theirs in (("key", "access_key_id"), ("secret", "secret_access_key"), ("token", "session_token")):
            if storage_options.get(ours):
                config[theirs] = storage_options[ours]
        if storage_options.get("anon"):
            config["skip_signature"] = True
        self._store = S3Store(
            bucket,
            prefix=prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options={"allow_http": bool(endpoint and str(endpoint).startswith("http://"))},
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=0)},
        )

    def read(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``key`` (relative to the root) from ``offset``: one GET."""
        import obstore

        try:
            return bytes(obstore.get_range(self._store, key, start=offset, length=length))
        except Exception as exc:  # noqa: BLE001 - translated, or re-raised unchanged
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    def read_many(self, key: str, offsets: list[int], lengths: list[int]) -> list[bytes]:
        """Several ranges of ``key``, one GET each (never coalesced), up to 10 in flight in
        obstore's own runtime: about half the client CPU of one Python call per range."""
        import obstore

        try:
            parts = obstore.get_ranges(self._store, key, starts=offsets, lengths=lengths, coalesce=0)
        except Exception as exc:  # noqa: BLE001 - translated, or re-raised unchanged
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        return [bytes(p) for p in parts]


def _translate(exc: Exception) -> Exception:
    """obstore's exception as the builtin the retry layer classifies (see the module docstring)."""
    from obstore.exceptions import GenericError, PermissionDeniedError, UnauthenticatedError

    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
        return PermissionError(str(exc).split("\n", 1)[0])
    if isinstance(exc, GenericError):
        text = str(exc)
        found = _STATUS.search(text)
        if found:
            return HTTPStatusError(int(found.group(1)), text.split("\n", 1)[0])
        if _TRANSPORT.search(text):
            return ConnectionError(text.split("\n", 1)[0])
    return exc
