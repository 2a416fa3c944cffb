"""Help and usage errors of every `asd` command, in one style.

Help is plain text that wraps at word boundaries (so it survives a pipe or a file) with one
placeholder style: upper-case words (``PATH``, ``TEXT``, ``INTEGER``, ``FLOAT``), choices as
``[a|b|c]``, flags bare, arguments ``NAME`` / ``[NAME]...``. A usage error (unknown command or
option, bad value, missing argument) is one ``Error: ...`` line and one ``Try 'asd CMD --help'``
line on stderr, exit 2, like every command's own usage checks.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

import typer
from typer.core import TyperCommand, TyperGroup

from asdcli.console import exit_on_stdout_error, failed_writing_stdout

USAGE_EXIT = 2
_PLACEHOLDERS = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH"}
_CLICK_PLACEHOLDERS = {
    "text": "TEXT",
    "integer": "INTEGER",
    "float": "FLOAT",
    "path": "PATH",
    "integer range": "INTEGER",
    "float range": "FLOAT",
    "boolean": "BOOLEAN",
}


# Text options that take one of a fixed set of values, checked at parse time like an Enum option
# (a bad value is a usage error, exit 2). tests/test_cli_help.py checks these against the library.
TEXT_CHOICES: dict[str, tuple[str, ...]] = {
    "--labels": ("machine", "attribute", "attribute+domain"),  # finetune.config.LABEL_MODES
    "--mixed-precision": ("no", "bf16", "fp16"),  # finetune.config.MIXED_PRECISION
    "--embedding": ("head", "pooled"),  # frontend.embedder.EMBEDDING_CHOICES
    "score --format": ("csv", "jsonl"),  # backend.score.SCORE_FORMATS
}


def _choices(param: Any) -> tuple[str, ...] | None:
    if getattr(param, "asd_choices", None):
        return tuple(param.asd_choices)
    desc = getattr(param, "type_descriptor", None)  # typer >= 0.20
    raw = desc.choices if desc is not None else getattr(param.type, "choices", None)
    if raw is None:
        return None
    return tuple(c.value if isinstance(c, Enum) else str(c) for c in raw)


def _annotation(param: Any) -> Any:
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return None
    ann = desc.annotation
    if get_origin(ann) in (list, tuple):
        ann = get_args(ann)[0]
    if get_origin(ann) is not None:  # Optional[X]
        ann = next((a for a in get_args(ann) if a is not type(None)), ann)
    return ann


def placeholder(param: Any) -> str:
    """The help placeholder of an option's value: a declared metavar (upper-cased, without a
    trailing ``...``), ``[a|b]`` for choices, else the value type's upper-case name."""
    if param.metavar:
        return param.metavar.removesuffix("...").strip("{}[]<>").upper()
    choices = _choices(param)
    if choices:
        return "[" + "|".join(choices) + "]"
    ann = _annotation(param)
    if ann is not None:
        return _PLACEHOLDERS.get(ann, "PATH" if isinstance(ann, type) and issubclass(ann, Path) else "TEXT")
    name = getattr(getattr(param, "type", None), "name", "text")
    return _CLICK_PLACEHOLDERS.get(name, name.upper())


def _argument_base(param: Any) -> str:
    return str(param.metavar or param.name).removesuffix("...").strip("{}[]<>").upper()


def argument_name(param: Any) -> str:
    """An argument's name in help: ``CLIPS...`` for a variadic one."""
    return _argument_base(param) + ("..." if param.nargs != 1 else "")


def argument_usage(param: Any) -> str:
    """An argument in the usage line: ``DATA``, ``[CLIPS]...``."""
    base = _argument_base(param)
    piece = base if param.required else f"[{base}]"
    return piece + ("..." if param.nargs != 1 else "")


def _extra(record: tuple[str, str] | None) -> str:
    """The ``[default: ...; x>=1]`` tail that typer appends to a help text."""
    if record is None:
        return ""
    m = re.search(r"\s\s(\[[^\[\]]*\])$", record[1]) or re.fullmatch(r"(\[[^\[\]]*\])", record[1])
    return m.group(1) if m else ""


def help_record(param: Any, ctx: Any) -> tuple[str, str] | None:
    """``(left column, help)`` of one parameter, in the placeholder style above."""
    if getattr(param, "hidden", False):
        return None
    record = param.get_help_record(ctx)
    text = param.help or ""
    extra = _extra(record)
    if param.param_type_name == "argument":
        left = argument_name(param)
    else:
        opts = ", ".join(sorted(param.opts, key=lambda o: (o.startswith("--"), o)))
        if param.secondary_opts:
            opts += " / " + ", ".join(param.secondary_opts)
        left = opts if param.is_flag or param.count else f"{opts} {placeholder(param)}"
    return left, f"{text}  {extra}".strip()


class AsdCommand(TyperCommand):
    """A command whose help and usage line follow :func:`placeholder` and :func:`argument_usage`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:  # error messages name an argument as its help does: 'DATA'
            if param.param_type_name == "argument":
                param.metavar = _argument_base(param)
            for opt in param.opts:
                choices = TEXT_CHOICES.get(f"{self.name} {opt}", TEXT_CHOICES.get(opt))
                if choices and _annotation(param) in (str, None):
                    setattr(param, "asd_choices", choices)  # noqa: B010 (click's Parameter has no slot for it)

    def _refuse_empty_paths(self, ctx: Any, args: list[str]) -> None:
        """A usage error for ``--out ""`` or an empty path argument (an unset shell variable):
        ``Path("")`` is the current folder, which would be read, or written into, instead."""
        options: dict[str, Any] = {opt: p for p in self.params if p.param_type_name == "option" for opt in p.opts}
        arguments = [p for p in self.params if p.param_type_name == "argument" and _annotation(p) is Path]
        empty = None
        tokens = iter(args)
        for token in tokens:
            if token == "--":  # the rest are arguments
                empty = arguments[0] if arguments and "" in tokens else None
                break
            name, eq, value = token.partition("=")
            param = options.get(name if token.startswith("--") else token)
            if param is not None and not (param.is_flag or param.count):
                if (value if eq else next(tokens, None)) == "" and _annotation(param) is Path:
                    empty = param
                    break
            elif token == "" and arguments:
                empty = arguments[0]
                break
        if empty is not None:
            raise _click_exceptions().BadParameter("is empty; give a path.", ctx=ctx, param=empty)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        self._refuse_empty_paths(ctx, args)
        rest = super().parse_args(ctx, args)
        for param in self.params:
            choices = getattr(param, "asd_choices", None)
            value = ctx.params.get(param.name)
            if choices and value is not None and value not in choices:
                raise _click_exceptions().BadParameter(
                    f"{value!r} is not one of {', '.join(repr(c) for c in choices)}.", ctx=ctx, param=param
                )
        return rest

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [argument_usage(p) for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        records = [(p.param_type_name, help_record(p, ctx)) for p in self.get_params(ctx)]
        for kind, title in (("argument", "Arguments"), ("option", "Options")):
            rows = [r for k, r in records if k == kind and r is not None]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _usage_message(error: Any) -> str:
    message = error.format_message().replace("Value error, ", "").replace("Input should be", "expected")
    message = " ".join(message.split())
    return message if message.endswith((".", "?", "!")) else message + "."


def show_usage_error(error: Any) -> None:
    """``Error: <what>`` and ``Try 'asd CMD --help' for help.`` on stderr."""
    ctx = getattr(error, "ctx", None)
    command = ctx.command_path if ctx is not None else "asd"
    typer.echo(f"Error: {_usage_message(error)}", err=True)
    typer.echo(f"Try '{command} --help' for help.", err=True)


def usage_error(message: str, ctx: Any = None) -> Exception:
    """A usage error of the command of ``ctx`` (a bad combination of arguments and options): one
    ``Error:`` line and the ``Try`` line, exit 2."""
    return _click_exceptions().UsageError(message, ctx=ctx)


def _click_exceptions() -> Any:
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")  # typer >= 0.20 ships its own click
    except ImportError:
        return importlib.import_module("click.exceptions")


def _abort_class(click_exceptions: Any) -> type[BaseException]:
    """Click's Abort (Ctrl-C at a prompt); typer's own click has none, typer.Abort stands in."""
    return getattr(click_exceptions, "Abort", None) or typer.Abort


class AsdGroup(TyperGroup):
    """The `asd` group: renders every usage error with :func:`show_usage_error`, exit 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            rv = self._standalone(args, prog_name, complete_var, windows_expand_args, **extra)
            sys.stdout.flush()  # here, not at exit: a full disk is then an error line, not "Exception ignored"
        except OSError as e:
            if not failed_writing_stdout(e):
                raise
            exit_on_stdout_error(e)
        sys.exit(rv if isinstance(rv, int) else 0)

    def _standalone(
        self,
        args: Sequence[str] | None,
        prog_name: str | None,
        complete_var: str | None,
        windows_expand_args: bool,
        **extra: Any,
    ) -> Any:
        click_exceptions = _click_exceptions()
        try:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except click_exceptions.NoArgsIsHelpError as e:
            typer.echo(e.ctx.get_help())
            sys.exit(0)
        except click_exceptions.UsageError as e:
            show_usage_error(e)
            sys.exit(USAGE_EXIT)
        except click_exceptions.ClickException as e:
            typer.echo(f"Error: {' '.join(e.format_message().split())}", err=True)
            sys.exit(e.exit_code)
        except _abort_class(click_exceptions):
            typer.echo("Aborted.", err=True)
            sys.exit(1)
