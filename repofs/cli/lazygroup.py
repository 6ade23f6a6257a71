"""A command group that imports a command's module, and builds the command, when the command
is first asked for.

typer builds each click command from its function's signature: ``inspect.signature`` and
``typing.get_type_hints`` over every option, and each command module imports what its
commands need (the ingest, the repository view, the vSphere option sets, the prune...).
Done for every command at start-up, this was a good part of what ``repofs backup`` spent
before it read a byte (docs/performance.md, "CLI start-up"). Here the group knows its
commands by name, from a table, and builds one on first use: running a command builds that
command alone; the group's ``--help`` (which prints every command's one-line help), shell
completion of a prefix, and walking ``commands.items()`` build the commands they show.

Limits: a command's name and its place in the listing come from the table, not from its
function; ``test_cli_conventions.py`` checks that the table names every command as typer
would. A module that fails to import fails the command that needs it (and ``--help``), not
the other commands.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping

import typer.core
from typer import _click


class CommandTable(MutableMapping):
    """Command name -> click command, built by ``build(name)`` on first access.

    Iterating, ``len`` and ``in`` read the table only; ``[name]`` and ``get(name)`` build
    that one command; ``items()``/``values()`` build every command they yield."""

    def __init__(self, names: list[str], build: Callable[[str], _click.Command]):
        self._names = list(names)
        self._built: dict[str, _click.Command] = {}
        self._build = build

    def __getitem__(self, name: str) -> _click.Command:
        command = self._built.get(name)
        if command is None:
            if name not in self._names:
                raise KeyError(name)
            command = self._built[name] = self._build(name)
        return command

    def __setitem__(self, name: str, command: _click.Command) -> None:
        if name not in self._names:
            self._names.append(name)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._built.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def built(self) -> list[str]:
        """The names of the commands built so far (for tests of the start-up's cost)."""
        return list(self._built)


class LazyGroup(typer.core.TyperGroup):
    """typer's group, listing its commands from the table without building them (typer's
    own ``list_commands`` reads every value)."""

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return list(self.commands)
