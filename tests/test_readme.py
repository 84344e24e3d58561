"""Every console command in the README runs as written.

Which lines are commands (the rule the README follows):

- in a ```` ```console ```` block, each line starting with ``$ `` is a command (a line ending in
  ``\\`` continues on the next); the other lines are its output;
- in a ```` ```sh ```` block, every line that is not blank and not a ``#`` comment is a command;
- other blocks (plain ```` ``` ````, ```` ```toml ````, ...) are not commands.

Of those, the ones whose program is ``labpipe`` (after ``NAME=value`` assignments) are checked:
each is parsed by labpipe's own click parser, down to its subcommand, with the full argument list
(an unknown option, a misspelt subcommand, a missing required option, a wrong value or too many
arguments fail; paths are not required to exist). The cheap ones, which need nothing but an empty
data folder, are also run for real in a temporary folder.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from labpipe.cli.main import cli

README = Path(__file__).resolve().parents[1] / "README.md"

CHEAP = {("config",), ("db", "upgrade"), ("db", "current"), ("models", "list"), ("samples", "list")}
"""Subcommands run for real: they need only an empty data folder and finish in seconds."""

_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def readme_commands(text: str) -> list[tuple[int, str]]:
    """``(line number, command)`` of every command in ``text`` by the rule of the module docstring."""
    commands: list[tuple[int, str]] = []
    kind: str | None = None
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            kind = None if kind is not None else (stripped[3:].strip() or "plain")
            pending = None
            continue
        if pending is not None:
            start, so_far = pending
            so_far += " " + stripped.rstrip("\\").strip()
            pending = (start, so_far) if stripped.endswith("\\") else None
            if pending is None:
                commands.append((start, so_far))
            continue
        if kind == "console" and line.startswith("$ "):
            command = line[2:]
        elif kind == "sh" and stripped and not stripped.startswith("#"):
            command = stripped
        else:
            continue
        if command.rstrip().endswith("\\"):
            pending = (number, command.rstrip().rstrip("\\").strip())
        else:
            commands.append((number, command.strip()))
    return commands


def labpipe_args(command: str) -> list[str] | None:
    """The arguments after ``labpipe``, or None when the command runs another program."""
    words = shlex.split(command, comments=True)
    while words and _ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words or words[0] != "labpipe":
        return None
    return words[1:]


def parse(args: list[str]) -> click.Context:
    """Build the click context of the full command line, subcommand by subcommand (nothing runs)."""
    ctx = cli.make_context("labpipe", list(args))
    while isinstance(ctx.command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            raise click.UsageError("missing command", ctx)
        name, command, rest = ctx.command.resolve_command(ctx, rest)
        assert command is not None
        ctx = command.make_context(name or command.name or "", rest, parent=ctx)
    return ctx


def _walk(command: click.Command) -> Iterator[click.Command]:
    yield command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from _walk(sub)


def _command_path(ctx: click.Context) -> tuple[str, ...]:
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return tuple(reversed(names))


COMMANDS = [(n, c, labpipe_args(c)) for n, c in readme_commands(README.read_text(encoding="utf-8"))]
LABPIPE = [(n, c, a) for n, c, a in COMMANDS if a is not None]


def test_the_rule_finds_the_tour_and_skips_output():
    text = (
        "```console\n$ labpipe demo --out demo\nwrote demo/plate.tif\n$ FOO=1 labpipe config\n```\n"
        "```sh\n# a comment\nlabpipe train gate --out m \\\n  --specimens a\nmake run  # install\n```\n"
        "```\n$ labpipe not-a-command\n```\n"
    )
    found = readme_commands(text)
    assert [c for _, c in found] == [
        "labpipe demo --out demo",
        "FOO=1 labpipe config",
        "labpipe train gate --out m --specimens a",
        "make run  # install",
    ]
    assert [labpipe_args(c) for _, c in found] == [
        ["demo", "--out", "demo"],
        ["config"],
        ["train", "gate", "--out", "m", "--specimens", "a"],
        None,
    ]


def test_the_readme_has_console_commands():
    assert len(LABPIPE) >= 20
    names = {" ".join(a[:1]) for _, _, a in LABPIPE}
    assert {"demo", "process", "counts", "eval", "train", "serve"} <= names


def test_the_parser_catches_wrong_commands(monkeypatch):
    _no_path_checks(monkeypatch)
    for wrong in (
        ["counts", "--samples", "S"],  # unknown option
        ["eval", "count", "x"],  # misspelt subcommand
        ["eval", "counts", "x"],  # missing required --expected
        ["models", "set-default", "<version", "printed", "above>"],  # too many arguments
        ["counts", "--threshold", "high"],  # wrong value
    ):
        with pytest.raises(click.UsageError):
            parse(wrong)
    assert _command_path(parse(["eval", "counts", "x", "--expected", "1"])) == ("eval", "counts")


def _no_path_checks(monkeypatch) -> None:
    """The README's paths are examples (DATA_DIR, /data/families): do not require them to exist."""
    for command in _walk(cli):
        for param in command.params:
            if isinstance(param.type, click.Path) and param.type.exists:
                monkeypatch.setattr(param.type, "exists", False)


@pytest.mark.parametrize(("line", "command", "args"), LABPIPE, ids=[f"line{n}" for n, _, _ in LABPIPE])
def test_readme_command_parses(monkeypatch, line: int, command: str, args: list[str]):
    _no_path_checks(monkeypatch)
    try:
        parse(args)
    except click.ClickException as exc:
        pytest.fail(f"README.md line {line}: {command!r}: {exc.format_message()}")


def _cheap(args: list[str]) -> bool:
    try:
        return _command_path(parse(args)) in CHEAP and "--watch" not in args
    except click.ClickException:
        return False  # test_readme_command_parses says why


CHEAP_COMMANDS = [(n, c, a) for n, c, a in LABPIPE if _cheap(a)]


@pytest.mark.parametrize(
    ("line", "command", "args"), CHEAP_COMMANDS, ids=[f"line{n}" for n, _, _ in CHEAP_COMMANDS]
)
def test_cheap_readme_commands_run(tmp_path, monkeypatch, line: int, command: str, args: list[str]):
    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("LABPIPE_")]:
        monkeypatch.delenv(name)
    env = dict(word.split("=", 1) for word in shlex.split(command) if _ASSIGNMENT.match(word))
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, f"README.md line {line}: {command!r}: {result.output}"


def test_some_readme_commands_run_for_real():
    assert {_command_path(parse(a)) for _, _, a in CHEAP_COMMANDS} >= {("db", "upgrade"), ("config",)}
