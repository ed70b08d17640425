"""An external Postgres on the local target: prepare it through its admin role, run nothing."""

from __future__ import annotations

import re

from poolkit.config import StackConfig
from poolkit.envfile import write_private
from poolkit.local.errors import LocalError
from poolkit.local.files import copy_private
from poolkit.local.host import Host
from poolkit.local.machine import own
from poolkit.local.progress import Journal
from poolkit.render import SERVER_CA

INIT_SQL = "external-init.sql"


def install_ca(stack: StackConfig, host: Host) -> None:
    """Copy the server's CA beside pgbouncer.ini (server_tls_ca_file), readable by PgBouncer."""
    external = stack.postgres.external
    if external is None or not external.ca_file:
        return
    copy_private(external.ca_file, host.paths.conf / SERVER_CA, host.user)


def apply_init_sql(stack: StackConfig, host: Host, password: str) -> None:
    """Run external-init.sql as the admin role over TLS (the password in a 0600 passfile)."""
    external = stack.postgres.external
    assert external is not None
    paths = host.paths
    passfile = paths.run / "external.pgpass"

    def escaped(text: str) -> str:
        return text.replace("\\", "\\\\").replace(":", "\\:")

    write_private(passfile, f"*:*:*:{escaped(external.admin_user)}:{escaped(password)}\n")
    own(passfile, host.user)
    tls = {"PGSSLMODE": external.sslmode}
    if external.ca_file:
        tls["PGSSLROOTCERT"] = str(paths.conf / SERVER_CA)
    argv = [str(host.pgbin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", external.host, "-p", str(external.port), "-U", external.admin_user,
            "-d", "postgres", "-f", str(paths.conf / INIT_SQL)]  # fmt: skip
    try:
        done = host.run(argv, host.env(PGPASSFILE=str(passfile), PGCONNECT_TIMEOUT="10", **tls),
                        120)  # fmt: skip
    finally:
        passfile.unlink(missing_ok=True)
    if done.returncode != 0:
        log = paths.log / "external-init-sql.log"
        redacted = re.sub(r"SCRAM-SHA-256\$\S+", "SCRAM-SHA-256$<redacted>",
                          done.stdout + done.stderr)  # fmt: skip
        log.write_text(redacted, encoding="utf-8")
        last = "\n".join(redacted.strip().splitlines()[-5:])
        raise LocalError(f"preparing the external Postgres at {external.host} failed "
                         f"({INIT_SQL} as {external.admin_user}):\n{last}", log)  # fmt: skip


def converge(stack: StackConfig, host: Host, password: str, changed: dict[str, str],
             applied_before: bool, journal: Journal) -> None:  # fmt: skip
    """Roles, database and grants on the server: at the first ``up`` and when they changed."""
    external = stack.postgres.external
    assert external is not None
    install_ca(stack, host)
    if applied_before and INIT_SQL not in changed:
        return
    with journal.progress.step(f"preparing {external.host}:{external.port} as "
                               f"{external.admin_user} (roles, database, grants)"):  # fmt: skip
        apply_init_sql(stack, host, password)
    journal.actions.append(f"applied {INIT_SQL} on {external.host} (no Postgres runs here)")
