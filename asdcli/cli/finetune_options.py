"""The fine-tuning options of `asd finetune` and `asd run`, declared once: one CLI option per
FinetuneConfig field (its flag, default and help come from the field), added to a command by
:func:`with_finetune_options`."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import typer

from asdcli.finetune.config import FinetuneConfig, check_given_options, option_flag

FINETUNE_OPTIONS = "finetune_options"  # the keyword argument the decorated command receives
_ALIAS_PREFIX = "alias__"
_CONTEXT = "finetune_context__"  # typer passes the click context here: which options were typed
_GIVEN_SOURCES = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")  # click ParameterSource names; not DEFAULT*


def _parameters(skip: frozenset[str]) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(FinetuneConfig)
    params = []
    for f in dataclasses.fields(FinetuneConfig):
        if "help" not in f.metadata or f.name in skip:
            continue
        flag, alias = option_flag(f.name), f.metadata.get("alias")
        if hints[f.name] is bool:
            option = typer.Option(f.default, flag, help=f.metadata["help"])
        else:
            option = typer.Option(f.default, flag, help=f.metadata["help"], show_default=f.default is not None)
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=hints[f.name])
        )
        if alias:  # an older spelling: accepted, not shown
            params.append(
                inspect.Parameter(
                    _ALIAS_PREFIX + f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=typer.Option(None, alias, hidden=True),
                    annotation=typing.Optional[hints[f.name]],  # noqa: UP045 (a runtime type object)
                )
            )
    return params


def _given(ctx: typer.Context | None, names: set[str]) -> set[str]:
    """The FinetuneConfig fields among ``names`` whose option (or its alias) the user set (none
    when the command is called without typer)."""
    given: set[str] = set()
    if ctx is None:
        return given
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in _GIVEN_SOURCES:
            given.add(name.removeprefix(_ALIAS_PREFIX))
    return given


def with_finetune_options(
    *, skip: tuple[str, ...] = (), off_switch: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add an option for every FinetuneConfig field but ``checkpoint`` and ``skip`` to a Typer
    command; the command gets them as one dict keyword argument ``finetune_options`` (field ->
    value), ready for ``FinetuneConfig(checkpoint=..., **finetune_options)``. An option the user set
    that the other options make void is a ConfigError: a LoRA option with --full-finetune, and,
    when the command's own flag ``off_switch`` (e.g. ``--no-finetune``) is set, every option that
    only fine-tuning reads."""
    off_name = None if off_switch is None else off_switch.removeprefix("--").replace("-", "_")

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command, eval_str=True)
        added = _parameters(frozenset(skip))
        names = {p.name for p in added}

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = _given(kwargs.pop(_CONTEXT, None), names)
            options = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
            for name in [n for n in options if n.startswith(_ALIAS_PREFIX)]:
                value = options.pop(name)
                if value is not None:
                    options[name[len(_ALIAS_PREFIX) :]] = value
            check_given_options(options, given, off_switch if off_name and kwargs.get(off_name) else None)
            return command(*args, **kwargs, **{FINETUNE_OPTIONS: options})

        kept = [p for p in own.parameters.values() if p.name != FINETUNE_OPTIONS]
        positional = [p for p in kept if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in kept if p not in positional]
        context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        signature = own.replace(parameters=[*positional, *keyword, *added, context])
        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        del wrapper.__wrapped__  # typer must read the signature above, not the command's
        return wrapper

    return decorate
