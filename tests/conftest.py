"""Shared fixtures: tiny models of every family and real processor-made batches."""

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

from imagelora_dist.data.collate import Sample, collate  # noqa: E402
from imagelora_dist.data.screens import make_screen  # noqa: E402
from imagelora_dist.models import TINY_FAMILIES, build_tiny_vlm  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Families whose processor accepts several images in one sample.
MULTI_IMAGE = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "gemma3", "idefics3"}


@pytest.fixture(scope="module")
def local_ray():
    """A local 2-CPU Ray for the tests of one module, started as the CLI starts one; shut down after them."""
    import ray

    from imagelora_dist.config import load_config
    from imagelora_dist.ray_runtime import ensure_ray

    assert ensure_ray(load_config(None, ["ray.num_cpus=2"]), log=lambda m: None)
    yield
    ray.shutdown()


@pytest.fixture(params=TINY_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny(family):
    model, processor = build_tiny_vlm(family, seed=0)
    return model, processor


def image_batch(
    processor, n: int = 2, images_per_sample: int = 1, padding_side: str = "right", seed: int = 0
):
    """A batch of n grounding samples of different lengths, answer-only labels."""
    processor.tokenizer.padding_side = padding_side
    samples = []
    for i in range(n):
        screens = [make_screen(seed * 1000 + i * 10 + j) for j in range(images_per_sample)]
        instruction = screens[0].instruction + " Please answer quickly." * i
        samples.append(Sample(instruction, screens[0].answer, [s.image for s in screens]))
    return collate(processor, samples)


def text_batch(processor, padding_side: str = "right"):
    """A text-only batch (no images anywhere)."""
    processor.tokenizer.padding_side = padding_side
    samples = [Sample("What is 12 plus 30?", "42"), Sample("Name a color of the sky on a clear day.", "blue")]
    return collate(processor, samples)


def visual_mask(batch, spec) -> torch.Tensor:
    """Independent visual mask: positions whose id is the config's image or video token."""
    ids = batch["input_ids"]
    mask = ids == spec.image_token_id
    if spec.video_token_id is not None:
        mask |= ids == spec.video_token_id
    return mask


# Fixtures that start Ray, train with DeepSpeed or run a whole pipeline: a test using one is an
# integration test (`make test-fast` leaves those out; `make test` and CI run everything).
INTEGRATION_FIXTURES = frozenset(
    {"local_ray", "cluster", "trained", "pretrained", "reference", "two_workers", "lora_zero2", "s3_storage"}
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
