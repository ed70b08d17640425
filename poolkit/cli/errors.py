"""The CLI's exit codes and the two errors every command raises."""

from __future__ import annotations

import click

from poolkit.config import ConfigError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class BadInput(click.ClickException):
    """Invalid stack config or arguments: message on stderr, exit code 2."""

    exit_code = EXIT_BAD_INPUT


class StepFailed(click.ClickException):
    """A step of a command failed (a server did not start, a check failed): exit code 1."""

    exit_code = EXIT_FAILED


def config_error(error: ConfigError) -> BadInput:
    """Every problem of a stack config, one a line."""
    count = len(error.problems)
    lines = "\n".join(f"  - {problem}" for problem in error.problems)
    return BadInput(f"invalid stack config ({count} problem{'s' * (count != 1)}):\n{lines}")


def step_failed(error: Exception) -> StepFailed:
    """The failure with passwords masked and, when it names a log, that log's last lines."""
    from poolkit.local import log_tail
    from poolkit.urls import mask

    message = mask(str(error))
    if not isinstance(error, click.ClickException) and type(error).__name__ != "LocalError":
        message = f"{type(error).__name__}: {message}"
    log = getattr(error, "log", None)
    if log is not None:
        message += f"\n--- last lines of {log}:\n{mask(log_tail(log))}"
    return StepFailed(message)
