"""A real S3-compatible server on 127.0.0.1 for tests: moto's threaded server mode.

Use the ``s3_server`` fixture from ``tests/conftest.py``; this module holds the code so
other helpers can start a server directly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    """A running server with one empty bucket.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``.
        bucket: Name of a bucket created for the session.
        storage_options: fsspec/s3fs options reaching the server.
    """

    endpoint_url: str
    bucket: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def url(self, prefix: str = "") -> str:
        """``s3://bucket/prefix``; a fresh random prefix when none is given."""
        return f"s3://{self.bucket}/{prefix or uuid.uuid4().hex}"

    def options_via(self, endpoint_url: str) -> dict[str, Any]:
        """:attr:`storage_options` reaching the server through ``endpoint_url`` (a proxy in front of it).

        No client options for retries: Storage turns botocore's and s3fs's off itself.
        """
        opts = dict(self.storage_options)
        opts["client_kwargs"] = dict(opts["client_kwargs"], endpoint_url=endpoint_url)
        return opts


@contextmanager
def running_s3_server(bucket: str = "shardprune-test") -> Iterator[S3Server]:
    """Start moto's server on a free port of 127.0.0.1, create ``bucket``, stop on exit."""
    import logging

    from moto.server import ThreadedMotoServer

    # The server logs every request through werkzeug; tests only want failures.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        options: dict[str, Any] = {
            "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": endpoint, "region_name": CREDENTIALS["AWS_DEFAULT_REGION"]},
        }
        import boto3

        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        ).create_bucket(Bucket=bucket)
        yield S3Server(endpoint_url=endpoint, bucket=bucket, storage_options=options)
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
