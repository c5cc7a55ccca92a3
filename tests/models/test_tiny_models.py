"""Tiny offline VLMs: size and GQA, determinism, processor + chat template inputs, loss/backward, round trip."""

from __future__ import annotations

import functools
import os

import pytest
import torch
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from imagelora_dist.errors import ImageLoRAError  # noqa: E402
from imagelora_dist.models.tiny import TINY_FAMILIES, build_tiny_vlm, load_vlm  # noqa: E402

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
VISION_PREFIXES = ("model.visual.", "model.vision_tower.", "model.vision_model.")

# Single-token specials each family's processor and model rely on.
SPECIALS = {
    "qwen2_vl": [
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ],
    "llava": ["<image>", "<s>", "</s>", "<pad>"],
    "idefics3": ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"],
    "gemma3": [
        "<bos>",
        "<eos>",
        "<pad>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
        "<start_of_turn>",
        "<end_of_turn>",
    ],
}
SPECIALS["qwen2_5_vl"] = SPECIALS["qwen3_vl"] = SPECIALS["qwen2_vl"]


@pytest.fixture(autouse=True)
def _two_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(prev)


@functools.cache
def _cached(family: str):
    return build_tiny_vlm(family, seed=0)


def screenshot(w: int, h: int, label: str = "Save") -> Image.Image:
    img = Image.new("RGB", (w, h), (236, 236, 236))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, w - 1, 14], fill=(40, 70, 150))  # title bar
    d.text((4, 2), "Untitled - Editor", fill=(255, 255, 255))
    bx, by = w // 3, h // 2
    d.rectangle([bx, by, bx + 48, by + 18], fill=(210, 210, 210), outline=(0, 0, 0))
    d.text((bx + 6, by + 4), label, fill=(0, 0, 0))
    return img


def two_samples(processor):
    """A short one-image prompt and a longer two-image conversation with an answer."""
    m1 = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "click the Save button"}]}]
    m2 = [
        {"role": "system", "content": [{"type": "text", "text": "You locate GUI elements."}]},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "image"},
                {"type": "text", "text": "where is the OK button in the second window?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "click(0.52, 0.31)"}]},
    ]
    t1 = processor.apply_chat_template(m1, add_generation_prompt=True, tokenize=False)
    t2 = processor.apply_chat_template(m2, add_generation_prompt=False, tokenize=False)
    images = [[screenshot(224, 160)], [screenshot(200, 224), screenshot(112, 112, "OK")]]
    return [t1, t2], images


def image_token_id(model) -> int:
    return model.config.image_token_id


def expected_tokens_per_image(family: str, model, inputs) -> list[int]:
    """Visual tokens per image as the model config (and Qwen's grid) dictates, in batch order."""
    cfg = model.config
    if family in QWEN:
        merge = cfg.vision_config.spatial_merge_size
        return [int(g.prod()) // merge**2 for g in inputs["image_grid_thw"]]
    n_images = 3
    if family == "llava":
        return [cfg.image_seq_length] * n_images
    if family == "idefics3":
        v = cfg.vision_config
        return [(v.image_size // v.patch_size) ** 2 // cfg.scale_factor**2] * n_images
    if family == "gemma3":
        return [cfg.mm_tokens_per_image] * n_images
    raise AssertionError(family)


def runs(row: torch.Tensor, token: int) -> list[int]:
    """Lengths of contiguous runs of `token` in a 1-D id tensor."""
    out, n = [], 0
    for t in row.tolist():
        if t == token:
            n += 1
        elif n:
            out.append(n)
            n = 0
    if n:
        out.append(n)
    return out


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_size_layers_and_gqa(family):
    model, _ = _cached(family)
    text = model.config.get_text_config()
    assert sum(p.numel() for p in model.parameters()) <= 15_000_000
    assert text.num_hidden_layers >= 4
    assert text.num_key_value_heads < text.num_attention_heads
    assert text.num_attention_heads % text.num_key_value_heads == 0
    assert model.dtype == torch.float32 and not model.training
    assert 1 <= model.config.vision_config.num_hidden_layers <= 2


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_same_seed_same_weights_other_seed_differs(family):
    a, _ = _cached(family)
    b, _ = build_tiny_vlm(family, seed=0)
    c, _ = build_tiny_vlm(family, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_seeding_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_vlm("llava", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_config_token_ids_equal_tokenizer_ids(family):
    model, processor = _cached(family)
    tok, cfg = processor.tokenizer, model.config
    text = cfg.get_text_config()
    for s in SPECIALS[family]:
        assert len(tok.encode(s, add_special_tokens=False)) == 1, s
    conv = tok.convert_tokens_to_ids
    assert text.vocab_size == len(tok)
    if family in QWEN:
        assert cfg.image_token_id == conv("<|image_pad|>")
        assert cfg.video_token_id == conv("<|video_pad|>")
        assert cfg.vision_start_token_id == conv("<|vision_start|>")
        assert cfg.vision_end_token_id == conv("<|vision_end|>")
        assert text.eos_token_id == tok.eos_token_id == conv("<|im_end|>")
        assert text.pad_token_id == tok.pad_token_id == conv("<|endoftext|>")
        assert processor.image_token_id == cfg.image_token_id
    elif family == "llava":
        assert cfg.image_token_index == cfg.image_token_id == conv("<image>")
        assert processor.image_token_id == cfg.image_token_id
        assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (
            tok.bos_token_id,
            tok.eos_token_id,
            tok.pad_token_id,
        )
    elif family == "idefics3":
        assert cfg.image_token_id == conv("<image>") == processor.image_token_id
        assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (
            tok.bos_token_id,
            tok.eos_token_id,
            tok.pad_token_id,
        )
    elif family == "gemma3":
        assert cfg.image_token_index == cfg.image_token_id == conv("<image_soft_token>") == tok.image_token_id
        assert cfg.boi_token_index == conv("<start_of_image>") == tok.boi_token_id
        assert cfg.eoi_token_index == conv("<end_of_image>") == tok.eoi_token_id
        assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (
            tok.bos_token_id,
            tok.eos_token_id,
            tok.pad_token_id,
        )


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_image_batch_forward_loss_backward(family, padding_side):
    model, processor = build_tiny_vlm(family)
    processor.tokenizer.padding_side = padding_side
    texts, images = two_samples(processor)
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape[0] == 2 and "pixel_values" in inputs
    pad_cols = (mask == 0).any(0).nonzero().flatten()
    assert pad_cols.numel() > 0, "samples should have different lengths"
    short = int(mask.sum(1).argmin())
    assert (mask[short, 0] == 0) == (padding_side == "left")
    if family in QWEN:
        assert torch.equal(inputs["mm_token_type_ids"], (ids == image_token_id(model)).long())
        assert inputs["image_grid_thw"].shape == (3, 3)
    if family == "idefics3":
        assert inputs["pixel_attention_mask"].shape[:2] == (2, 2)
    if family == "gemma3":
        assert torch.equal(inputs["token_type_ids"], (ids == image_token_id(model)).long())

    # Each image is one contiguous run of placeholders, of the length the model config/grid dictates.
    per_image = expected_tokens_per_image(family, model, inputs)
    assert runs(ids[0], image_token_id(model)) == per_image[:1]
    assert runs(ids[1], image_token_id(model)) == per_image[1:]
    assert all(16 <= n <= 64 for n in per_image)

    labels = ids.masked_fill(mask == 0, -100)
    out = model(**inputs, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    # The image path is live: gradients reach the vision tower through the projector.
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(VISION_PREFIXES))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_text_only_prompt(family):
    model, processor = _cached(family)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What does the Undo button do?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    plain = processor.apply_chat_template(
        [{"role": "user", "content": "What does the Undo button do?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt == plain
    inputs = processor(text=[prompt], return_tensors="pt")
    assert "pixel_values" not in inputs
    assert not (inputs["input_ids"] == image_token_id(model)).any()
    with torch.no_grad():
        out = model(**inputs, labels=inputs["input_ids"])
    assert torch.isfinite(out.loss)
    assert out.logits.shape[-1] == len(processor.tokenizer)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_chat_template_answer_extends_generation_prompt(family):
    _, processor = _cached(family)
    image = {"type": "image", "image": screenshot(160, 120)}
    user = [{"role": "user", "content": [image, {"type": "text", "text": "click the Save button"}]}]
    full = user + [{"role": "assistant", "content": [{"type": "text", "text": "click(0.1, 0.2)"}]}]
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    whole = processor.apply_chat_template(full, add_generation_prompt=False, tokenize=False)
    # Training text = generation prompt + answer, so prompt tokens can be masked by length.
    assert whole.startswith(prompt) and "click(0.1, 0.2)" in whole[len(prompt) :]
    bos = processor.tokenizer.bos_token
    assert bos is None or bos not in prompt  # the tokenizer adds BOS, the template must not (no double BOS)
    out = processor.apply_chat_template(
        full, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, add_generation_prompt=False
    )
    answer = [t for t, m in zip(out["input_ids"][0], out["assistant_masks"][0], strict=True) if m]
    assert "click(0.1, 0.2)" in processor.tokenizer.decode(answer)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_save_load_roundtrip_identical_logits(family, tmp_path):
    model, processor = _cached(family)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model2, processor2 = load_vlm(tmp_path)
    assert type(model2) is type(model) and type(processor2) is type(processor)
    assert not model2.training

    texts, images = two_samples(processor)
    a = processor(text=texts, images=images, padding=True, return_tensors="pt")
    b = processor2(text=texts, images=images, padding=True, return_tensors="pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model(**a).logits, model2(**b).logits)

    model3, _ = load_vlm(str(tmp_path), dtype=torch.bfloat16)
    assert model3.dtype == torch.bfloat16


def test_load_vlm_missing_directory_names_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises((FileNotFoundError, ValueError)) as err:
        load_vlm(missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_load_vlm_directory_without_config_names_path(tmp_path):
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises((FileNotFoundError, ValueError)) as err:
        load_vlm(tmp_path)
    assert str(tmp_path) in str(err.value) and "config.json" in str(err.value)


def test_unknown_family_lists_supported():
    with pytest.raises(ValueError) as err:
        build_tiny_vlm("gpt2")
    msg = str(err.value)
    assert "gpt2" in msg and "\n" not in msg
    assert all(f in msg for f in TINY_FAMILIES)
    assert isinstance(err.value, ImageLoRAError)


def test_load_vlm_refuses_unsupported_model_type_before_loading(tmp_path):
    from imagelora_dist.errors import UnsupportedModelError

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UnsupportedModelError, match=r"unsupported model type 'llama'; supported: qwen2_vl"):
        load_vlm(tmp_path)


@pytest.mark.parametrize("family", QWEN)
def test_model_size_scales_the_tiny_model_and_it_trains(family):
    from imagelora_dist.models.tiny import TinySize

    size = TinySize(layers=3, hidden=128 if family != "qwen3_vl" else 160, heads=4, kv_heads=2,
                    vision_layers=3, vision_hidden=96, vision_heads=3)  # fmt: skip
    model, processor = build_tiny_vlm(family, seed=0, size=size)
    text, vision = model.config.get_text_config(), model.config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (
        3, size.hidden, 4, 2,
    )  # fmt: skip
    assert vision.depth == 3 and vision.num_heads == 3
    assert (vision.embed_dim if family == "qwen2_vl" else vision.hidden_size) == 96
    # The default size is what build_tiny_vlm gives without one (the shipped checkpoints depend on it).
    default = _cached(family)[0].state_dict()
    unsized = build_tiny_vlm(family, seed=0, size=TinySize())[0].state_dict()
    assert all(torch.equal(default[k], unsized[k]) for k in default)
    texts, images = two_samples(processor)
    inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    out = model(**inputs, labels=inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith(VISION_PREFIXES))  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.size.heads=3"], "heads=3 must be a multiple of kv_heads=4"),
        (["model.size.hidden=100"], "hidden=100 over heads=8"),
        (["model.size.vision_hidden=90", "model.size.vision_heads=4"], "vision_hidden=90"),
        (["model.size.layers=0"], "layers"),
        (["model.family=llava", "model.size.layers=2"], "not llava"),
        (["model.path=/somewhere", "model.size.layers=2"], "has its own size"),
    ],
)
def test_model_size_refuses_sizes_that_make_no_model(overrides, message):
    from imagelora_dist.config import load_config

    with pytest.raises(ImageLoRAError, match=message):
        load_config(None, overrides)


def test_model_size_reaches_the_pipeline_and_stays_out_of_unsized_hashes():
    from imagelora_dist.config import load_config
    from imagelora_dist.models.build import build_model, skeleton_model

    cfg = load_config(None, ["model.size.layers=2", "model.size.vision_layers=1"])
    for model, _ in (build_model(cfg.model), skeleton_model(cfg.model)):
        assert model.config.get_text_config().num_hidden_layers == 2 and model.config.vision_config.depth == 1
    # Stage hashes dump the model config: an unset size must not appear (earlier runs stay valid).
    assert "size" not in load_config(None, []).model.model_dump()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_split_digits_spells_numbers_digit_by_digit_and_stays_out_of_default_hashes(family, tmp_path):
    from imagelora_dist.config import load_config
    from imagelora_dist.errors import ImageLoRAError
    from imagelora_dist.models.build import build_model, skeleton_model

    text = "Give the coordinates: (183, 458) and 1024 = 100."
    digits = [c for c in text if c.isdigit()]

    def numbers(tokenizer):
        pieces = [tokenizer.decode([i]) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
        assert "".join(pieces) == text  # nothing lost or added
        return [p.strip() for p in pieces if any(c.isdigit() for c in p)]

    merged = build_tiny_vlm(family, seed=0)[1].tokenizer
    assert numbers(merged) != digits  # the default keeps the digit merges its recorded bases were made with
    cfg = load_config(None, [f"model.family={family}", "model.split_digits=true"])
    for _, processor in (build_model(cfg.model), skeleton_model(cfg.model)):
        assert numbers(processor.tokenizer) == digits  # one token per digit, no space glued to a digit
        assert len(processor.tokenizer) == len(merged)  # same vocabulary size: same model shapes
    processor.save_pretrained(tmp_path)  # a base trained with it keeps it: the tokenizer travels along
    assert numbers(type(processor).from_pretrained(tmp_path).tokenizer) == digits
    assert "split_digits" not in load_config(None, []).model.model_dump()
    with pytest.raises(
        ImageLoRAError, match="split_digits: the checkpoint at path='x' has its own tokenizer"
    ):
        load_config(None, ["model.path=x", "model.split_digits=true"])
