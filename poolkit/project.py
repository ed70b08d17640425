"""Where the poolkit project is: the nearest folder that holds ``Pulumi.yaml``."""

from __future__ import annotations

from pathlib import Path


class NoProject(LookupError):
    """No ``Pulumi.yaml`` in the folder or above it."""


def project_root(start: Path | None = None, *, required: bool = False) -> Path:
    """The nearest folder holding ``Pulumi.yaml``, from ``start`` (default: cwd) up.

    Outside a project this is ``start`` itself, so the local target works from any folder
    with ``--stack-file``; ``required=True`` raises NoProject instead (the Pulumi target needs
    the project's program).
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "Pulumi.yaml").is_file():
            return folder
    if required:
        raise NoProject(f"no Pulumi.yaml in {here} or above: run this in the poolkit project")
    return here
