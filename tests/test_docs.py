"""The README and docs/ cannot go stale silently: every `churnops` command shown in a shell block
parses against the real CLI, every `make` target shown exists, and every image shown is there.
(The walk-throughs themselves run in the end-to-end tests; `mkdocs build --strict` in `make
check` catches broken links.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from churnops.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell)\n(.*?)```", re.DOTALL)


def _commands(page: Path) -> list[list[str]]:
    """Each simple command in the page's shell blocks, as words, without VAR=value prefixes."""
    found = []
    for block in SHELL_BLOCK.findall(page.read_text()):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(pending + line, comments=True)
            except ValueError:  # NB: a quoted argument that spans lines (curl -d '{ ... }')
                pending += line + "\n"
                continue
            pending = ""
            command: list[str] = []
            for word in [*words, "&&"]:
                if word in ("&&", "||", ";", "|"):
                    while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
                        command.pop(0)
                    if command:
                        found.append(command)
                    command = []
                else:
                    command.append(word)
    return found


def _shown(program: str) -> list[tuple[str, list[str]]]:
    return [
        (page.name, words[1:]) for page in PAGES for words in _commands(page) if words[0] == program
    ]


def _parse(args: list[str]) -> None:
    """Parse ``args`` as `churnops ARGS` would, down to the subcommand, without running it."""
    ctx = main.make_context("churnops", list(args))
    command: click.Command = main
    rest = [*ctx._protected_args, *ctx.args]
    while isinstance(command, click.Group) and rest:
        name, found, rest = command.resolve_command(ctx, rest)
        assert found is not None and name is not None
        command = found
        ctx = command.make_context(name, rest, parent=ctx)
        rest = (
            [*getattr(ctx, "_protected_args", []), *ctx.args]
            if isinstance(command, click.Group)
            else []
        )
    assert not isinstance(command, click.Group), f"`churnops {' '.join(args)}` names no command"


def test_the_pages_show_churnops_commands_at_all() -> None:
    assert len(_shown("churnops")) >= 30


@pytest.mark.parametrize(
    "stale", [["promote", "--no-such-flag"], ["train", "--seed", "seven"], ["no-such-command"]]
)
def test_a_command_the_cli_no_longer_accepts_is_caught(stale: list[str]) -> None:
    with pytest.raises(click.UsageError):
        _parse(stale)


@pytest.mark.parametrize(("page", "args"), _shown("churnops"), ids=lambda v: str(v)[:60])
def test_every_churnops_command_shown_in_the_docs_parses(page: str, args: list[str]) -> None:
    try:
        _parse(args)
    except click.UsageError as exc:
        pytest.fail(f"{page}: `churnops {' '.join(args)}`: {exc.format_message()}")


def test_every_make_target_shown_exists() -> None:
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    shown = {args[0] for _, args in _shown("make") if args}
    assert shown and shown <= targets


def test_every_image_the_pages_show_is_in_the_repository() -> None:
    for page in PAGES:
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / image).is_file(), f"{page.name} shows a missing {image}"


def test_the_sites_benchmarks_page_is_the_repositorys_benchmarks_file() -> None:
    # NB: the site cannot link outside docs/, so it carries a copy: `cp BENCHMARKS.md docs/`.
    assert (ROOT / "docs" / "benchmarks.md").read_text() == (ROOT / "BENCHMARKS.md").read_text()
