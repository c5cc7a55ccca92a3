"""The docs: a README that fits one sitting, relative links that resolve, every CLI subcommand documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from imagelora_dist.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
FIDELITY = REPO / "experiments" / "fidelity"

# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _linked_docs() -> list[Path]:
    pages = [README, *sorted(DOCS.glob("*.md")), FIDELITY / "README.md", FIDELITY / "RESULTS.md"]
    return [p for p in pages if p.exists()]


def _relative_links(text: str) -> list[str]:
    """Link targets outside code blocks and code spans that point into the repository."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s)://, mailto:, or an anchor in the same page
        out.append(target)
    return out


def test_readme_fits_one_sitting():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/ (limit 300)"


def test_link_parser_finds_and_skips_what_it_should():
    text = (
        "[a](docs/a.md#x) ![p](img.png) [w](https://x.org) [s](#top) `[c](no.md)`\n"
        '[t](b.md "title")\n```\n[f](fenced.md)\n```\n'
    )
    assert _relative_links(text) == ["docs/a.md#x", "img.png", "b.md"]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text())
    return {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#{1,6} (.+)$", text, re.M)
    }


@pytest.mark.parametrize("page", _linked_docs(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    missing, bad_anchor = [], []
    for target in _relative_links(page.read_text()):
        path, _, anchor = target.partition("#")
        dest = page.parent / path.split("?", 1)[0]
        if path and not dest.exists():
            missing.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad_anchor.append(target)
    assert not missing, f"{page.relative_to(REPO)}: links to missing files: {missing}"
    assert not bad_anchor, f"{page.relative_to(REPO)}: links to missing headings: {bad_anchor}"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in _relative_links(README.read_text())}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages missing from the README's table: {unlinked}"


def test_docs_pages_say_what_they_cover():
    """Each page: a title, then one line saying what it covers."""
    for page in [*sorted(DOCS.glob("*.md")), FIDELITY / "README.md"]:
        lines = page.read_text().splitlines() + ["", "", ""]
        assert lines[0].startswith("# "), f"{page.name}: starts with {lines[0]!r}, not a title"
        summary = lines[1] == "" and lines[2].strip() and lines[3] == ""
        assert summary, f"{page.name}: the title should be followed by one line saying what the page covers"


def _subcommands() -> list[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("build_parser() has no subcommands")


def test_cli_page_mentions_every_subcommand():
    text = (DOCS / "cli.md").read_text()
    commands = _subcommands()
    assert {"synth", "shard", "probe", "train", "eval", "run", "compare"} <= set(commands)
    missing = [c for c in commands if not re.search(rf"(`|imagelora-dist ){re.escape(c)}[`\s]", text)]
    assert not missing, f"docs/cli.md does not mention: {missing}"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's API example runs as printed (tiny model, offline) and leaves a loadable adapter."""
    block = re.search(r"## Python API\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no ```python block under '## Python API'"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert namespace["handle"].attached and namespace["handle"].num_parameters() > 0
