"""Shared fixtures: tiny models of every family and a local Ray (batches: vlm_batches.py).

The tests mirror the package (tests/adapter, models, probe, data, eval, train, app, deploy); whole-system
tests live in tests/integration. Integration tests (that folder, or any test using a fixture below that
starts Ray, trains with DeepSpeed or runs a pipeline) carry the `integration` marker: `make test-fast`
runs the rest."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller notices a finished (or failed) worker group at its next health check, 2 s apart by
# default: every training run in the suite waited for one. Tests only; a real run keeps the default.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

import pytest  # noqa: E402
import torch  # noqa: E402

from imagelora_dist.models import TINY_FAMILIES, build_tiny_vlm  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def local_ray():
    """A local 2-CPU Ray for the tests of one module, started as the CLI starts one; shut down after them."""
    import ray

    from imagelora_dist.config import load_config
    from imagelora_dist.ray_runtime import ensure_ray

    assert ensure_ray(load_config(None, ["ray.num_cpus=2"]), log=lambda m: None)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_nodes(tmp_path_factory):
    """A Ray head (0 CPUs) and two 1-CPU worker nodes, separate raylets on this machine tagged `node_w1` and
    `node_w2`, each with its own temp and scratch dir (tests/ray_cluster.py); where the machine allows mount
    namespaces, the worker nodes do not see pytest's tmp dirs (the driver's side). Stopped and checked after
    the module. Module-scoped: one cluster for all multi-node tests (tests/integration/test_multinode.py);
    its node-loss tests kill `node_w2` and start a fresh one in its place (`replace_worker`), so the cluster
    is whole again for whatever runs next."""
    from ray_cluster import private_ray_nodes

    hide = [str(tmp_path_factory.getbasetemp())]
    with private_ray_nodes(workers=2, cpus_per_worker=1, hide=hide) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def s3_server():
    """AWS_* variables of a private moto S3 server on 127.0.0.1 (tests/s3_server.py) with the bucket `mnode`;
    not put into os.environ. Stopped after the module."""
    from s3_server import moto_s3

    with moto_s3("mnode") as env:
        yield env


@pytest.fixture(params=TINY_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny(family):
    model, processor = build_tiny_vlm(family, seed=0)
    return model, processor


# Fixtures that start Ray, train with DeepSpeed or run a whole pipeline: a test using one is an
# integration test (`make test-fast` leaves those out; `make test` and CI run everything).
INTEGRATION_FIXTURES = frozenset(
    {
        "local_ray",
        "cluster",
        "trained",
        "pretrained",
        "reference",
        "two_workers",
        "lora_zero2",
        "s3_storage",
        "ray_nodes",
        "s3_server",
    }
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        in_folder = "integration" in item.path.relative_to(config.rootpath).parts
        if in_folder or INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
