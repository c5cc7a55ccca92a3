"""The probe set, built from the shards by whoever scores it (a probe actor, a ZeRO-3 rank), never by the driver.

The set is the first `probe.num_examples` usable samples of the shards in `probe.seed` order, in batches
of `probe.batch_size`. Which samples are usable is only known after collation (undecodable ones are
skipped by the reader, too long ones dropped by the collator), so building collates every batch once and
then keeps only each batch's stored bytes (compressed images and JSON); `batch(i)` decodes and collates
batch i again when it is scored. That costs one extra collation per batch and keeps a worker's memory at
the size of the compressed probe set, instead of the decoded pixel tensors the driver used to hold and
ship. Every builder gets the same batches bit for bit (the order is seeded, collation deterministic), and
`digest` lets the driver check that they did.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from imagelora_dist.adapter.accounting import count_tokens
from imagelora_dist.config import RunConfig
from imagelora_dist.data.answer_formats import resolve_answer_format
from imagelora_dist.data.collate import BatchCollator
from imagelora_dist.data.drops import Counters, check_dropped, describe_drops
from imagelora_dist.data.reader import ShardReader, ShardStream, decode_sample
from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.registry import ModelSpec


@dataclass(frozen=True)
class ProbeBatchInfo:
    """What the driver needs to know of one probe batch: its examples and token counts."""

    examples: int
    visual_tokens: int
    text_tokens: int


class ProbeSet:
    """The probe batches of a config and shard set, as compressed samples collated on demand."""

    def __init__(
        self,
        cfg: RunConfig,
        processor: object,
        spec: ModelSpec,
        shards: str,
        *,
        vision_every_batch: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        size, wanted = cfg.probe.batch_size, cfg.probe.num_examples
        reader = ShardReader.from_path(
            shards, size, seed=cfg.probe.seed, shuffle_buffer=cfg.data.shuffle_buffer,
            trust_index_urls=cfg.data.trust_index_urls,
        )  # fmt: skip
        if reader.index.total_samples < wanted:
            raise ImageLoRAError(
                f"probe.num_examples {wanted} exceeds the {reader.index.total_samples} samples in {shards}"
            )
        self.collator = BatchCollator(
            processor, spec.visual_token_ids, max_pixels=cfg.data.max_pixels, max_length=cfg.data.max_length,
            vision_every_batch=vision_every_batch,
            answer_format=resolve_answer_format(cfg.data.answer_format, cfg.model.family, bool(cfg.model.path)),
        )  # fmt: skip
        self._raw: list[list[dict[str, Any]]] = []
        self.infos: list[ProbeBatchInfo] = []
        self.first_input_ids: torch.Tensor | None = None
        # What building skipped, by reason (data/drops.py), and the samples it read: bounded like training's.
        self.dropped, self.read, self.lost_shards = Counters(), 0, []
        allowed = cfg.data.max_dropped_fraction
        taken = 0
        for chunk in ShardStream(reader, epoch=0, keep_raw=True):
            decoded = chunk["samples"][: min(size, wanted - taken)]
            out = self.collator(decoded)
            self.dropped.add(chunk["stats"])
            self.dropped.add({k: out[k] for k in ("too_long", "malformed")})
            self.lost_shards += chunk["lost_shards"]
            self.read = taken + out["num_samples"] + self.dropped.total
            check_dropped(self.dropped.as_dict(), self.read, allowed, self.lost_shards, where="probe set",
                          planned=wanted)  # fmt: skip
            if out["inputs"] is None:
                continue
            inputs = out["inputs"]
            counts = count_tokens(inputs["input_ids"], spec, inputs.get("attention_mask"))
            self.infos.append(ProbeBatchInfo(out["num_samples"], counts.visual, counts.text))
            self._raw.append([d["raw"] for d in decoded])
            if self.first_input_ids is None:
                self.first_input_ids = inputs["input_ids"]
            taken += out["num_samples"]
            if progress is not None:
                dropped = describe_drops(self.dropped.as_dict())
                progress(
                    f"[probe] probe set: {taken}/{wanted} examples"
                    + (f", dropped {dropped}" if dropped else "")
                )
            if taken >= wanted:
                break
        if taken < wanted:
            raise ImageLoRAError(
                f"only {taken} usable probe examples in {shards} (dropped: {describe_drops(self.dropped.as_dict())})"
            )
        keys = "\n".join("\t".join(str(r.get("__key__")) for r in raws) for raws in self._raw)
        self.digest = hashlib.sha256(keys.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self._raw)

    @property
    def examples(self) -> int:
        """Usable examples over all batches."""
        return sum(i.examples for i in self.infos)

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        """Model inputs of probe batch `index`, collated from its stored samples."""
        if not 0 <= index < len(self._raw):
            raise ImageLoRAError(f"probe batch {index} outside 0..{len(self._raw) - 1}")
        inputs = self.collator([decode_sample(r) for r in self._raw[index]])["inputs"]
        if inputs is None:  # the same samples collated before: only a changed processor gets here
            raise ImageLoRAError(f"probe batch {index} no longer collates (was the processor changed?)")
        return inputs
