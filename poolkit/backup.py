"""pgBackRest for one stack: stanza, backup, list, point-in-time restore, archive check.

One job: run pgBackRest's commands against a target. A target only knows how to run a command
as the server's OS user, where the data directory is, and how to switch to a restored one
(stop, rename, start, wait for recovery); every decision (which backup, whether a time is
reachable, what an error means) is made here, the same for both targets.

A restore never overwrites: it fills a fresh directory (the target's ``restore_dir``), and
only after confirmation moves the live data into ``<previous_dir>/<UTC time>`` and the
restored data into its place. Anything refused (no backup, a time before the first backup, a
missing repository, a wrong passphrase) is refused before anything changes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

LATEST = "latest"
RECOVERY_WAIT_S = 300.0


class BackupError(RuntimeError):
    """A pgBackRest step failed (exit code 1)."""


class BackupRefused(ValueError):
    """Bad input: nothing was changed (exit code 2)."""


class RepositoryMismatch(BackupError):
    """The repository holds another cluster's backups: a stack deployed anew (``pulumi
    destroy`` then ``up``, or ``down --purge`` then ``up``) next to the kept repository."""


@dataclass(frozen=True)
class Done:
    """What a pgBackRest command returned."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).strip()


class Target(Protocol):
    """Where pgBackRest runs: the local processes or the Postgres container."""

    stanza: str
    conf: str
    """pgbackrest.conf as the server sees it."""
    restore_dir: str
    """Where a restore fills a fresh data directory."""
    previous_dir: str
    """Where a switch keeps the replaced data, one folder per restore."""

    def pgbackrest(self, *args: str, timeout: float = 3600) -> Done:
        """Run ``pgbackrest --config=… --stanza=… ARGS`` as the server's OS user."""
        ...

    def prepare_restore_dir(self, path: str) -> None:
        """An empty directory at ``path`` owned by the server's OS user (0700)."""
        ...

    def remove_dir(self, path: str) -> None: ...

    def switch(self, restored: str, keep: str, wait_s: float) -> None:
        """Stop the server, move the data directory to ``keep`` and ``restored`` into its
        place, start the server and wait until recovery has finished."""
        ...


@dataclass(frozen=True)
class BackupSet:
    """One backup in the repository."""

    label: str
    kind: str
    """full | diff | incr."""
    started: datetime
    stopped: datetime
    size: int
    """Bytes of the database at backup time."""
    stored: int
    """Bytes in the repository (compressed, encrypted)."""

    def line(self) -> str:
        return (f"{self.label}  {self.kind:<4}  {self.started:%Y-%m-%d %H:%M:%S} → "
                f"{self.stopped:%H:%M:%S} UTC  {self.size / 1e6:,.1f} MB, "
                f"{self.stored / 1e6:,.1f} MB stored")  # fmt: skip


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _explain(done: Done, what: str) -> str:
    """pgBackRest's error turned into what went wrong and what to do."""
    text = done.output
    if re.search(r"unable to verify certificate|in certificate common name or subject", text):
        return (f"{what}: TLS verification of the S3 server's certificate failed, nothing was "
                "written to the bucket. Fix: set poolkit:backup.s3_ca_file to the PEM file of "
                "the CA that signed that certificate, and check that the certificate names the "
                f"host of poolkit:backup.s3_endpoint (pgbackrest: {_errors(text)})")  # fmt: skip
    if re.search(r"CryptoError|FormatError|decrypt|repo encrypted|\[095\]|magic", text, re.I):
        return (f"{what}: the repository cannot be decrypted with this stack's passphrase "
                "(poolkit keeps it in secrets.json locally, in Pulumi state for Docker). Use "
                "the passphrase the repository was made with")  # fmt: skip
    if re.search(r"missing stanza|FileMissingError|unable to open missing file|\[055\]|"
                 r"does not exist", text):  # fmt: skip
        return (f"{what}: no backup repository for stanza here (missing or empty). Run "
                "`poolkit backup` first, or point poolkit:backup at the repository that holds "
                f"the backups (pgbackrest: {_errors(text)})")  # fmt: skip
    return f"{what} failed (pgbackrest exit {done.returncode}): {_errors(text)}"


def _errors(text: str) -> str:
    """pgBackRest's ERROR lines (or its last lines), printable, at most 500 characters."""
    lines = [line for line in text.splitlines() if "ERROR" in line] or text.splitlines()[-5:]
    return " / ".join(lines).encode("ascii", "replace").decode()[:500]


def ensure_stanza(target: Target) -> None:
    """Create the stanza (repository layout, checks the server's system id); idempotent."""
    done = target.pgbackrest("stanza-create", timeout=300)
    if done.returncode != 0 and re.search(r"\[028\]|do not match the database", done.output):
        raise RepositoryMismatch(
            f"the backup repository of stanza {target.stanza} holds the backups of an earlier "
            "cluster of this stack, not of the one running now, so new WAL is not archived. "
            "Fix: `poolkit restore --to latest` brings that cluster back (archiving resumes); "
            "to start afresh instead, delete the repository (README, 'Backups')")
    if done.returncode != 0:
        raise BackupError(_explain(done, "pgbackrest stanza-create"))


def list_backups(target: Target) -> list[BackupSet]:
    """Every backup in the repository, oldest first; refuses a missing or unreadable one."""
    done = target.pgbackrest("info", "--output=json", timeout=120)
    if done.returncode != 0:
        raise BackupRefused(_explain(done, "reading the backup repository"))
    try:
        stanzas = json.loads(done.stdout, strict=False)  # messages may quote binary garbage
    except ValueError:
        raise BackupRefused(_explain(done, "reading the backup repository")) from None
    stanza = next((s for s in stanzas if s.get("name") == target.stanza), None)
    status = (stanza or {}).get("status", {})
    if stanza is None or status.get("code") not in (0, 2):
        repos = (stanza or {}).get("repo", [])
        message = " / ".join([status.get("message", "no such stanza"),
                              *(r["status"]["message"] for r in repos if "status" in r)])
        raise BackupRefused(_explain(Done(1, message, ""), "reading the backup repository"))
    return [
        BackupSet(label=b["label"], kind=b["type"], started=_utc(b["timestamp"]["start"]),
                  stopped=_utc(b["timestamp"]["stop"]), size=int(b["info"]["size"]),
                  stored=int(b["info"]["repository"]["delta"]))
        for b in stanza.get("backup", [])
    ]  # fmt: skip


def backup(target: Target, kind: str = "full") -> tuple[BackupSet, float]:
    """Take a ``full`` or ``diff`` backup now; return it and the seconds it took."""
    if kind not in ("full", "diff"):
        raise BackupRefused(f"--type {kind}: use full or diff")
    ensure_stanza(target)
    started = time.monotonic()
    done = target.pgbackrest("backup", f"--type={kind}")
    if done.returncode != 0:
        raise BackupError(_explain(done, f"pgbackrest backup --type={kind}"))
    seconds = time.monotonic() - started
    return list_backups(target)[-1], seconds


def check(target: Target) -> str:
    """Prove archiving works: pgBackRest forces a WAL switch and waits for it in the repo."""
    ensure_stanza(target)
    done = target.pgbackrest("check", timeout=300)
    if done.returncode != 0:
        raise BackupError(_explain(done, "pgbackrest check"))
    return "WAL archiving works: a forced WAL switch reached the repository"


def parse_target(text: str) -> datetime | None:
    """``latest`` -> None; else an ISO 8601 time (no zone means UTC)."""
    if text == LATEST:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise BackupRefused(
            f"--to {text!r}: is neither 'latest' nor a time. Fix: write e.g. "
            "2026-11-30T01:02:03.456+00:00 (no zone means UTC)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RestorePlan:
    target: datetime | None
    """None: replay every archived WAL segment."""
    base: BackupSet
    restore_dir: str
    keep_dir: str

    def describe(self) -> str:
        to = "the end of the archived WAL" if self.target is None else self.target.isoformat()
        taken = f"{self.base.stopped:%F %T}"
        return f"restore to {to} from backup {self.base.label} (taken {taken} UTC)"


def plan_restore(target: Target, to: str, now: datetime | None = None) -> RestorePlan:
    """Check ``to`` against the repository; refuse what cannot be restored, change nothing."""
    moment = parse_target(to)
    sets = list_backups(target)
    if not sets:
        raise BackupRefused("the repository holds no backup yet. Fix: run `poolkit backup` "
                            "first; a restore starts from a backup")  # fmt: skip
    now = now or datetime.now(UTC)
    if moment is not None:
        first = sets[0].stopped
        if moment < first:
            raise BackupRefused(
                f"--to {to}: is before the first backup finished ({first.isoformat()}); "
                f"nothing can be restored before it. Fix: use a time after {first.isoformat()}"
            )
        if moment > now:
            raise BackupRefused(f"--to {to}: is in the future (now {now.isoformat()}). Fix: use "
                                "a past time, or latest")  # fmt: skip
        base = [s for s in sets if s.stopped <= moment][-1]
    else:
        base = sets[-1]
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    return RestorePlan(moment, base, target.restore_dir, f"{target.previous_dir}/{stamp}")


def restore_args(stack: str, conf: str, plan: RestorePlan) -> list[str]:
    """``pgbackrest restore`` into the fresh directory; recovery then promotes at the target.

    restore_command is given whole: pgBackRest would otherwise write the temporary
    ``--pg1-path`` into it, which no longer exists once the directory is switched.
    """
    args = [f"--pg1-path={plan.restore_dir}", f"--set={plan.base.label}",
            "--recovery-option=restore_command="
            f"pgbackrest --config={conf} --stanza={stack} archive-get %f \"%p\""]  # fmt: skip
    if plan.target is not None:
        stamp = plan.target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        args += ["--type=time", f"--target={stamp}", "--target-action=promote"]
    return ["restore", *args]


def restore(
    target: Target, to: str, confirm: Callable[[RestorePlan], bool],
    say: Callable[[str], None] = lambda _line: None,
) -> tuple[RestorePlan, float] | None:
    """Restore into a fresh directory, then (if ``confirm``) switch to it; None if declined."""
    plan = plan_restore(target, to)
    say(plan.describe())
    started = time.monotonic()
    target.remove_dir(plan.restore_dir)  # a leftover of an earlier, unfinished restore
    target.prepare_restore_dir(plan.restore_dir)
    done = target.pgbackrest(*restore_args(target.stanza, target.conf, plan))
    if done.returncode != 0:
        target.remove_dir(plan.restore_dir)
        raise BackupError(_explain(done, "pgbackrest restore"))
    say(f"restored into {plan.restore_dir} in {time.monotonic() - started:.1f} s")
    if not confirm(plan):
        target.remove_dir(plan.restore_dir)
        say("not switched: the server still runs its data directory; nothing changed")
        return None
    target.switch(plan.restore_dir, plan.keep_dir, RECOVERY_WAIT_S)
    say(f"switched: the previous data directory is kept as {plan.keep_dir}")
    return plan, time.monotonic() - started
