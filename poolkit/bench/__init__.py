"""``poolkit bench``: pooled vs direct vs a naive PgBouncer, in one run, on one server.

The bench brings up ``bench/stack.yaml`` with the local runner and measures, against the same
Postgres with the same settings:

- connect storm: ``pgbench -C -S`` (a new connection per transaction), direct / pooled / naive;
- persistent: ``pgbench -S``, direct / pooled;
- the burst simulator (``poolkit.burst``), direct / pooled / naive;
- where a connect storm spends its time: SCRAM-SHA-256 verifiers of 4096 PBKDF2 iterations
  against lower counts, through a PgBouncer rendered by the kit, with client and PgBouncer CPU;
- the multi-core lever: several PgBouncer processes on one port (``so_reuseport``).

"Naive" is a PgBouncer configured the way blog posts show it (stock pool sizes, one process,
SCRAM's default 4096 iterations; ``templates/bench/naive-pgbouncer.ini.j2``): it is the
baseline the kit's tuning is compared with. It and the experimental PgBouncers run in a
scratch folder, log in to Postgres as the migrator role (the only other role pg_hba admits)
with a verifier ``scratch`` sets, and are stopped at the end; the migrator's original verifier
is restored.

Medians over ``repeats`` runs (interleaved, so drift hits every arm alike); results go to
``results.json`` and, when matplotlib is installed, ``results.png``. Traffic: 127.0.0.1 only.
Passwords reach pgbench through ``PGPASSWORD`` in the child's environment, never argv.

One module per measurement: ``storm`` (pgbench connect storm and persistent), ``bursts``,
``scram``, ``reuseport``; they share ``context.Bench`` (the stack that is up, its URLs, the
scratch PgBouncers). ``pgbench`` and ``cpu`` run and account a pgbench run, ``medians`` and
``report`` turn runs into figures, ratios and goals, ``suite.run`` is the whole bench. To add an
arm: a module with ``measure(bench, ...) -> dict``, called from ``suite.measure_all``, and its
lines in ``report``.
"""

from poolkit.bench.context import Bench as Bench
from poolkit.bench.pgbench import PgbenchRun as PgbenchRun
from poolkit.bench.pgbench import client_env as client_env
from poolkit.bench.pgbench import parse_pgbench as parse_pgbench
from poolkit.bench.pgbench import pgbench as pgbench
from poolkit.bench.pgbench import pgbench_init as pgbench_init
from poolkit.bench.report import report_lines as report_lines
from poolkit.bench.report import summarise as summarise
from poolkit.bench.scratch import ScratchBouncers as ScratchBouncers
from poolkit.bench.scratch import migrator_with as migrator_with
from poolkit.bench.scratch import set_verifier as set_verifier
from poolkit.bench.settings import BenchError as BenchError
from poolkit.bench.settings import Settings as Settings
from poolkit.bench.suite import run as run
