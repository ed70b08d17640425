"""The local target: Postgres, PgBouncer and the sample apps as processes on this machine.

The runner computes nothing. It detects the installed server versions, puts them into the
stack, and maps ``sizing.plan`` + ``secrets.resolve`` + ``layouts.local_layout`` +
``render.render_all`` onto files under the state dir and processes:

    <state>/data/      the cluster (made once by images/postgres/poolkit-initdb)
    <state>/conf/      the rendered files (secrets ones 0600), the apps' .env copies
    <state>/run/       sockets, pid files       <state>/log/  server and app logs
    <state>/secrets.json (0600)                 <state>/state.json  what runs where

Servers never run as root: as root they run as the ``postgres`` OS user, otherwise as the
invoking user. PgBouncer and each app replica run under ``poolkit.supervisor``.

Modules, one job each: ``machine`` (binaries, service user), ``processes`` (pids, ports),
``state`` (the state dir), ``host`` (commands and supervisors as the service user), ``files``
(rendered files on disk), ``postgres``, ``pgbouncer``, ``apps`` (each process and how it
converges), ``runner`` (up, down, status).
"""

from poolkit.local.apps import Replica as Replica
from poolkit.local.errors import LocalError as LocalError
from poolkit.local.errors import log_tail as log_tail
from poolkit.local.files import conf_settings as conf_settings
from poolkit.local.host import Host as Host
from poolkit.local.machine import ServiceUser as ServiceUser
from poolkit.local.machine import Tools as Tools
from poolkit.local.machine import check_reachable as check_reachable
from poolkit.local.machine import detect_tools as detect_tools
from poolkit.local.machine import require_prepared_statements as require_prepared_statements
from poolkit.local.machine import service_python as service_python
from poolkit.local.machine import service_user as service_user
from poolkit.local.pgbouncer import PgBouncer as PgBouncer
from poolkit.local.postgres import Postgres as Postgres
from poolkit.local.processes import pid_alive as pid_alive
from poolkit.local.processes import port_in_use as port_in_use
from poolkit.local.processes import port_listening as port_listening
from poolkit.local.processes import process_user as process_user
from poolkit.local.processes import read_pid as read_pid
from poolkit.local.processes import terminate as terminate
from poolkit.local.processes import wait_for as wait_for
from poolkit.local.progress import Progress as Progress
from poolkit.local.runner import Runner as Runner
from poolkit.local.runner import UpResult as UpResult
from poolkit.local.runner import installed_stack as installed_stack
from poolkit.local.state import Paths as Paths
from poolkit.local.state import default_state_dir as default_state_dir
