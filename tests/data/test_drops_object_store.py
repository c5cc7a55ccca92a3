"""Dropped data on an object store (moto's S3 server on 127.0.0.1): a shard deleted mid-run, a corrupt
member, a credential that stops working (and one refreshed while the reader backs off). Each ends in one
line naming what was lost, unless `data.max_dropped_fraction` allows it."""

from __future__ import annotations

import json

import boto3
import pytest
import requests
from test_reader import _png, _record

from imagelora_dist.data import reader as reader_module
from imagelora_dist.data.drops import DataLossError, check_dropped
from imagelora_dist.data.reader import OPEN_TRIES, ShardReader, ShardStream
from imagelora_dist.data.shards import ShardIndex, forget_filesystem, shard_name, write_shard

BUCKET = "mnode"  # the s3_server fixture's bucket
ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


@pytest.fixture
def store(s3_server, tmp_path, monkeypatch, request):
    """Three shards of 4 samples under a fresh prefix, the reader's AWS_* variables, and an S3 client."""
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(reader_module, "OPEN_BACKOFF_S", 0.001)
    client = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    prefix = f"drops/{request.node.name}"
    infos = []
    for s in range(3):
        samples = [
            {"__key__": f"{i:09d}", "png": _png(i), "json": _record(i)} for i in range(4 * s, 4 * s + 4)
        ]
        infos.append(write_shard(tmp_path / shard_name("train", s), samples))
        client.upload_file(str(tmp_path / infos[-1].url), BUCKET, f"{prefix}/{infos[-1].url}")
    ShardIndex(infos).write(tmp_path)
    client.upload_file(str(tmp_path / "index.json"), BUCKET, f"{prefix}/index.json")
    url = f"s3://{BUCKET}/{prefix}"
    forget_filesystem(url)  # this test's credentials, not a client made before
    yield url, client, prefix, tmp_path
    forget_filesystem(url)


def _stream(url: str) -> ShardStream:
    return ShardStream(ShardReader.from_path(url, 2, shuffle_buffer=0))


def test_a_shard_deleted_mid_run_stops_with_its_name_unless_allowed(store):
    url, client, prefix, _ = store
    stream = _stream(url)
    order = stream.reader.shard_order(0)
    batches = iter(stream)
    first = next(batches)  # reading has begun: now the last shard of the epoch goes away
    gone = stream.reader.urls[order[-1]]
    client.delete_object(Bucket=BUCKET, Key=f"{prefix}/{gone.rsplit('/', 1)[1]}")
    rest = list(batches)
    assert len(first["samples"]) + sum(len(b["samples"]) for b in rest) == 8
    counts = stream.drop_counts()
    assert (counts["missing"], counts["read"]) == (4, 12)
    (lost,) = stream.lost_shards
    assert lost.startswith(f"{gone}: ") and "does not exist" in lost and f"after {OPEN_TRIES} tries" in lost
    with pytest.raises(DataLossError, match=f"4 of the 12 samples .*could not read shard {gone}: "):
        check_dropped(counts, counts["read"], 0.0, stream.lost_shards, where="train")
    check_dropped(counts, counts["read"], 0.34, stream.lost_shards, where="train")  # 1/3 allowed


def test_a_corrupt_member_is_counted_and_bounded(store):
    url, client, prefix, local = store
    samples = [{"__key__": f"{i:09d}", "png": _png(i), "json": _record(i)} for i in range(4, 8)]
    samples[2]["png"] = b"\x89PNG\r\n\x1a\n truncated"  # one member that does not decode
    write_shard(local / shard_name("train", 1), samples)
    client.upload_file(str(local / shard_name("train", 1)), BUCKET, f"{prefix}/{shard_name('train', 1)}")
    stream = _stream(url)
    assert sum(len(b["samples"]) for b in stream) == 11
    counts = stream.drop_counts()
    assert (counts["undecodable"], counts["read"], stream.lost_shards) == (1, 12, [])
    with pytest.raises(
        DataLossError, match=r"^train: 1 of the 12 samples read so far were dropped \(undecodable 1\); "
    ):
        check_dropped(counts, counts["read"], 0.0, stream.lost_shards, where="train")
    check_dropped(counts, counts["read"], 0.1, stream.lost_shards, where="train")


@pytest.fixture
def iam_auth(s3_server, monkeypatch):
    """The server checks signatures from here on (moto's IAM mode); yields a function making a valid key
    (user with every permission) and the IAM client. Checking is switched off again at the end."""
    endpoint = s3_server["AWS_ENDPOINT_URL"]
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    made = []

    def new_key() -> dict[str, str]:
        user = f"reader-{len(made)}-{id(made)}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=ALLOW_ALL)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        made.append((user, key["AccessKeyId"]))
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

    keys = [new_key(), new_key()]  # made before checking starts (the default key is no IAM user)
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield keys, iam, made
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()


def test_a_credential_that_stops_working_stops_the_run_naming_the_shard(store, iam_auth, monkeypatch):
    url = store[0]
    (good, _), iam, made = iam_auth
    for k, v in good.items():
        monkeypatch.setenv(k, v)
    stream = _stream(url)  # reads index.json with the good key
    order = stream.reader.shard_order(0)
    batches = iter(stream)
    next(batches)
    # The key is revoked (as an expired session token is refused) while the reader is on its first shard.
    revoker = boto3.client("iam", endpoint_url=iam.meta.endpoint_url, region_name="us-east-1",
                           aws_access_key_id=good["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=good["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    revoker.delete_access_key(UserName=made[0][0], AccessKeyId=made[0][1])
    list(batches)
    counts = stream.drop_counts()
    assert counts["missing"] == 8  # the two shards opened after the revocation
    assert [u.split(": ", 1)[0] for u in stream.lost_shards] == [stream.reader.urls[i] for i in order[1:]]
    assert all("ACCESS_DENIED" in u or "InvalidAccessKeyId" in u for u in stream.lost_shards), (
        stream.lost_shards
    )
    with pytest.raises(
        DataLossError, match=f"could not read shard {stream.reader.urls[order[1]]}: .*1 more shard"
    ):
        check_dropped(counts, counts["read"], 0.0, stream.lost_shards, where="train")


def test_a_credential_refreshed_during_the_backoff_loses_nothing(store, iam_auth, monkeypatch):
    url, local = store[0], store[3]
    (old, fresh), _, _ = iam_auth
    for k, v in {**old, "AWS_SECRET_ACCESS_KEY": "rotated-away"}.items():
        monkeypatch.setenv(k, v)  # the reader's secret no longer matches its key: every request is refused
    waits = []

    def refresh(tries: int) -> None:  # a credential helper writes the new key while the reader waits
        waits.append(tries)
        for k, v in fresh.items():
            monkeypatch.setenv(k, v)

    monkeypatch.setattr(reader_module, "_wait_before_retry", refresh)
    reader = ShardReader(ShardIndex.read(local), url, 2, shuffle_buffer=0)  # the index as read before
    stream = ShardStream(reader)
    ids = [s["record"]["id"] for b in stream for s in b["samples"]]
    assert sorted(ids) == sorted(f"s{i}" for i in range(12))
    assert stream.drop_counts()["missing"] == 0 and stream.lost_shards == [] and waits == [1]
