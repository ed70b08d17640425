"""Commands and supervised processes of one stack, run as the service user in its state dir."""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from poolkit.launch import launch
from poolkit.local.errors import LocalError, log_tail
from poolkit.local.machine import ServiceUser, own, service_python
from poolkit.local.processes import pid_alive, port_listening, terminate, wait_for
from poolkit.local.state import SUPERVISOR, Paths

SERVICE_WAIT_S = 15.0


@dataclass(frozen=True)
class Host:
    """Where (``paths``), with what (``pgbin``) and as whom (``user``) a stack's processes run."""

    paths: Paths
    pgbin: Path
    user: ServiceUser

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: no variable of the caller (POOLKIT_*_PASSWORD stays out)."""
        user = self.user
        return {
            "PATH": f"{self.pgbin}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": user.home,
            "USER": user.name,
            "LOGNAME": user.name,
            **extra,
        }

    def run(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        timeout: float = 120,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion as the service user; output captured, no stdin."""
        try:
            return subprocess.run(argv, env=env or self.env(), cwd=cwd or self.paths.root,
                                  capture_output=True, text=True, errors="replace",
                                  timeout=timeout, check=False, stdin=subprocess.DEVNULL,
                                  **self.user.popen_kwargs())  # fmt: skip
        except subprocess.TimeoutExpired:
            name = Path(argv[0]).name
            raise LocalError(f"{name} did not finish within {timeout:.0f} s") from None

    def spawn_supervised(
        self, name: str, command: list[str], env: dict[str, str], cwd: Path, *options: str
    ) -> int:
        """Start ``command`` under ``poolkit.supervisor``, detached; return the supervisor's pid."""
        log = self.paths.log / f"{name}.out.log"
        log.touch(mode=0o600)
        own(log, self.user)
        python, _paths = service_python(self.user)
        argv = [python, "-m", SUPERVISOR, "--pidfile", str(self.paths.supervisor_pid(name)),
                *options, "--", *command]  # fmt: skip
        try:
            process = launch(argv, env=env, cwd=cwd, log=log, new_session=True,
                             as_user=self.user.popen_kwargs())  # fmt: skip
        except OSError as error:
            raise LocalError(f"cannot start the supervisor of {name}: {error}") from None
        return process.pid

    def wait_listening(self, name: str, pid: int, port: int, logs: list[Path]) -> None:
        """Wait until 127.0.0.1:``port`` accepts; else stop the supervisor and show its logs."""

        def alive() -> bool:
            return pid_alive(pid, SUPERVISOR)

        if not wait_for(lambda: port_listening(port), SERVICE_WAIT_S, alive):
            tails = "\n".join(f"--- {log}\n{log_tail(log, 15)}" for log in logs)
            why = (
                f"is not listening on 127.0.0.1:{port} after {SERVICE_WAIT_S:.0f} s"
                if alive()
                else f"kept exiting before it listened on 127.0.0.1:{port}"
            )
            with contextlib.suppress(Exception):
                terminate(pid, SUPERVISOR)
            raise LocalError(f"{name} {why}. Logs:\n{tails}")
