"""A small byte-level BPE tokenizer trained locally, so tiny VLMs need no download.

Byte-level BPE keeps all 256 byte symbols in the vocabulary, so any string encodes without an unknown
token; the corpus below only decides which merges exist (GUI and screenshot words compress well).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# Base vocabulary size before special tokens: 256 bytes + merges. Small on purpose (embedding cost).
BASE_VOCAB_SIZE = 768

_CORPUS_LINES: tuple[str, ...] = (
    "click the Save button",
    "click the Cancel button in the dialog",
    "press OK to confirm the changes",
    "open the File menu and choose Export",
    "select the checkbox next to Remember me",
    "type your email address into the text field",
    "scroll down to the Settings panel",
    "tap the search icon at the top right",
    "close the window with the X in the corner",
    "drag the slider to 75 percent",
    "toggle dark mode in Preferences",
    "the Submit button is at the bottom of the form",
    "where is the Login link on this page?",
    "double-click the folder named Documents",
    "right-click the image and select Copy",
    "enter the password and press Enter",
    "the toolbar has Undo, Redo, Cut, Copy and Paste",
    "navigate to Home > Profile > Edit",
    "the screenshot shows a browser window with three tabs",
    "a modal dialog asks: Do you want to save changes to Untitled?",
    "Buttons: Yes / No / Cancel",
    "the status bar reads: Ready. 12 items selected.",
    "zoom in to 150% and click Next",
    "Error 404: page not found. Go back?",
    "Warning! Low battery (5%). Plug in your charger.",
    "click(x=0.52, y=0.31)",
    "point: [120, 245] box: [100, 230, 180, 260]",
    '{"action": "click", "x": 0.25, "y": 0.75}',
    "user: find the Download button. assistant: click(0.83, 0.12)",
    "The quick brown fox jumps over the lazy dog.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 32 64 100 128 256 512 1024",
    "0.1 0.25 0.5 0.75 0.9 1.0 -1 +1 = * / % # @ & _ ~ ^ | \\ ` ' \" ; : , . ? ! ( ) [ ] { } < >",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz",
    "Sign in, Sign up, Log out, Help, About, Contact us, Privacy, Terms",
    "Menu, View, Edit, Window, Tools, Format, Insert, Table, Share, Print",
    "New message, Reply, Forward, Delete, Archive, Send, Attach file",
    "Name: Date: Time: Address: Phone: Email: Password: Username:",
    "You are a helpful assistant.",
    "Describe the image. What is shown in the picture? Answer the question.",
    "system user assistant model",
)


@functools.lru_cache(maxsize=2)
def _trained_base_json(split_digits: bool = False) -> str:
    """Train the shared base BPE once per process (and digit rule) and return it serialised."""
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: leading spaces are meaningful in chat templates, like GPT-2/Qwen/Llama-3
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # Qwen's pre-tokenizer isolates every digit, so "(183, 458)" is ( 1 8 3 , ␣ 4 5 8 ): numbers get a
    # regular spelling that coordinates and arithmetic can be learnt over.
    digits = pre_tokenizers.Digits(individual_digits=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level]) if split_digits else byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # Repeating the corpus sharpens counts without changing which merges are ranked first.
    tok.train_from_iterator(list(_CORPUS_LINES) * 4, trainer=trainer)
    return tok.to_str()


def build_offline_tokenizer(
    special_tokens: Sequence[str],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str | None = None,
    named_tokens: dict[str, str] | None = None,
    add_bos: bool = False,
    split_digits: bool = False,
) -> PreTrainedTokenizerFast:
    """Return a deterministic byte-level BPE tokenizer with `special_tokens` appended as single added tokens
    (`split_digits`: every digit a token of its own, as in Qwen's tokenizers)."""
    tok = Tokenizer.from_str(_trained_base_json(split_digits))
    # normalized=False so the tokens are matched verbatim, as in the real checkpoints' tokenizer.json.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    if add_bos:
        if bos_token is None:
            raise ValueError("add_bos=True needs a bos_token")
        bos_id = tok.token_to_id(bos_token)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, bos_id)],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kwargs: dict[str, str] = {}
    for key, value in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token)):
        if value is not None:
            kwargs[key] = value
    if unk_token is not None:
        kwargs["unk_token"] = unk_token
    named = dict(named_tokens or {})
    listed = set(kwargs.values()) | set(named.values())
    extra = [t for t in special_tokens if t not in listed]
    # named tokens (e.g. Gemma3's boi_token/image_token) become tokenizer attributes and survive save/load
    return PreTrainedTokenizerFast(tokenizer_object=tok, extra_special_tokens=extra, **kwargs, **named)
