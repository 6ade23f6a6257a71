"""``repofs report --html FILE``: the repository on one self-contained page (repofs/report/)."""
from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from . import oplog, output
from .common import JsonOpt, PasswordFileOpt, RepoOpt, UsageProblem, emit, open_repository


def report(html: Annotated[Optional[str], typer.Option("--html", metavar="FILE", help="Write the page here ('-': stdout).")] = None,
           force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False,
           repo: RepoOpt = None, password_file: PasswordFileOpt = None, json_out: JsonOpt = False) -> None:
    """A report to look at: generations, growth, ratios, verification, protection, last errors."""
    from repofs.report.data import gather
    from repofs.report.page import render
    from repofs.view.export import write_file
    if not html and not json_out:
        raise UsageProblem("give --html FILE (or --json for the figures)")
    repository = open_repository(repo, password_file)
    with repository.lease("reader"):
        doc = gather(repository, oplog.read(repository.location))
    if json_out:
        emit(doc)
    if html == "-":
        typer.echo(render(doc))
    elif html:
        path = os.path.abspath(html)
        write_file(path, render(doc).encode("utf-8"), force=force)
        if not output.quiet() and not json_out:
            typer.echo(f"report written to {path}", err=True)
