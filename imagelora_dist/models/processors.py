"""Offline processors (tokenizer + image processor + chat template) for the tiny VLM families.

Every processor is the family's real transformers class, so inputs (placeholder expansion,
`mm_token_type_ids`, `pixel_attention_mask`, ...) are produced by the same code as for real checkpoints.
Templates never emit the BOS token: tokenizers that need one add it in their post-processor, so both
`apply_chat_template(tokenize=False)` followed by `processor(text=...)` and `tokenize=True` give one BOS.
Assistant content is wrapped in `{% generation %}` so `return_assistant_tokens_mask=True` works.
"""

from __future__ import annotations

from transformers import (
    Gemma3Processor,
    Idefics3Processor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
    Qwen3VLProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from imagelora_dist.models.offline_tokenizer import build_offline_tokenizer

# ---------------------------------------------------------------------------------------------------------
# Qwen processors without a video processor: every Qwen video processor needs torchvision, which must not be
# installed next to this torch build. ProcessorMixin reads its sub-processors from the __init__ signature, so
# dropping `video_processor` from the signature is enough.


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without a video processor (images and text only)."""

    def __init__(
        self,
        image_processor: object = None,
        tokenizer: object = None,
        chat_template: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without a video processor (images and text only)."""

    def __init__(
        self,
        image_processor: object = None,
        tokenizer: object = None,
        chat_template: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor without a video processor (images and text only)."""

    def __init__(
        self,
        image_processor: object = None,
        tokenizer: object = None,
        chat_template: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


IMAGE_ONLY_PROCESSORS: dict[str, type[ProcessorMixin]] = {
    "qwen2_vl": Qwen2VLImageOnlyProcessor,
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
    "qwen3_vl": Qwen3VLImageOnlyProcessor,
}

# ---------------------------------------------------------------------------------------------------------
# Chat templates: simplified from the families' real templates (same turn markers and image placeholders).

_QWEN_BODY = (
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}{{- message['content'] + '<|im_end|>' -}}"
    "{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}{{- message['content'] + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif content['type'] == 'video' or 'video' in content -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in content -%}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}{{- content['text'] -}}{% endgeneration %}"
    "{%- else -%}{{- content['text'] -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if message['role'] == 'assistant' -%}{% generation %}{{- '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\\n' -}}"
    "{%- else -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

# Qwen2-VL / Qwen2.5-VL insert a default system prompt; Qwen3-VL does not.
QWEN2_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}" + _QWEN_BODY + "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}" + _QWEN_BODY + "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# llava-1.5-hf: "USER: <image>\n<prompt> ASSISTANT: <answer></s>" (images first, then text).
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if message['content'] is string -%}{{- message['content'] + ' ' -}}"
    "{%- else -%}{%- for c in message['content'] if c['type'] == 'text' -%}{{- c['text'] + ' ' -}}"
    "{%- endfor -%}{%- endif -%}"
    "{%- else -%}"
    "{{- message['role'].upper() + ': ' -}}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- for c in parts if c['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{%- for c in parts if c['type'] == 'text' -%}{{- c['text'] -}}{%- endfor -%}"
    "{{- eos_token -}}{% endgeneration %}"
    "{%- else -%}"
    "{%- for c in parts if c['type'] == 'text' -%}{{- c['text'] + ' ' -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# Idefics3: "User:<image>prompt<end_of_utterance>\nAssistant: answer<end_of_utterance>\n".
IDEFICS3_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{{- message['role'] | capitalize -}}"
    "{%- if parts and parts[0]['type'] == 'image' -%}{{- ':' -}}{%- else -%}{{- ': ' -}}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{%- for c in parts -%}{%- if c['type'] == 'text' -%}{{- c['text'] -}}"
    "{%- elif c['type'] == 'image' -%}{{- '<image>' -}}{%- endif -%}{%- endfor -%}"
    "{{- '<end_of_utterance>' -}}{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}"
    "{%- for c in parts -%}{%- if c['type'] == 'text' -%}{{- c['text'] -}}"
    "{%- elif c['type'] == 'image' -%}{{- '<image>' -}}{%- endif -%}{%- endfor -%}"
    "{{- '<end_of_utterance>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)

# Gemma3: a system message is folded into the first user turn; the assistant role is called "model".
GEMMA3_CHAT_TEMPLATE = (
    "{%- set ns = namespace(prefix='') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set ns.prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}{%- for c in messages[0]['content'] if c['type'] == 'text' -%}"
    "{%- set ns.prefix = ns.prefix + c['text'] -%}{%- endfor -%}{%- set ns.prefix = ns.prefix + '\\n\\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{{- '<start_of_turn>' + role + '\\n' -}}"
    "{%- if loop.first -%}{{- ns.prefix -}}{%- endif -%}"
    "{%- if role == 'model' -%}"
    "{% generation %}{%- for c in parts -%}{%- if c['type'] == 'text' -%}{{- c['text'] | trim -}}"
    "{%- elif c['type'] == 'image' -%}{{- '<start_of_image>' -}}{%- endif -%}{%- endfor -%}"
    "{{- '<end_of_turn>' -}}{% endgeneration %}{{- '\\n' -}}"
    "{%- else -%}"
    "{%- for c in parts -%}{%- if c['type'] == 'text' -%}{{- c['text'] | trim -}}"
    "{%- elif c['type'] == 'image' -%}{{- '<start_of_image>' -}}{%- endif -%}{%- endfor -%}"
    "{{- '<end_of_turn>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

# ---------------------------------------------------------------------------------------------------------
# Tokenizers: each family's special tokens are single added tokens, in the order of the real vocabularies.

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
LLAVA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<image>", "<pad>")
IDEFICS3_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<pad>",
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)),
)
GEMMA3_SPECIAL_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)


def build_family_tokenizer(family: str, split_digits: bool = False) -> PreTrainedTokenizerFast:
    """Build the offline tokenizer carrying `family`'s special tokens (`split_digits`: one token per digit)."""
    if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        # Qwen has no BOS; <|im_end|> ends a chat turn, <|endoftext|> pads.
        return build_offline_tokenizer(
            QWEN_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>", split_digits=split_digits
        )
    if family == "llava":
        return build_offline_tokenizer(
            LLAVA_SPECIAL_TOKENS,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            add_bos=True,
            split_digits=split_digits,
        )
    if family == "idefics3":
        return build_offline_tokenizer(
            IDEFICS3_SPECIAL_TOKENS,
            bos_token="<|begin_of_text|>",
            eos_token="<end_of_utterance>",
            pad_token="<pad>",
            add_bos=True,
            split_digits=split_digits,
        )
    if family == "gemma3":
        return build_offline_tokenizer(
            GEMMA3_SPECIAL_TOKENS,
            bos_token="<bos>",
            eos_token="<eos>",
            pad_token="<pad>",
            unk_token="<unk>",
            # Gemma3Processor reads these attributes (tokenizer.boi_token, image_token, eoi_token).
            named_tokens={
                "boi_token": "<start_of_image>",
                "eoi_token": "<end_of_image>",
                "image_token": "<image_soft_token>",
            },
            add_bos=True,
            split_digits=split_digits,
        )
    raise ValueError(f"no offline tokenizer for family {family!r}")


# ---------------------------------------------------------------------------------------------------------
# Vision geometry shared by the processors and the model configs (tiny.py) so they cannot disagree.

QWEN2_PATCH = 14  # Qwen2-VL / Qwen2.5-VL patch size
QWEN3_PATCH = 16  # Qwen3-VL patch size
QWEN_MERGE = 2
LLAVA_IMAGE_SIZE = 112
LLAVA_PATCH = 14
IDEFICS3_IMAGE_SIZE = 224
IDEFICS3_PATCH = 16
IDEFICS3_SCALE_FACTOR = 2
GEMMA3_IMAGE_SIZE = 224
GEMMA3_PATCH = 14
GEMMA3_MM_TOKENS = 64


def build_family_processor(family: str, split_digits: bool = False) -> ProcessorMixin:
    """Build the real transformers processor for `family` around an offline tokenizer."""
    tokenizer = build_family_tokenizer(family, split_digits)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        # max_pixels = 224*224: a 224x224 screenshot becomes a 16x16 patch grid = 64 visual tokens
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=56 * 56, max_pixels=224 * 224, patch_size=QWEN2_PATCH, merge_size=QWEN_MERGE
        )
        return IMAGE_ONLY_PROCESSORS[family](image_processor, tokenizer, chat_template=QWEN2_CHAT_TEMPLATE)
    if family == "qwen3_vl":
        # Qwen3-VL: patch 16, mean/std 0.5; a 224x224 screenshot -> 14x14 patches -> 49 visual tokens
        image_processor = Qwen2VLImageProcessorPil(
            min_pixels=64 * 64,
            max_pixels=256 * 256,
            patch_size=QWEN3_PATCH,
            merge_size=QWEN_MERGE,
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        )
        return Qwen3VLImageOnlyProcessor(image_processor, tokenizer, chat_template=QWEN3_CHAT_TEMPLATE)
    if family == "llava":
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": LLAVA_IMAGE_SIZE},
            crop_size={"height": LLAVA_IMAGE_SIZE, "width": LLAVA_IMAGE_SIZE},
        )
        # CLIP prepends a CLS token that the "default" feature strategy drops again: (112/14)^2 = 64 tokens
        return LlavaProcessor(
            image_processor,
            tokenizer,
            patch_size=LLAVA_PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE,
        )
    if family == "idefics3":
        image_processor = Idefics3ImageProcessorPil(
            do_image_splitting=False,
            size={"longest_edge": IDEFICS3_IMAGE_SIZE},
            max_image_size={"longest_edge": IDEFICS3_IMAGE_SIZE},
        )
        return Idefics3Processor(
            image_processor,
            tokenizer,
            image_seq_len=idefics3_image_seq_len(),
            chat_template=IDEFICS3_CHAT_TEMPLATE,
        )
    if family == "gemma3":
        image_processor = Gemma3ImageProcessorPil(
            size={"height": GEMMA3_IMAGE_SIZE, "width": GEMMA3_IMAGE_SIZE}
        )
        return Gemma3Processor(
            image_processor, tokenizer, image_seq_length=GEMMA3_MM_TOKENS, chat_template=GEMMA3_CHAT_TEMPLATE
        )
    raise ValueError(f"no offline processor for family {family!r}")


def idefics3_image_seq_len() -> int:
    """Number of `<image>` tokens per Idefics3 image: patches per side squared over scale_factor squared."""
    return (IDEFICS3_IMAGE_SIZE // IDEFICS3_PATCH) ** 2 // IDEFICS3_SCALE_FACTOR**2
