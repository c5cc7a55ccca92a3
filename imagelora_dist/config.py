"""One typed config for every stage; a wrong key, type or value fails before any work starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imagelora_dist.errors import ImageLoRAError
from imagelora_dist.models.families import FAMILIES

if TYPE_CHECKING:
    from imagelora_dist.models.tiny import TinySize


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSizeConfig(_Strict):
    """The tiny model's size (null fields: the family's default tiny size); Qwen families only."""

    layers: int | None = Field(None, ge=1)
    hidden: int | None = Field(None, ge=8)
    heads: int | None = Field(None, ge=1)
    kv_heads: int | None = Field(None, ge=1)
    vision_layers: int | None = Field(None, ge=1)
    vision_hidden: int | None = Field(None, ge=8)
    vision_heads: int | None = Field(None, ge=1)


class ModelConfig(_Strict):
    """Which model: a tiny random one of a family, or a real checkpoint from a local directory."""

    family: str = "qwen2_5_vl"
    path: str | None = None
    seed: int = 0
    # Scale the tiny model (pre-training a bigger base on a GPU); a checkpoint at `path` has its own size.
    # exclude_if: left out of dumps when unset, so the stage hashes of configs without it stay as they were.
    size: ModelSizeConfig | None = Field(None, exclude_if=lambda v: v is None)
    # Tiny models' offline tokenizer: numbers split into single digits, as Qwen's own tokenizers do (off:
    # the digit merges the fidelity study's bases (experiments/fidelity/RESULTS.md) were trained with). Unset: left out of dumps.
    split_digits: bool = Field(False, exclude_if=lambda v: v is False)
    # auto: bf16 on GPU, fp32 on CPU (a 7B checkpoint in fp32 would not fit most GPUs).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Attention kernel: auto = transformers' default (SDPA, fused on GPU); flash_attention_2 needs the
    # flash-attn package; eager is the slow reference.
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        if v not in FAMILIES:
            raise ValueError(f"unknown family {v!r}; supported: {', '.join(FAMILIES)}")
        return v

    @model_validator(mode="after")
    def _size_fits(self) -> ModelConfig:
        if self.split_digits and self.path is not None:
            raise ValueError(f"split_digits: the checkpoint at path={self.path!r} has its own tokenizer")
        if self.size is None:
            return self
        if self.path is not None:
            raise ValueError(f"size: the checkpoint at path={self.path!r} has its own size; drop model.size")
        try:
            self.tiny_size().check(self.family)  # type: ignore[union-attr]
        except ImageLoRAError as exc:
            raise ValueError(str(exc)) from None
        return self

    def tiny_size(self) -> TinySize | None:
        """`size` as the tiny-model builder's TinySize (None: the default tiny size)."""
        from imagelora_dist.models.tiny import TinySize

        return None if self.size is None else TinySize(**self.size.model_dump())


class SynthConfig(_Strict):
    """Synthetic GUI screenshots written as shards when `data.train` has none yet (`imagelora-dist synth`)."""

    num_samples: int = Field(256, ge=1)
    samples_per_shard: int = Field(64, ge=1)
    width: int = Field(448, ge=200, le=4096)
    height: int = Field(336, ge=150, le=4096)
    min_elements: int = Field(4, ge=1, le=64)
    max_elements: int = Field(10, ge=1, le=64)
    instruction_words: tuple[int, int] = (0, 0)
    tasks: tuple[Literal["grounding", "referring"], ...] = ("grounding", "referring")
    seed: int = 0
    workers: int | None = Field(None, ge=1)
    # `gui` (application windows), or any other screen style by import path "package.module:ATTR" (a
    # ScreenStyle, see data/synth/styles.py; loaded when the spec is made), e.g. the fidelity study's
    # `fidelity.shapes:STYLE`. Left out of dumps at the default so existing stage hashes stay as they were.
    style: str = Field("gui", exclude_if=lambda v: v == "gui")

    @field_validator("style")
    @classmethod
    def _style_name(cls, v: str) -> str:
        module, colon, attr = v.partition(":")
        is_path = colon and attr.isidentifier() and all(p.isidentifier() for p in module.split("."))
        if v == "gui" or is_path:
            return v
        raise ValueError("must be gui or an import path 'package.module:ATTR'")

    # `pretrain`: grounding and referring asked in the pre-training tasks' words ("Give the coordinates of
    # the red circle.", "Describe the element at (x, y)."), a task a pre-trained base already knows, as in
    # the paper (Qwen2.5-VL already grounds); `downstream` (default): a new instruction format.
    phrasing: Literal["downstream", "pretrain"] = Field("downstream", exclude_if=lambda v: v == "downstream")

    @model_validator(mode="after")
    def _ranges(self) -> SynthConfig:
        if self.min_elements > self.max_elements:
            raise ValueError(f"min_elements {self.min_elements} > max_elements {self.max_elements}")
        lo, hi = self.instruction_words
        if not 0 <= lo <= hi:
            raise ValueError(f"instruction_words must be [min, max] with 0 <= min <= max, got {[lo, hi]}")
        if not self.tasks:
            raise ValueError("tasks must name at least one of grounding, referring")
        return self


class DataConfig(_Strict):
    """Where the training shards are and how batches are made from them."""

    # A directory (or URL of a directory) holding index.json; default: <output_dir>/data/train.
    train: str | None = None
    synth: SynthConfig = SynthConfig()
    max_pixels: int = Field(448 * 448, ge=28 * 28)
    max_length: int = Field(4096, ge=16)
    # Shared-prefix training (data/packing.py): up to K consecutive targets of one screenshot in one sequence,
    # the screen's prefix once and one branch per target; exact (same loss and gradients). 1: one per
    # sequence. Needs the eager or sdpa attention kernel. Left out of dumps at 1.
    targets_per_sample: int = Field(1, ge=1, le=64, exclude_if=lambda v: v == 1)
    shuffle_buffer: int = Field(256, ge=0)
    num_workers: int = Field(0, ge=0)
    seed: int = 0
    # Shard indexes may only list plain relative names unless you wrote the index yourself: an absolute
    # path or a `pipe:` entry in an untrusted index would read any file or run a command.
    trust_index_urls: bool = False
    # The most a stage may drop (unreadable shards, corrupt, too long... samples), as dropped / read so far
    # (data/drops.py); more stops it with one line. 0: any dropped sample stops it. Left out of dumps at 0.
    max_dropped_fraction: float = Field(0.0, ge=0.0, lt=1.0, exclude_if=lambda v: v == 0.0)
    # The grounding answers' text (data/answer_formats.py): point "(x, y)" in [0, 1000), or a Qwen family's
    # native format (qwen2_box, qwen25_abs, qwen3_rel). auto: a checkpoint's (model.path) own family format,
    # since Image-LoRA cannot teach a base a new output format; point for tiny random-weight models. Left
    # out of dumps at auto; the selection hash carries the resolved format when it is not point.
    answer_format: Literal["point", "qwen2_box", "qwen25_abs", "qwen3_rel", "auto"] = Field(
        "auto", exclude_if=lambda v: v == "auto"
    )
    # Pre-training only (experiments/fidelity): the task mix (None: the generic five; see fidelity/pretrain_tasks.py,
    # which also has the opt-in `point` and `describe_at`). Left out of dumps when unset (stage hashes).
    pretrain_tasks: (
        tuple[
            Literal[
                "read_text", "read_label", "element_type", "position", "arithmetic", "point", "describe_at"
            ],
            ...,
        ]
        | None
    ) = Field(None, exclude_if=lambda v: v is None, min_length=1)


class ProbeConfig(_Strict):
    """Head influence probe settings."""

    method: Literal["rank1", "gate"] = "rank1"
    # actors: one model replica per Ray actor. zero3: the probe runs inside a Ray Train + DeepSpeed ZeRO-3
    # group (ray.num_workers ranks), for models that do not fit one worker. Each is bitwise the same for any
    # worker count; between them scores differ in the last float32 bits.
    backend: Literal["actors", "zero3"] = Field("actors", exclude_if=lambda v: v == "actors")
    num_examples: int = Field(8, ge=1)
    batch_size: int = Field(2, ge=1)
    seed: int = 0
    num_vectors: int = Field(1, ge=1)


class SelectionConfig(_Strict):
    """Head budget (a count, or a fraction of all KV heads) and the layer allocation temperature."""

    budget: int | float = 0.25
    tau: float = Field(1.0, ge=0.0)

    @field_validator("budget")
    @classmethod
    def _positive(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not 0.0 < v <= 1.0:
            raise ValueError("a fractional budget must be in (0, 1]")
        if isinstance(v, int) and v < 1:
            raise ValueError("a head-count budget must be >= 1")
        return v


class AdapterConfig(_Strict):
    """Image-LoRA rank and alpha."""

    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)


class TrainConfig(_Strict):
    """Adapter training with DeepSpeed ZeRO inside Ray Train workers."""

    # none: no adapter (the zero-shot base model, evaluated only)
    method: Literal["image_lora", "image_lora_all", "lora", "full", "none"] = "image_lora"
    # LoRA baseline targets inside the text decoder: leaf names, or "all-linear".
    lora_targets: list[str] | Literal["all-linear"] = ["v_proj"]
    deepspeed: str = "zero2"  # a shipped preset (imagelora_dist.resources) or a DeepSpeed JSON path
    steps: int = Field(30, ge=1)  # optimizer steps
    micro_batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(0.05, gt=0)  # the tiny random default; real checkpoints want ~1e-4
    warmup_steps: int = Field(2, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, ge=0)
    gradient_checkpointing: bool = False
    # ZeRO++ for a ZeRO-3 run across nodes (DeepSpeed zero_hpz_partition_size / zero_quantized_weights):
    # hierarchical partitioning keeps a second copy of the weights partitioned over this many GPUs (one
    # node's), so the backward's gathers stay inside the node; quantized gathers send weights in int8.
    # 1 / false: off (left out of dumps then: stage hashes). `imagelora-dist plan` shows what they save.
    zero3_hpz: int = Field(1, ge=1, exclude_if=lambda v: v == 1)
    zero3_quantized_weights: bool = Field(False, exclude_if=lambda v: not v)
    # Training precision: bf16 runs the frozen base in bfloat16 while adapters, their gradients and
    # optimizer state stay fp32 masters (what is exported); fp32 runs everything in float32; auto follows
    # model.dtype (bf16 on GPU, fp32 on CPU). Left out of dumps at auto (stage hashes).
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", exclude_if=lambda v: v == "auto")
    checkpoint_every: int = Field(10, ge=1)
    workers: int = Field(2, ge=1)
    # Elastic training: start once this many workers fit (Ray asks for `workers`), go on with fewer after a
    # lost node, grow back when resources return; each change resumes from the latest checkpoint's
    # world-size-independent state. None: exactly `workers`. Left out of dumps when unset (stage hashes).
    min_workers: int | None = Field(None, ge=1, exclude_if=lambda v: v is None)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0)
    max_failures: int = Field(2, ge=0)
    # Ray Train's storage for checkpoints: a local dir, a shared filesystem or an object-store URI
    # (s3://bucket/prefix ...; credentials from the environment). None: <output_dir>/train.
    storage: str | None = None
    keep_checkpoints: int = Field(2, ge=1)  # the newest N stay in the storage
    seed: int = 0

    @model_validator(mode="after")
    def _elastic(self) -> TrainConfig:
        if self.min_workers is not None and self.min_workers > self.workers:
            raise ValueError(f"min_workers {self.min_workers} > workers {self.workers} (the most it may use)")
        if self.zero3_hpz > 1 and self.workers % self.zero3_hpz:
            raise ValueError(f"zero3_hpz {self.zero3_hpz} does not divide workers {self.workers}")
        return self

    def grad_accum_for(self, world_size: int) -> int:
        """Accumulation steps on `world_size` workers: in an elastic run the global batch of `workers`
        workers x `grad_accum`, kept exactly where it divides, else the nearest; else `grad_accum`."""
        if self.min_workers is None:
            return self.grad_accum
        return max(1, round(self.grad_accum * self.workers / world_size))


class EvalConfig(_Strict):
    """Held-out evaluation: grounding accuracy, referring exact match, text preservation."""

    # A shard directory with index.json; None: <output_dir>/data/eval, synthesized on first use with a
    # different seed (data.synth.seed + 1) so no training screen is evaluated.
    shards: str | None = None
    # None: every sample of the set (a benchmark's number). A smaller N takes a deterministic sample
    # stratified by data source x element type (eval/sampling.py), never the first N in file order.
    num_samples: int | None = Field(None, ge=1)
    # Size of the synthesized held-out set when `shards` is None.
    synth_samples: int = Field(32, ge=1)
    max_new_tokens: int = Field(24, ge=1)
    batch_size: int = Field(4, ge=1)
    # Arithmetic word problems (the GSM8K stand-in) answered with and without the adapter; 0: skip.
    text_task_problems: int = Field(32, ge=0)
    # Eval workers: replicas scoring chunks of samples in parallel. None: one per GPU of the cluster, or 2
    # on a CPU-only cluster. (zero3: ignored, the group has ray.num_workers ranks.)
    workers: int | None = Field(None, ge=1)
    # replicas: a whole model per worker (one GPU each); zero3: one ZeRO-3 group of ray.num_workers ranks
    # with synchronized generation (a model larger than one GPU); device_map: one replica spread over the
    # ray.gpus_per_worker GPUs of a worker (accelerate). auto: replicas when a replica fits one GPU (the
    # plan's figure), else device_map when it fits a worker's GPUs, else zero3.
    backend: Literal["auto", "replicas", "zero3", "device_map"] = "auto"
    # Samples per chunk: the unit handed to a worker and kept in `storage` once scored (a lost node costs
    # only its unfinished chunks; a re-run reuses finished ones for the same adapter and data).
    chunk_size: int = Field(16, ge=1)
    # Where finished chunks are kept: a local dir, a shared path or s3://... None: <output_dir>/eval.
    storage: str | None = None


class RayConfig(_Strict):
    """How the distributed stages use Ray."""

    # None: RAY_ADDRESS when set (as under `ray job submit`), else a local Ray started in-process.
    address: str | None = None
    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    # None: one GPU per worker when the cluster has GPUs, else none.
    gpus_per_worker: float | None = Field(None, ge=0)
    max_retries: int = Field(3, ge=0)
    # Size of a local Ray started in-process (None: all cores).
    num_cpus: int | None = Field(None, ge=1)
    # An autoscaling cluster (KubeRay) may start with fewer nodes than the probe asks for: > 0 requests
    # every worker and waits this long for the autoscaler, then goes on with those that are up.
    # 0: use only what the cluster holds now.
    autoscale_wait_s: float = Field(0.0, ge=0)


class TrackingConfig(_Strict):
    """MLflow: where runs are recorded."""

    enabled: bool = True
    # None: MLFLOW_TRACKING_URI when set, else sqlite:///mlruns.db in the working directory.
    uri: str | None = None
    # None: the config's name.
    experiment: str | None = None
    # Artifact store for experiments this tool creates (artifacts under <artifact_root>/<experiment>): a local
    # path, used with a sqlite store only (a server keeps its own default), or s3://bucket/prefix, used with
    # any store; clients then write and read the bucket themselves (AWS_* credentials, and
    # MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL for a non-AWS store).
    artifact_root: str = "mlartifacts"

    @field_validator("artifact_root")
    @classmethod
    def _artifact_root_kind(cls, v: str) -> str:
        v = v.strip()
        scheme, sep, rest = v.partition("://")
        if not sep:
            if not v:
                raise ValueError("empty; a local path or s3://bucket/prefix")
            return v
        if scheme.lower() not in ("s3", "file"):
            raise ValueError(f"unsupported scheme {scheme + '://'!r}; a local path or s3://bucket/prefix")
        if scheme.lower() == "s3" and not rest.split("/", 1)[0]:
            raise ValueError("s3:// needs a bucket: s3://bucket/prefix")
        return v


class SpeedConfig(_Strict):
    """Speed-ups beyond the paper; each is exact for a frozen base and measured in bench/."""

    # Reuse the frozen vision tower's output per image (keyed by a hash of its pixels) across epochs and
    # between the probe and training (Qwen2-VL / Qwen2.5-VL).
    vision_cache: bool = False
    vision_cache_mb: int = Field(2048, ge=1)  # in-memory cap per process
    # A directory shared by the probe and training processes (features persist there: ~19 MB per
    # 2.7k-token screenshot on a 7B model). None: memory only, reused across epochs within a process.
    vision_cache_dir: str | None = None
    # With the vision cache and the loader in the training process (data.num_workers: 0): a batch whose
    # every image's features are cached skips the image processor and carries no pixels. Exact (same
    # tokens, same features); with loader processes it does nothing (they cannot see the cache).
    vision_cache_skip_processor: bool = True
    # Run the vision tower and every decoder layer below the lowest adapted one under no_grad, so no
    # configuration (gradient checkpointing's input grads, a peft wrapper) can make the backward go there.
    no_grad_below_adapters: bool = True
    # Reuse each sample's hidden states at the lowest adapted layer from the second epoch on: the layers
    # below it (and the vision tower) stop running. Host memory: tokens x hidden x dtype bytes per sample
    # (~19 MB for a 2.7k-token screenshot on a 7B model); past the cap, the oldest samples are recomputed.
    # Qwen2-VL / Qwen2.5-VL; a no-op when an adapter sits in layer 0 (LoRA).
    prefix_cache: bool = False
    prefix_cache_mb: int = Field(4096, ge=1)
    # A directory shared by the ranks (each rank reads other shards in later epochs; with N ranks and memory
    # only, about 1/N of an epoch's samples were seen by the same rank before). None: memory only.
    prefix_cache_dir: str | None = None


class RunConfig(_Strict):
    """The whole run."""

    name: str = "tiny-default"
    output_dir: str = "runs/tiny-default"
    # Free-form labels, logged with the config as MLflow params `labels.<key>` (a study's ratio, method, seed).
    labels: dict[str, str] = {}
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    probe: ProbeConfig = ProbeConfig()
    selection: SelectionConfig = SelectionConfig()
    adapter: AdapterConfig = AdapterConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()
    speed: SpeedConfig = SpeedConfig()

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, v: Any) -> Any:
        # key=value overrides parse values as YAML: a seed label arrives as an int
        if isinstance(v, dict):
            return {str(k): str(x) for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _packing_fits(self) -> RunConfig:
        if self.data.targets_per_sample > 1 and self.model.attn_implementation == "flash_attention_2":
            raise ValueError(
                "data.targets_per_sample > 1 needs a block attention mask, which flash_attention_2 ignores: "
                "set model.attn_implementation: eager (or sdpa), or data.targets_per_sample: 1"
            )
        if self.data.targets_per_sample > 1 and self.speed.prefix_cache:
            raise ValueError(
                "speed.prefix_cache keys its entries by sequence, which data.targets_per_sample > 1 packs: "
                "turn one of them off"
            )
        return self


def _apply_override(tree: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ImageLoRAError(f"override {item!r}: expected key=value, e.g. probe.method=gate")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        if node.get(part) is None:  # an optional section left null in YAML (`size: null`) opens here
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ImageLoRAError(f"override {key}: {part} is not a section")
    # YAML scalars, so budget=4 is an int, budget=0.5 a float, and strings need no quotes.
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the embedded default when `path` is None) and apply key=value overrides."""
    source = "embedded default" if path is None else str(path)
    if path is None:
        from imagelora_dist.resources import default_config_path

        path = default_config_path()
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ImageLoRAError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ImageLoRAError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ImageLoRAError(f"{path}: the top level must be a mapping of sections")
    tree: dict[str, Any] = loaded or {}
    for item in overrides or []:
        _apply_override(tree, item)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        raise ImageLoRAError(f"{source}: {where}: {err['msg']}{shown}") from None
