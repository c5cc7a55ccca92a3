"""A private S3 endpoint for tests: moto's S3 server on 127.0.0.1 (or `host=`; a free port), stopped at the end.

    with moto_s3("bucket-a", "bucket-b") as env:   # AWS_* for clients: keys, region, AWS_ENDPOINT_URL
        ...

pyarrow (Ray Train's storage, the shard reader), boto3 and MLflow's S3 artifact store all read the endpoint
from AWS_ENDPOINT_URL. The yielded variables are not put into os.environ here: the caller decides who gets
them (this process, a job's runtime env).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def moto_s3(*buckets: str, host: str = "127.0.0.1") -> Iterator[dict[str, str]]:
    """AWS_* variables of a moto S3 server on `host` (127.0.0.1, or a test bridge's address that network
    namespaces reach) holding empty `buckets`; the server stops at the end."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        }
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield env
    finally:
        server.stop()
