"""Keep one server process running: restart it within a second when it dies, stop it on SIGTERM.

    python -m poolkit.supervisor --pidfile RUN/x.sup.pid [--env-file F] [--child-pidfile P]
        [--raise-nofile] -- COMMAND [ARG...]

The local runner starts this detached (its own session), already as the unprivileged user, with
stdout/stderr going to a log file; the child inherits them. The child's environment is the
supervisor's (which the runner keeps free of passwords) plus the ``KEY=value`` lines of
``--env-file`` (the sample apps' ``.env``): nothing secret ever appears in an argument list.

A child that keeps dying right after its start (5 times within 10 s, each within 1 s of its
start) is given up: the supervisor exits 1 so that ``poolkit status`` shows it down instead of
a restart loop. A child that ran longer (killed by an operator or the OOM killer) is always
restarted.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from poolkit.envfile import read_env
from poolkit.launch import launch, raise_nofile

RESTART_DELAY_S = 0.2
"""Pause before a restart; keeps a crash loop from spinning while restarting within ~1 s."""
CRASH_WINDOW_S = 10.0
CRASH_LIMIT = 5
STARTUP_GRACE_S = 1.0
"""A child that dies sooner than this after its start counts towards the crash limit."""
STOP_TIMEOUT_S = 10.0


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} supervisor[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str],
        child_pidfile: Path | None,
        stop_signal: signal.Signals | None = None,
    ):
        self.command = list(command)
        self.stop_signal = stop_signal
        self.env = env
        self.child_pidfile = child_pidfile
        self.child: subprocess.Popen[bytes] | None = None
        self.child_started = 0.0
        self.stopping = False
        self.crashes: deque[float] = deque(maxlen=CRASH_LIMIT)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if self.child and self.child.poll() is None:
            self.child.send_signal(self.stop_signal or signum)

    def start_child(self) -> None:
        self.child = launch(self.command, env=self.env)
        self.child_started = time.monotonic()
        log(f"started {Path(self.command[0]).name} pid {self.child.pid}")

    def clean_child_pidfile(self) -> None:
        # The child died without removing its pid file (SIGKILL): drop it so the next start
        # does not mistake a recycled pid for a running instance.
        if self.child_pidfile and self.child_pidfile.exists():
            self.child_pidfile.unlink(missing_ok=True)

    def run(self) -> int:
        self.start_child()
        while True:
            assert self.child is not None
            code = self.child.wait()
            if self.stopping:
                log(f"child exited with {code} after stop request")
                self.clean_child_pidfile()
                return 0
            now = time.monotonic()
            uptime = now - self.child_started
            log(f"child pid {self.child.pid} exited with {code} after {uptime:.1f} s; restarting")
            self.clean_child_pidfile()
            if uptime < STARTUP_GRACE_S:
                self.crashes.append(now)
            if len(self.crashes) == CRASH_LIMIT and now - self.crashes[0] < CRASH_WINDOW_S:
                log(f"child died {CRASH_LIMIT} times within {CRASH_WINDOW_S:.0f} s; giving up")
                return 1
            time.sleep(RESTART_DELAY_S)
            if self.stopping:
                return 0
            self.start_child()

    def stop_child(self) -> None:
        """Second line of defence at exit: a child still running gets SIGKILL after a grace."""
        if self.child and self.child.poll() is None:
            self.child.send_signal(self.stop_signal or signal.SIGTERM)
            try:
                self.child.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log("child did not stop; killing it")
                self.child.kill()
                self.child.wait()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m poolkit.supervisor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pidfile", type=Path, required=True, help="the supervisor's pid file")
    parser.add_argument("--child-pidfile", type=Path, help="pid file the child writes, if any")
    parser.add_argument("--env-file", type=Path, help="KEY=value lines added to the child's env")
    parser.add_argument(
        "--raise-nofile",
        action="store_true",
        help="raise RLIMIT_NOFILE soft to hard before starting the child",
    )
    parser.add_argument(
        "--stop-signal",
        type=lambda name: signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"],
        help="signal that stops the child gracefully (default: the one the supervisor got); "
        "PgBouncer: INT, its safe shutdown on every version (1.23+ waits for clients on TERM)",
    )
    parser.add_argument("command", nargs="+", help="the child's command line (after --)")
    return parser.parse_args(argv)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(os.environ)
    if args.env_file:
        env |= read_env(args.env_file)
    if args.raise_nofile:
        log(f"open files limit {raise_nofile()}")
    supervisor = Supervisor(args.command, env, args.child_pidfile, args.stop_signal)
    signal.signal(signal.SIGTERM, supervisor.on_signal)
    signal.signal(signal.SIGINT, supervisor.on_signal)
    args.pidfile.write_text(f"{os.getpid()}\n", encoding="utf-8")
    try:
        return supervisor.run()
    except OSError as error:
        log(f"cannot start {args.command[0]}: {error}")
        return 1
    finally:
        supervisor.stop_child()
        args.pidfile.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
