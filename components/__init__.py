"""poolkit's Pulumi components: the core model mapped onto pulumi_docker resources.

Each component only calls ``poolkit.render`` (and reads ``poolkit.sizing``'s plan); none
computes a size or formats a config line itself.
"""

from components.apps import ServerlessApp as ServerlessApp
from components.apps import ServerlessAppArgs as ServerlessAppArgs
from components.environment import Environment as Environment
from components.environment import EnvironmentArgs as EnvironmentArgs
from components.pgbouncer import PgBouncer as PgBouncer
from components.pgbouncer import PgBouncerArgs as PgBouncerArgs
from components.postgres import Postgres as Postgres
from components.postgres import PostgresArgs as PostgresArgs
