"""The one set of stack-selection options every command shares.

``@stack_options()`` adds ``--stack NAME`` and ``--stack-file PATH`` (and ``--state-dir DIR``
with ``state_dir=True``) and passes one :class:`StackChoice` as the ``stack`` argument. The
command then asks it for what it needs: the validated config (:meth:`StackChoice.config`) or
the local runner (:meth:`StackChoice.runner`), which also works from ``--state-dir`` alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from poolkit.cli.errors import BadInput, config_error
from poolkit.config import ConfigError, StackConfig, load_stack, stack_name_of, stack_path
from poolkit.project import project_root
from poolkit.sizing import Plan, plan

if TYPE_CHECKING:
    from poolkit.local import Runner


@dataclass(frozen=True)
class StackChoice:
    """What ``--stack``, ``--stack-file`` and ``--state-dir`` picked."""

    name: str | None
    file: Path | None
    state_dir: Path | None = None

    def config(self) -> StackConfig:
        """The validated stack config; BadInput unless exactly one of --stack/--stack-file."""
        if bool(self.name) == bool(self.file):
            raise BadInput("give exactly one of --stack NAME or --stack-file PATH")
        if self.name:
            root = project_root()
            path = stack_path(root, self.name)
            if not path.is_file():
                known = sorted(p.name.split(".")[1] for p in root.glob("Pulumi.*.yaml"))
                raise BadInput(
                    f"--stack {self.name}: {path.name} does not exist in {root}. "
                    f"Fix: use one of {', '.join(known) or 'no stacks yet'}, or create {path.name}"
                )
        else:
            path = self.file  # type: ignore[assignment]
        try:
            return load_stack(path, self.name)
        except ConfigError as error:
            raise config_error(error) from None

    def stack_name(self, choices: str = "--stack NAME or --stack-file PATH") -> str:
        """The stack's name, from --stack or the stack file's name, without reading the file."""
        if bool(self.name) == bool(self.file):
            raise BadInput(f"give one of {choices}")
        return self.name or stack_name_of(self.file)  # type: ignore[arg-type]

    def local_state_dir(self) -> Path:
        """--state-dir, else the default state dir of the stack's name."""
        from poolkit.local import default_state_dir

        if self.state_dir is not None:
            return self.state_dir
        name = self.stack_name("--stack NAME, --stack-file PATH or --state-dir DIR")
        return default_state_dir(project_root(), name)

    def runner(self) -> Runner:
        """The local runner of the stack, found by state dir, name or stack file."""
        from poolkit.local import Runner

        return Runner(self.local_state_dir())

    def given(self) -> str:
        """The option that picked the stack, as the user typed it (for messages)."""
        if self.state_dir:
            return f"--state-dir {self.state_dir}"
        return f"--stack {self.name}" if self.name else f"--stack-file {self.file}"


def stack_options(*, state_dir: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the stack-selection options; the command gets ``stack: StackChoice``."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(stack_name: str | None, stack_file: Path | None, **kwargs: Any) -> Any:
            folder = kwargs.pop("state_dir", None)
            return command(stack=StackChoice(stack_name, stack_file, folder), **kwargs)

        if state_dir:
            wrapper = click.option(
                "--state-dir", type=click.Path(path_type=Path, file_okay=False),
                help="State folder of the local target (default: .poolkit/<stack> in the "
                     "project root, or $POOLKIT_STATE_DIR).")(wrapper)  # fmt: skip
        wrapper = click.option(
            "--stack-file", type=click.Path(path_type=Path, dir_okay=False),
            help="Any stack settings file (the Pulumi.<stack>.yaml format); its name "
                 "names the stack.")(wrapper)  # fmt: skip
        return click.option(
            "--stack", "stack_name", metavar="NAME",
            help="Stack NAME: reads Pulumi.NAME.yaml in the project root.")(wrapper)  # fmt: skip

    return decorate


def plan_or_exit(stack: StackConfig) -> Plan:
    """The sizing plan, or BadInput listing every problem."""
    try:
        return plan(stack)
    except ConfigError as error:
        raise config_error(error) from None


def warn(stack: StackConfig) -> None:
    for warning in stack.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
