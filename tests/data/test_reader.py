"""Streaming shard reader: exact coverage, equal batches per rank, corrupt data, no pickle, resume."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile

import pytest
from PIL import Image

from imagelora_dist import ImageLoRAError
from imagelora_dist.data.reader import Counters, Cursor, ShardReader, decode_sample, make_loader
from imagelora_dist.data.shards import ShardIndex, ShardInfo, shard_name, write_shard


def _png(i: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (i % 256, (i * 7) % 256, (i * 13) % 256)).save(buf, format="PNG")
    return buf.getvalue()


def _record(i: int) -> dict:
    return {"id": f"s{i}", "task": "grounding", "instruction": f"Click item {i}.", "answer": "(1, 2)",
            "bbox": [1, 1, 5, 5], "point": [3, 3], "element_type": "button", "element_text": str(i),
            "width": 16, "height": 16, "source": "test"}  # fmt: skip


def make_dataset(tmp_path, counts, extra_members=None) -> str:
    """Shards with the given sample counts; sample ids are global and sequential."""
    infos, i = [], 0
    for s, n in enumerate(counts):
        samples = []
        for _ in range(n):
            samples.append({"__key__": f"{i:09d}", "png": _png(i), "json": _record(i)})
            i += 1
        infos.append(write_shard(tmp_path / shard_name("train", s), samples))
    ShardIndex(infos).write(tmp_path)
    return str(tmp_path)


def epoch_ids(path, rank, world, workers, batch=4, epoch=0, skip=0, seed=0, trust=False):
    reader = ShardReader.from_path(path, batch, seed=seed, shuffle_buffer=8, trust_index_urls=trust)
    loader = make_loader(
        reader, rank=rank, world_size=world, epoch=epoch, num_workers=workers, skip_batches=skip
    )
    batches, counters = [], Counters()
    for b in loader:
        batches.append([s["record"]["id"] for s in b["samples"]])
        counters.add(b["stats"])
    return batches, counters


def test_two_ranks_two_workers_cover_every_sample_once(tmp_path):
    path = make_dataset(tmp_path, [13, 7, 11, 9, 8])  # 48 samples, uneven shards
    per_rank = [epoch_ids(path, r, 2, workers=2)[0] for r in range(2)]
    assert [len(b) for b in per_rank] == [6, 6]
    ids = [i for batches in per_rank for b in batches for i in b]
    assert sorted(ids) == sorted(f"s{i}" for i in range(48))


@pytest.mark.parametrize("world", [3, 6])
def test_uneven_shards_give_equal_batch_counts(tmp_path, world):
    path = make_dataset(tmp_path, [20, 3, 17, 10])  # 50 samples: not a multiple of world * batch
    per_rank = [epoch_ids(path, r, world, workers=2, batch=2)[0] for r in range(world)]
    counts = [len(b) for b in per_rank]
    assert len(set(counts)) == 1 and counts[0] == (50 // world) // 2
    ids = [i for batches in per_rank for b in batches for i in b]
    assert len(ids) == len(set(ids)) == world * counts[0] * 2


def test_epochs_reshuffle_shards_and_samples(tmp_path):
    path = make_dataset(tmp_path, [8, 8, 8, 8])
    e0, _ = epoch_ids(path, 0, 1, workers=0, epoch=0)
    e1, _ = epoch_ids(path, 0, 1, workers=0, epoch=1)
    assert sorted(sum(e0, [])) == sorted(sum(e1, []))
    assert e0 != e1
    assert epoch_ids(path, 0, 1, workers=0, epoch=1)[0] == e1  # deterministic


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_yields_exactly_the_unseen_samples(tmp_path, workers):
    path = make_dataset(tmp_path, [9, 14, 5, 12])  # 40 samples -> 10 batches of 4
    full, _ = epoch_ids(path, 0, 1, workers)
    for k in (0, 3, 7, 10):
        rest, _ = epoch_ids(path, 0, 1, workers, skip=k)
        assert rest == full[k:]


def test_cursor_round_trips_through_a_checkpoint(tmp_path):
    path = make_dataset(tmp_path, [10, 6, 8])  # 24 samples -> 2 ranks x 3 batches of 4
    reader = ShardReader.from_path(path, 4, shuffle_buffer=8)
    full = {e: epoch_ids(path, 1, 2, workers=2, epoch=e)[0] for e in (0, 1)}
    cursor = Cursor(world_size=2, num_workers=2, batch_size=4)
    seen = []
    for b in make_loader(reader, rank=1, world_size=2, num_workers=2, cursor=cursor):
        seen.append([s["record"]["id"] for s in b["samples"]])
        cursor.advance(len(b["samples"]), batches_per_epoch=3)
        if len(seen) == 2:
            break  # "crash" after two steps
    saved = json.loads(json.dumps(cursor.to_dict()))
    resumed = Cursor.from_dict(saved)
    rest = [[s["record"]["id"] for s in b["samples"]] for b in make_loader(
        reader, rank=1, world_size=2, num_workers=2, cursor=resumed)]  # fmt: skip
    assert seen + rest == full[0]
    resumed.advance(4, 3)
    assert (resumed.epoch, resumed.batches) == (1, 0)
    nxt = [[s["record"]["id"] for s in b["samples"]] for b in make_loader(
        reader, rank=1, world_size=2, num_workers=2, cursor=resumed)]  # fmt: skip
    assert nxt == full[1]
    with pytest.raises(ImageLoRAError, match="num_workers=2, now 0"):
        make_loader(reader, rank=1, world_size=2, num_workers=0, cursor=resumed)


def _read_layout(path, cursors, batch, workers, stop=None):
    """Every rank's batches from its cursor (the rest of the epoch, or `stop` batches); ids per rank."""
    reader = ShardReader.from_path(path, batch, shuffle_buffer=8)
    world, out = len(cursors), []
    for rank, cursor in enumerate(cursors):
        ids = []
        loader = make_loader(reader, rank=rank, world_size=world, num_workers=workers, cursor=cursor)
        for b in loader:
            ids += [s["record"]["id"] for s in b["samples"]]
            cursor.advance(len(b["samples"]), len(loader))
            if stop is not None and cursor.batches >= stop:
                break
        out.append(ids)
    return out


def test_resume_on_another_layout_reads_the_rest_of_the_epoch_once(tmp_path):
    # 2 ranks x 2 loader workers x batches of 4 read 3 batches each; then the run resumes on 3 ranks with
    # batches of 3 (in-process loading), which read 2 batches each; then 1 rank with 2 workers and
    # batches of 2 finishes the epoch. Checked on the samples actually read from the shards (not on the
    # plan's positions): none twice, and here (58 = 24 + 18 + 8 x 2) every one of the epoch once.
    path = make_dataset(tmp_path, [13, 7, 11, 9, 8, 10])
    first = [Cursor(world_size=2, num_workers=2, batch_size=4) for _ in range(2)]
    seen = sum(_read_layout(path, first, 4, 2, stop=3), [])
    saved = [json.loads(json.dumps(c.to_dict())) for c in first]  # through a checkpoint
    second = [Cursor.from_dict(saved[0]).relayout(3, 0, 3) for _ in range(3)]
    assert second[0].history == [{"world_size": 2, "num_workers": 2, "batch_size": 4, "batches": 3}]
    seen += sum(_read_layout(path, second, 3, 0, stop=2), [])
    third = [Cursor.from_dict(second[0].to_dict()).relayout(1, 2, 2)]
    assert len(third[0].history) == 2
    rest = sum(_read_layout(path, third, 2, 2), [])
    assert (len(seen), len(rest)) == (24 + 18, 16)
    everything = seen + rest
    assert sorted(everything) == sorted(f"s{i}" for i in range(58))
    assert third[0].epoch == 1 and third[0].history == []  # the next epoch is a plain one again
    nxt = _read_layout(path, [Cursor.from_dict(third[0].to_dict())], 2, 2)[0]
    assert sorted(nxt) == sorted(f"s{i}" for i in range(58))


def test_a_resumed_epoch_with_too_little_left_for_every_rank_is_simply_over(tmp_path):
    path = make_dataset(tmp_path, [8, 8])  # 16 samples: 1 rank x 4 batches of 4
    cursor = Cursor(world_size=1, num_workers=0, batch_size=4)
    _read_layout(path, [cursor], 4, 0, stop=3)  # 4 samples left
    late = [cursor.relayout(3, 0, 2) for _ in range(3)]  # 3 ranks x 2 would need 6
    reader = ShardReader.from_path(path, 2, shuffle_buffer=8)
    assert reader.epoch_plan(0, 0, 3, late[0].history).batches_per_rank == 0
    assert _read_layout(path, late, 2, 0) == [[], [], []]


def _truncate_member(tar_path):
    """Cut the tar inside the 4th member's data: the rest of the shard is unreadable."""
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
    cut = members[3].offset_data + members[3].size // 2
    data = open(tar_path, "rb").read()
    open(tar_path, "wb").write(data[:cut])


def test_corrupt_members_are_counted_and_the_epoch_completes(tmp_path):
    path = make_dataset(tmp_path, [8, 8, 8])
    _truncate_member(tmp_path / shard_name("train", 1))  # loses samples 9..15 of shard 1
    # A sample whose image does not decode, in shard 2.
    raw = tmp_path / shard_name("train", 2)
    samples = [{"__key__": f"{i:09d}", "png": _png(i), "json": _record(i)} for i in range(16, 24)]
    samples[2]["png"] = b"\x89PNG\r\n\x1a\nnot really"
    write_shard(raw, samples)
    batches, counters = epoch_ids(path, 0, 1, workers=2)
    assert len(batches) == 6  # the plan's batch count, whatever was lost
    seen = sum(len(b) for b in batches)
    assert counters.undecodable == 1
    assert counters.corrupt >= 6
    assert seen + counters.total == 24


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_payloads_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(str(marker)))
    assert not marker.exists()
    shard = tmp_path / "data" / shard_name("train", 0)
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            members = {"png": _png(i), "json": json.dumps(_record(i)).encode(), "pyd": payload, "pth": payload,
                       "pickle": payload}  # fmt: skip
            if i == 3:
                members["json"] = payload  # a pickle where JSON should be
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ShardIndex([ShardInfo(shard.name, 4)]).write(shard.parent)
    batches, counters = epoch_ids(str(shard.parent), 0, 1, workers=0, batch=4)
    assert not marker.exists()
    assert len(batches[0]) == 3 and counters.undecodable == 1
    # decode_sample itself ignores every non-image, non-json member.
    out = decode_sample({"__key__": "k", "png": _png(0), "json": json.dumps(_record(0)).encode()})
    assert set(out) == {"__key__", "image", "record"}
    assert not marker.exists()


def test_file_and_pipe_urls_only_from_a_trusted_index(tmp_path):
    path = make_dataset(tmp_path, [6, 6])
    index = ShardIndex.read(path)
    for prefix in ("file://", "pipe:cat "):
        shards = [ShardInfo(prefix + os.path.join(path, s.url), s.samples) for s in index.shards]
        other = tmp_path / prefix.strip(":/ ")
        ShardIndex(shards).write(other)
        with pytest.raises(ImageLoRAError, match="not a plain relative name"):
            epoch_ids(str(other), 0, 1, workers=0, batch=3)
        batches, _ = epoch_ids(str(other), 0, 1, workers=0, batch=3, trust=True)
        assert sorted(sum(batches, [])) == sorted(f"s{i}" for i in range(12))


def test_index_from_untrusted_shards_cannot_run_commands(tmp_path):
    marker = tmp_path / "pwned"
    path = make_dataset(tmp_path / "ds", [4])
    ShardIndex([ShardInfo(f"pipe:touch {marker}; cat {path}/train-000000.tar", 4)]).write(path)
    with pytest.raises(ImageLoRAError):
        epoch_ids(path, 0, 1, workers=0, batch=2)
    ShardIndex([ShardInfo("../../etc/passwd", 4)]).write(path)
    with pytest.raises(ImageLoRAError):
        epoch_ids(path, 0, 1, workers=0, batch=2)
    assert not marker.exists()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_oversized_member_bad_record_tiff_and_compressed_shard_are_counted(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    no_instruction = {k: v for k, v in _record(3).items() if k != "instruction"}
    members = []
    for i, (img, rec) in enumerate([(_png(0), _record(0)), (_png(1), _record(1)), (tiff.getvalue(), _record(2)),
                                    (_png(3), no_instruction)]):  # fmt: skip
        members += [(f"{i:09d}.png", img), (f"{i:09d}.json", json.dumps(rec).encode())]
    members[2] = ("000000001.json", b" " * (2 << 20))  # a 2 MiB "json": never read
    _tar(ds / "train-000000.tar", members)
    import gzip

    (ds / "train-000001.tar").write_bytes(gzip.compress((ds / "train-000000.tar").read_bytes()))
    ShardIndex([ShardInfo("train-000000.tar", 4), ShardInfo("train-000001.tar", 4)]).write(ds)
    batches, counters = epoch_ids(str(ds), 0, 1, workers=0, batch=4)
    assert len(batches) == 2
    assert sorted(sum(batches, [])) == ["s0"]
    assert counters.undecodable == 2  # oversized member, TIFF
    assert counters.incomplete == 1  # record without an instruction
    assert counters.corrupt == 4  # the gzip shard is refused as a whole


def test_index_and_shards_from_an_object_store(tmp_path):
    import fsspec

    make_dataset(tmp_path, [5, 3])
    fs = fsspec.filesystem("memory")
    for name in ("index.json", "train-000000.tar", "train-000001.tar"):
        fs.pipe(f"/store/ds/{name}", (tmp_path / name).read_bytes())
    batches, counters = epoch_ids("memory://store/ds", 0, 1, workers=0, batch=2)
    assert sorted(sum(batches, [])) == sorted(f"s{i}" for i in range(8)) and counters.total == 0


def test_missing_shard_and_too_few_samples(tmp_path):
    path = make_dataset(tmp_path, [4, 4])
    os.remove(os.path.join(path, shard_name("train", 1)))
    batches, counters = epoch_ids(path, 0, 1, workers=0, batch=2)
    assert len(batches) == 4 and counters.missing == 4
    with pytest.raises(ImageLoRAError, match="cannot give every one of 8 ranks"):
        ShardReader.from_path(path, 2).epoch_plan(0, 0, 8)


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch):
    """Retries wait milliseconds here (the waits themselves are checked where they matter)."""
    from imagelora_dist.data import reader

    monkeypatch.setattr(reader, "OPEN_BACKOFF_S", 0.001)


def _failing_opens(monkeypatch, fails: int, name: str) -> list[str]:
    """Make opening shard `name` raise OSError `fails` times (then open it); the opened URLs are listed."""
    from imagelora_dist.data import reader

    real, opened = reader.open_url, []

    def open_url(url):
        opened.append(url)
        if url.endswith(name) and opened.count(url) <= fails:
            raise PermissionError(
                f"ExpiredToken: the session token has expired\n(attempt {opened.count(url)})"
            )
        return real(url)

    monkeypatch.setattr(reader, "open_url", open_url)
    return opened


def test_a_shard_that_fails_to_open_is_retried_with_backoff(tmp_path, monkeypatch):
    from imagelora_dist.data import reader

    path = make_dataset(tmp_path, [4, 4])
    waits = []
    monkeypatch.setattr(reader.time, "sleep", waits.append)
    opened = _failing_opens(monkeypatch, fails=reader.OPEN_TRIES - 1, name=shard_name("train", 1))
    monkeypatch.setattr(reader, "OPEN_BACKOFF_S", 0.5)
    batches, counters = epoch_ids(path, 0, 1, workers=0, batch=2)
    assert sorted(sum(batches, [])) == sorted(f"s{i}" for i in range(8)) and counters.total == 0
    assert opened.count(os.path.join(path, shard_name("train", 1))) == reader.OPEN_TRIES
    assert waits == [0.5 * 2**k for k in range(reader.OPEN_TRIES - 1)]  # doubling, bounded in number


def test_a_shard_that_never_opens_is_counted_named_and_bounded(tmp_path, monkeypatch):
    from imagelora_dist.data.drops import DataLossError, check_dropped
    from imagelora_dist.data.reader import OPEN_TRIES, ShardStream

    path = make_dataset(tmp_path, [4, 4])
    lost_url = os.path.join(path, shard_name("train", 1))
    opened = _failing_opens(monkeypatch, fails=99, name=shard_name("train", 1))
    stream = ShardStream(ShardReader.from_path(path, 2, shuffle_buffer=8))
    batches = list(stream)
    assert opened.count(lost_url) == OPEN_TRIES
    assert sum(len(b["samples"]) for b in batches) == 4
    assert [u for b in batches for u in b["lost_shards"]] == stream.lost_shards
    assert stream.drop_counts() == {"corrupt": 0, "undecodable": 0, "incomplete": 0, "missing": 4,
                                    "too_long": 0, "malformed": 0, "read": 8}  # fmt: skip
    (lost,) = stream.lost_shards
    assert lost.startswith(f"{lost_url}: ExpiredToken: the session token has expired (attempt 3)")
    assert lost.endswith(f"(after {OPEN_TRIES} tries)") and "\n" not in lost
    counts, read = stream.drop_counts(), stream.drop_counts()["read"]
    with pytest.raises(DataLossError) as info:
        check_dropped(counts, read, 0.0, stream.lost_shards, where="eval")
    line = str(info.value)
    assert line.startswith(
        "eval: 4 of the 8 samples read so far were dropped (missing 4); could not read shard "
    )
    assert lost_url in line and "data.max_dropped_fraction=0 " in line and "\n" not in line
    with pytest.raises(DataLossError, match="50.0%, more than data.max_dropped_fraction=0.49"):
        check_dropped(counts, read, 0.49, stream.lost_shards, where="eval")
    check_dropped(counts, read, 0.5, stream.lost_shards, where="eval")  # allowed: no error


class _BreaksOff(io.RawIOBase):
    """A stream that raises OSError (a reset connection) once `limit` bytes were read."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.pos, self.limit = data, 0, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.pos >= self.limit:
            raise ConnectionResetError("connection reset by peer")
        n = min(len(buf), len(self.data) - self.pos, self.limit - self.pos)
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_a_stream_that_breaks_off_is_reopened_and_read_on_from_there(tmp_path, monkeypatch):
    from imagelora_dist.data import reader

    path = make_dataset(tmp_path, [6])
    shard = os.path.join(path, shard_name("train", 0))
    opens = []

    def open_url(url):
        opens.append(url)
        data = open(url, "rb").read()
        return io.BufferedReader(_BreaksOff(data, len(data) // 2 if len(opens) == 1 else len(data)))

    monkeypatch.setattr(reader, "open_url", open_url)
    batches, counters = epoch_ids(path, 0, 1, workers=0, batch=2)
    assert opens == [shard, shard]
    ids = sum(batches, [])
    assert sorted(ids) == [f"s{i}" for i in range(6)] and len(ids) == 6 and counters.total == 0
