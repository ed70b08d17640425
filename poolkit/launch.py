"""Starting long-running processes: the one launcher, and the open-files limit they need.

Every process poolkit leaves running (supervisors, their children, the bench's scratch
PgBouncers) starts through :func:`launch`: no stdin, output to a log file (or inherited),
optionally in a session of its own (so a Ctrl-C of the caller does not reach it) and as
another OS user. Short commands that run to completion use ``subprocess.run`` directly.
"""

from __future__ import annotations

import resource
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def launch(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    append: bool = True,
    new_session: bool = False,
    as_user: Mapping[str, Any] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` and return at once.

    ``log``: stdout and stderr go there (appended, or truncated with ``append=False``); else
    they are inherited. ``as_user``: ``subprocess.Popen``'s user/group arguments
    (``ServiceUser.popen_kwargs()``). Raises OSError when the program cannot start.
    """
    if log is None:
        return subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                start_new_session=new_session, **(as_user or {}))  # fmt: skip
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=new_session,
                                **(as_user or {}))  # fmt: skip


def raise_nofile(wanted: int | None = None) -> int:
    """Raise the open-files soft limit towards ``wanted`` (default: the hard limit).

    PgBouncer needs one descriptor per client, the burst simulator one per instance. Returns
    the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None or hard == resource.RLIM_INFINITY:
        target = hard
    else:
        target = min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
