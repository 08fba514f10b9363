"""The README is a front door: its contents link every section and page, and its commands exist.

`scripts/check`'s suite companion: a section added without a line in the contents, a page in
docs/ nobody links, or a flag the CLI does not have (renamed, or never written) fails here.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mirror.commands.main import build_parser

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
CONTENTS = README.split("## Contents", 1)[1].split("\n## ", 1)[0]


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def test_the_contents_link_every_section() -> None:
    sections = re.findall(r"^#{2,3} (.+)$", README, re.MULTILINE)
    linked = set(re.findall(r"\]\(#([^)]+)\)", CONTENTS))
    missing = [title for title in sections if title != "Contents" and slug(title) not in linked]
    assert not missing, f"sections missing from the contents: {missing}"


def test_every_anchor_in_the_readme_exists() -> None:
    anchors = {slug(title) for title in re.findall(r"^#{1,4} (.+)$", README, re.MULTILINE)}
    broken = sorted(set(re.findall(r"\]\(#([^)]+)\)", README)) - anchors)
    assert not broken, f"links to no heading: {broken}"


def test_every_page_in_docs_is_linked_from_the_contents() -> None:
    pages = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "docs").glob("*.md"))
    unlinked = [page for page in pages if f"]({page})" not in CONTENTS]
    assert not unlinked, f"docs pages not linked from the README's contents: {unlinked}"
    for linked in re.findall(r"\]\(([\w/.-]+\.md)[^)]*\)", README):
        assert (REPO / linked).exists(), f"the README links {linked}, which does not exist"


def _options(parser: argparse.ArgumentParser) -> tuple[set[str], dict[str, argparse.ArgumentParser]]:
    flags = set(parser._option_string_actions)
    children: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            children.update(action.choices)
    return flags, children


def _commands() -> list[tuple[str, list[str]]]:
    """(`mirror …` as written, its words) for each command in the README's code, blocks and inline."""
    code = re.findall(r"```[a-z]*\n(.*?)```", README, re.DOTALL) + re.findall(r"`([^`\n]+)`", README)
    found = []
    for block in code:
        for line in block.splitlines():
            for match in re.finditer(r"(?:^|[\s/])mirror ((?:[a-z][\w-]*)(?: .*)?)$", line):
                text = re.split(r"\s(?:#|&&|;|\|\s*kubectl)", match.group(1))[0]
                found.append((text, text.split()))
    return found


def test_readme_commands_name_only_flags_the_cli_has() -> None:
    top_flags, commands = _options(build_parser())
    checked = 0
    for text, words in _commands():
        parser: argparse.ArgumentParser | None = None
        flags: set[str] = set()
        for word in words:
            word = word.strip("[]…,")
            if word in commands and (parser is None or word not in flags):
                parser = commands[word]  # a command (after `|`, another one of the usage line)
                flags, children = _options(parser)
                commands_here = children
                if children:
                    commands = {**commands, **children}
                continue
            if word.startswith("--") and parser is not None:
                name = word.split("=", 1)[0]
                assert name in flags | top_flags or any(
                    name in _options(child)[0] for child in commands_here.values()
                ), f"README: `mirror {text}` names {name}, which `mirror {parser.prog.split()[-1]}` does not take"
                checked += 1
    assert checked > 30, f"only {checked} flags found: is the README's code still read?"
