"""Text and flag parameters, checked without pydantic.

typer coerces each parameter's value through a pydantic ``TypeAdapter`` built on first use;
the first one imports pydantic and builds its core schema: ~0.1 CPU s of every command's
start-up, a fifth of all an incremental backup costs (docs/performance.md, "CLI start-up").
Nearly all our parameters are text (``str``, ``Optional[str]``, ``list[str]``), flags, or
numbers without bounds (``int``, ``float``, optional or not, such as ``restore --threads``).
Click hands text over as text and flags as ``True``/``False``: for those the check is that
they are, and a list comes back as a list, as typer's coercion gives it. A number given as
plain digits (``12``, ``-3``; ``2.5`` for a decimal) becomes that number, and a default that
already is one stays. Any other value (``1e3``, ``0x10``, ``1_000``, a flag's value from an
environment variable), a value typer would refuse, and parameters of every other kind
(bounded numbers, choices, paths, files, custom parsers or click types) go through typer's
own coercion, built when first needed: its answer and its error message are typer's.

Limits: this relies on typer's parameter internals (``type_descriptor``, ``_runtime_param``,
``get_help_option``, ``typer._coercion``; typer 0.29). If a typer release changes them,
``install`` leaves the parameters alone and typer's coercion applies: the same values, the
slower start-up (``test_cli_startup.py`` notices: a backup then imports pydantic).
"""
from __future__ import annotations

import re
from typing import Any, Optional

try:
    from typer._click import Context
    from typer._coercion import RuntimeParam, build_runtime_param
except ImportError:          # another typer: leave its coercion alone
    RuntimeParam = None      # type: ignore[assignment,misc]

_LIST_OF_TEXT = list[str]
_WHOLE = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_INTS = (int, Optional[int])
_FLOATS = (float, Optional[float])

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
            if kind in _INTS:
                if type(value) is int:
                    return value
                if isinstance(value, str) and _WHOLE.fullmatch(value):
                    return int(value)
            if kind in _FLOATS:
                if type(value) is float:
                    return value
                if isinstance(value, str) and _DECIMAL.fullmatch(value):
                    return float(value)
            return build_runtime_param(param.type_descriptor)._coerce_value(value, param=param, ctx=ctx)


def _plain(descriptor: Any) -> bool:
    info = descriptor.parameter_info
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None:
        return False
    if descriptor.is_file or descriptor.is_path or descriptor.is_choice:
        return False
    if descriptor.annotation in _INTS or descriptor.annotation in _FLOATS:
        return getattr(info, "min", None) is None and getattr(info, "max", None) is None
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
