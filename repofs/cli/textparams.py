"""Text and flag parameters, checked without pydantic.

typer coerces each parameter's value through a pydantic ``TypeAdapter`` built on first use;
the first one imports pydantic and builds its core schema: ~0.1 CPU s of every command's
start-up, a fifth of all an incremental backup costs (docs/performance.md, "CLI start-up").
Nearly all our parameters are text (``str``, ``Optional[str]``, ``list[str]``) or flags,
which click already hands over as text or as ``True``/``False``: for those values the check
is that they are, and a list comes back as a list, as typer's coercion gives it. Any other
value (a flag's value from an environment variable, say), and parameters of every other kind
(numbers, choices, paths, files, custom parsers or click types), go through typer's own
coercion, built when first needed.

Limits: this relies on typer's parameter internals (``type_descriptor``, ``_runtime_param``,
``get_help_option``, ``typer._coercion``; typer 0.29). If a typer release changes them,
``install`` leaves the parameters alone and typer's coercion applies: the same values, the
slower start-up (``test_cli_startup.py`` notices: a backup then imports pydantic).
"""
from __future__ import annotations

from typing import Any

try:
    from typer._click import Context
    from typer._coercion import RuntimeParam, build_runtime_param
except ImportError:          # another typer: leave its coercion alone
    RuntimeParam = None      # type: ignore[assignment,misc]

_LIST_OF_TEXT = list[str]

if RuntimeParam is not None:
    class _Plain(RuntimeParam):
        """Text, a list of texts, or a flag, as click parsed it; anything else as typer would."""

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            kind = self.annotation
            if kind is bool and isinstance(value, bool) or kind is str and isinstance(value, str):
                return value
            if kind == _LIST_OF_TEXT and isinstance(value, (list, tuple)) and \
                    all(isinstance(v, str) for v in value):
                return list(value)
            return build_runtime_param(param.type_descriptor)._coerce_value(value, param=param, ctx=ctx)


def _plain(descriptor: Any) -> bool:
    info = descriptor.parameter_info
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None:
        return False
    if descriptor.is_file or descriptor.is_path or descriptor.is_choice:
        return False
    return descriptor.annotation in (str, bool) or descriptor.annotation == _LIST_OF_TEXT


def install(command: Any, help_option_names: list[str]) -> None:
    """Give ``command``'s text and flag parameters, its help option included, the plain
    check (not its subcommands')."""
    if RuntimeParam is None:
        return
    try:
        params = list(command.params)
        help_option = command.get_help_option(Context(command, help_option_names=help_option_names))
    except (AttributeError, TypeError):
        return
    if help_option is not None:
        params.append(help_option)
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", False) is not None:
            continue                          # not typer's, or already coerced once
        try:
            plain = _plain(descriptor)
        except AttributeError:
            return
        if plain:
            param._runtime_param = _Plain(parameter_info=descriptor.parameter_info,
                                          annotation=descriptor.annotation)
