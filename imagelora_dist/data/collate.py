"""Turn (images, instruction, answer) samples into model inputs with loss on answer tokens only."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from imagelora_dist.data.answer_formats import (
    MIN_PIXELS_FLOOR,
    POINT,
    check_answer_format,
    fitted_size,
    sample_text,
)
from imagelora_dist.data.packing import pack_batch, screen_groups
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.prefix_cache import sample_digests
from imagelora_dist.models.vision_cache import is_pixel_stand_in, pixel_digests, pixel_stand_in

IGNORE_INDEX = -100


@dataclass
class Sample:
    """One chat turn: user images + instruction, assistant answer (None for a generation prompt)."""

    instruction: str
    answer: str | None = None
    images: list[Image.Image] = field(default_factory=list)


def _messages(sample: Sample) -> list[dict]:
    content = [{"type": "image"} for _ in sample.images] + [{"type": "text", "text": sample.instruction}]
    msgs = [{"role": "user", "content": content}]
    if sample.answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": sample.answer}]})
    return msgs


@dataclass(frozen=True)
class KnownImages:
    """A batch's images as the (Qwen) image processor described them before, for a batch sent without pixels."""

    grids: torch.Tensor  # (images, 3) int64: the image_grid_thw rows, in batch order
    digests: tuple[str, ...]  # their pixel digests (models/vision_cache.py)
    patch_dim: int
    dtype: torch.dtype
    mm_token_type_ids: bool  # the processor also returns mm_token_type_ids


def _encode_known_images(processor: object, texts: list[str], known: KnownImages) -> dict[str, torch.Tensor]:
    """What the processor returns for `texts` with images of `known` grids, pixels replaced by a stand-in."""
    placeholders = sum(text.count(processor.image_token) for text in texts)
    if placeholders != len(known.grids):
        raise ImageLoRAError(
            f"collate: {placeholders} image placeholders in the text, {len(known.grids)} known images"
        )
    # The processor's own expansion of each placeholder, from the grids it reported for these images.
    grids = {"image_grid_thw": known.grids}
    replacements = [processor.replace_image_token(grids, i) for i in range(len(known.grids))]
    expanded, _ = processor.get_text_with_replacements(list(texts), replacements)
    # The processor itself would refuse image tokens without images: its tokenizer is what it calls.
    batch = dict(processor.tokenizer(expanded, padding=True, return_tensors="pt"))
    if known.mm_token_type_ids:
        batch["mm_token_type_ids"] = torch.tensor(
            processor.create_mm_token_type_ids(batch["input_ids"].tolist())
        )
    patches = int(known.grids.prod(-1).sum())
    batch["pixel_values"] = pixel_stand_in(patches, known.patch_dim, known.dtype)
    batch["image_grid_thw"] = known.grids
    return batch


def collate(
    processor: object,
    samples: Sequence[Sample],
    *,
    known_images: KnownImages | None = None,
    **processor_kwargs: object,
) -> dict[str, torch.Tensor]:
    """Chat template + processor; labels are the answer tokens (and the end-of-turn after them).

    `processor_kwargs` go to the processor call (e.g. an image-processor `size` pixel budget). With
    `known_images` the image processor does not run: see `BatchCollator.features_cached`.
    """
    if not samples:
        raise ImageLoRAError("collate got no samples")
    prompts = [
        processor.apply_chat_template(
            _messages(Sample(s.instruction, None, s.images)), add_generation_prompt=True, tokenize=False
        )
        for s in samples
    ]
    texts = [
        processor.apply_chat_template(_messages(s), tokenize=False) if s.answer is not None else p
        for s, p in zip(samples, prompts, strict=True)
    ]
    images = [list(s.images) for s in samples]
    kwargs: dict = {"text": texts, "padding": True, "return_tensors": "pt", **processor_kwargs}
    if any(images):
        # Per-sample lists: a text-only sample (an empty list) may share a batch with image samples.
        kwargs["images"] = images
    if known_images is not None:
        batch = _encode_known_images(processor, texts, known_images)
    else:
        batch = dict(processor(**kwargs))
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids))
    labels = torch.full_like(ids, IGNORE_INDEX)
    tokenizer = processor.tokenizer
    for i, (s, prompt, text) in enumerate(zip(samples, prompts, texts, strict=True)):
        if s.answer is None:
            continue
        if not text.startswith(prompt):
            raise ImageLoRAError(
                "chat template: the full conversation does not start with the generation prompt"
            )
        answer_ids = tokenizer(text[len(prompt) :], add_special_tokens=False)["input_ids"]
        real = mask[i].nonzero().squeeze(1)
        last = int(real[-1]) + 1
        n = len(answer_ids)
        # Check rather than assume: the answer tokens must be exactly the tail of the real tokens.
        if n == 0 or ids[i, last - n : last].tolist() != answer_ids:
            raise ImageLoRAError(
                f"sample {i}: answer tokens not found at the end of the sequence (tokenizer merge?)"
            )
        labels[i, last - n : last] = ids[i, last - n : last]
    batch["labels"] = labels
    return batch


def fit_pixels(image: Image.Image, max_pixels: int | None) -> Image.Image:
    """Downscale (never upscale) so width*height <= max_pixels, keeping the aspect ratio."""
    size = fitted_size(image.width, image.height, max_pixels)
    return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)


# The image of the label-free filler row that `vision_every_batch` adds to a batch without images.
FILLER_SIZE = 56
# Images whose processor output the collator remembers for `features_cached` (two short hashes and a grid each).
SEEN_IMAGES_CAP = 200_000


class BatchCollator:
    """Decoded shard samples -> model inputs, with the token counts the FLOPs accounting needs.

    Images are fitted to `max_pixels`; a sample longer than `max_length` tokens is dropped and counted
    (`too_long`) rather than truncated, because a cut through an image span breaks the model's
    feature/placeholder match and a cut answer trains on nothing. A record with `"text_only": true`
    becomes a sample without image (its shard member is a placeholder). With `vision_every_batch`, a batch
    whose samples all lack images gets one extra row (a blank image, no labels) so the vision tower runs
    in every step: when it is trained (method `full`), every rank must produce the same gradients in the
    same order, or ZeRO's bucketed reduction would mix them up; under ZeRO-3 on several ranks the frozen
    tower is sharded too, and a rank that skipped it would break the others' collective weight gathers.
    """

    def __init__(
        self,
        processor: object,
        visual_token_ids: Sequence[int],
        *,
        max_pixels: int | None = None,
        max_length: int | None = None,
        vision_every_batch: bool = False,
        image_digests: bool = False,
        sample_digests: bool = False,
        answer_format: str = POINT,
        targets_per_sample: int = 1,
    ) -> None:
        self.processor = processor
        # Up to this many consecutive targets of one screenshot share one sequence (data/packing.py).
        self.targets_per_sample = targets_per_sample
        if targets_per_sample > 1 and sample_digests:
            raise ImageLoRAError("the prefix cache's per-sequence keys cannot describe packed targets")
        # Grounding answers (and prompts) in this format, built from each record (data/answer_formats.py).
        # (a processor without Qwen's resize fails here, not mid-epoch)
        self.answer_format = check_answer_format(answer_format, processor)
        self.malformed = 0
        self.image_digests = image_digests
        self.sample_digests = sample_digests
        self.visual_token_ids = torch.tensor(list(visual_token_ids))
        self.max_pixels = max_pixels
        self.max_length = max_length
        self.vision_every_batch = vision_every_batch
        self.processor_kwargs: dict = {}
        image_processor = getattr(processor, "image_processor", None)
        if max_pixels is not None and hasattr(image_processor, "merge_size"):
            # Dynamic-resolution (Qwen) processors resize to their own pixel range: make it ours.
            min_pixels = min(max_pixels, MIN_PIXELS_FLOOR)
            self.processor_kwargs["size"] = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        # Set by an in-process training loop with the vision cache: does the cache hold the features of
        # the image with this pixel digest? A batch whose every image it holds skips the image processor
        # (resize, normalize, patchify; bench/suite.py's `-noskip` row measures it) and carries a
        # zero-stride stand-in for pixel_values, which the cached tower never reads.
        self.features_cached: Callable[[str], bool] | None = None
        self.skipped_batches = 0
        # image content hash -> (pixel digest, grid), learnt when the processor first ran on the image;
        # oldest first, capped at SEEN_IMAGES_CAP entries
        self._seen: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._pixel_format: tuple[int, torch.dtype, bool] | None = None  # patch_dim, dtype, mm_token_type_ids

    def samples(self, decoded: Sequence[dict]) -> list[Sample]:
        """Chat samples from decoded records (`instruction`, `answer` in `answer_format`) and fitted images."""
        out = []
        for d in decoded:
            instruction, answer = sample_text(
                d["record"], self.answer_format, self.processor, self.max_pixels
            )
            images = [] if d["record"].get("text_only") is True else [fit_pixels(d["image"], self.max_pixels)]
            out.append(Sample(instruction, answer, images))
        return out

    def _well_formed(self, decoded: Sequence[dict]) -> list[dict]:
        """The decoded samples whose answer text can be built; the others (a grounding record without a
        readable box or size, in a native format) are dropped and counted in `malformed`."""
        if self.answer_format == POINT:
            return list(decoded)
        keep = []
        for d in decoded:
            try:
                sample_text(d["record"], self.answer_format, self.processor, self.max_pixels)
            except (KeyError, TypeError, ValueError):
                self.malformed += 1
                continue
            keep.append(d)
        return keep

    def __call__(self, decoded: Sequence[dict]) -> dict:
        """{"inputs": model inputs or None, "image_digests" (with `image_digests`), "sample_digests" (with `sample_digests`), "records", "num_samples", "visual_tokens", "text_tokens", "too_long", "malformed", "without_pixels"}."""
        malformed_before = self.malformed
        decoded = self._well_formed(decoded)
        samples = self.samples(decoded)
        records = [d["record"] for d in decoded]
        too_long = 0
        inputs = known = None
        # per sample, hashed once (a too-long sample is dropped, the rest re-collated)
        hashed = (
            [[image_content_digest(im) for im in s.images] for s in samples] if self.features_cached else []
        )
        contents: list[str] = []
        while samples:
            filler = self.vision_every_batch and not any(s.images for s in samples)
            rows = samples + [_filler_sample()] if filler else samples
            if self.features_cached:
                extra = [image_content_digest(im) for im in rows[-1].images] if filler else []
                contents = [c for h in hashed for c in h] + extra
            known = self._known_images(contents)
            inputs = collate(self.processor, rows, known_images=known, **self.processor_kwargs)
            if self.max_length is None:
                break
            lengths = inputs["attention_mask"].sum(dim=1).tolist()[: len(samples)]
            keep = [i for i, n in enumerate(lengths) if n <= self.max_length]
            if len(keep) == len(samples):
                break
            too_long += len(samples) - len(keep)
            samples = [samples[i] for i in keep]
            records = [records[i] for i in keep]
            hashed = [hashed[i] for i in keep] if hashed else hashed
            inputs = None
        kept = None  # with packing: the rows whose images the packed batch keeps
        if inputs is not None and self.targets_per_sample > 1:
            unpacked = inputs
            inputs, kept = self._pack(inputs, rows)
        visual = text = 0
        if inputs is not None:
            ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
            is_visual = torch.isin(ids, self.visual_token_ids.to(ids.device)) & mask
            visual = int(is_visual.sum())
            text = int(mask.sum()) - visual
        digests = keys = None
        if (self.image_digests or self.sample_digests) and inputs is not None:
            # Here, in a loader worker, rather than in the training step: see models/vision_cache.py.
            has_images = "image_grid_thw" in inputs
            if known is not None:
                digests = list(known.digests)
            else:
                source = unpacked if kept is not None else inputs
                digests = (
                    pixel_digests(source["pixel_values"], source["image_grid_thw"]) if has_images else []
                )
                if contents and has_images:
                    self._remember(contents, digests, source)
            if kept is not None:  # the packed batch's images: each kept row's
                starts = [sum(len(r.images) for r in rows[:i]) for i in range(len(rows))]
                digests = [digests[starts[i] + j] for i in kept for j in range(len(rows[i].images))]
            if self.sample_digests:
                per_row = [len(s.images) for s in rows]
                keys = sample_digests(inputs["input_ids"], inputs["attention_mask"], per_row, digests)
        self.skipped_batches += known is not None and inputs is not None
        return {
            "inputs": inputs,
            "image_digests": (digests or None) if self.image_digests else None,
            "sample_digests": keys,
            "records": records,
            "num_samples": len(records) if inputs is not None else 0,
            "visual_tokens": visual,
            "text_tokens": text,
            "too_long": too_long,
            "malformed": self.malformed - malformed_before,
            "without_pixels": known is not None and inputs is not None,
        }

    def _pack(self, inputs: dict, rows: Sequence[Sample]) -> tuple[dict, list[int]]:
        """Consecutive rows showing the same images, up to `targets_per_sample` per sequence."""
        digests: dict[int, str] = {}  # a grouped shard's targets share one decoded image: hash it once
        for im in (im for r in rows for im in r.images):
            if id(im) not in digests:
                digests[id(im)] = image_content_digest(im)
        keys = ["|".join(digests[id(im)] for im in r.images) or None for r in rows]
        groups = screen_groups(keys, self.targets_per_sample)
        return pack_batch(inputs, groups, [len(r.images) for r in rows], self.visual_token_ids)

    def _known_images(self, contents: list[str]) -> KnownImages | None:
        """The batch's images as seen before, if every one was and the cache holds its features; else None."""
        if not contents or self._pixel_format is None or self.features_cached is None:
            return None
        seen = [self._seen.get(c) for c in contents]
        if any(s is None or not self.features_cached(s[0]) for s in seen):
            return None
        patch_dim, dtype, mm_types = self._pixel_format
        return KnownImages(
            grids=torch.tensor([s[1] for s in seen], dtype=torch.int64),
            digests=tuple(s[0] for s in seen),
            patch_dim=patch_dim,
            dtype=dtype,
            mm_token_type_ids=mm_types,
        )

    def _remember(self, contents: list[str], digests: list[str], inputs: dict) -> None:
        pixels = inputs["pixel_values"]
        if is_pixel_stand_in(pixels) or len(contents) != len(digests):
            return
        self._pixel_format = (pixels.shape[1], pixels.dtype, "mm_token_type_ids" in inputs)
        for content, digest, grid in zip(contents, digests, inputs["image_grid_thw"].tolist(), strict=True):
            self._seen[content] = (digest, tuple(grid))
        while len(self._seen) > SEEN_IMAGES_CAP:
            del self._seen[next(iter(self._seen))]


def image_content_digest(image: Image.Image) -> str:
    """Hash of a decoded image: mode, size and pixel bytes (what the image processor's output depends on)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{image.mode}|{image.width}x{image.height}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def move_to_device(inputs: dict, device: torch.device | str) -> dict:
    """A batch's tensors on `device`; a pixel stand-in is re-made there instead of copied (it has no bytes)."""
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and is_pixel_stand_in(v):
            v = pixel_stand_in(v.shape[0], v.shape[1], v.dtype, device)
        out[k] = v.to(device) if isinstance(v, torch.Tensor) else v
    return out


def _filler_sample() -> Sample:
    """A prompt-only row with a small blank image: runs the vision tower, adds no label."""
    return Sample("", None, [Image.new("RGB", (FILLER_SIZE, FILLER_SIZE), (255, 255, 255))])
