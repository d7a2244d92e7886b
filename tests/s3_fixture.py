"""pytest plugin: a real S3 server for the tests (moto's server mode on 127.0.0.1), module-scoped.

Use with `pytest_plugins = ["tests.s3_fixture"]`; the `s3` fixture yields `s3://<bucket>` and points every
client at the server the standard way (AWS_ENDPOINT_URL and dummy credentials, restored afterwards)."""

from __future__ import annotations

import os
import socket

import pytest

BUCKET = "agglo-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS_* variables point every client at it."""
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # fsspec caches filesystem instances by their arguments, not the environment: one made for another
    # module's server (another port) must not be reused
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
