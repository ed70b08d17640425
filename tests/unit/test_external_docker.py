"""An external Postgres on the Docker target: where its URLs point, and the key that names the
Docker network the server is reached on."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkit.config import ConfigError
from poolkit.envfile import parse_env
from poolkit.layouts import docker_layout, docker_problems, kubernetes_problems, network_layout
from poolkit.render import render_env
from poolkit.sizing import plan

from .factories import secrets, stack

SERVER = {"host": "10.1.2.3", "port": 5433, "admin_user": "kit_admin",
          "ca_file": "/etc/ssl/provider-ca.pem", "network": "other-project_default"}  # fmt: skip


def test_the_docker_target_fronts_an_external_postgres() -> None:
    assert docker_problems(stack(postgres={"external": SERVER})) == []


@pytest.mark.parametrize(("layout", "ca_file", "direct_on_network"), [
    (docker_layout, "/etc/ssl/provider-ca.pem", False),
    (network_layout, "/etc/poolkit/server-ca.crt", True),
])  # fmt: skip
def test_direct_url_names_the_server_and_its_ca_on_the_host_and_in_containers(
    layout, ca_file: str, direct_on_network: bool
) -> None:
    config = stack(postgres={"external": SERVER})
    where = layout(config)
    assert (where.postgres_host, where.postgres_port) == ("10.1.2.3", 5433)
    assert where.direct_on_network is direct_on_network
    env = parse_env(render_env(config, plan(config), secrets(), where))
    direct = conninfo_to_dict(env["DIRECT_URL"])
    assert (direct["host"], direct["port"]) == ("10.1.2.3", "5433")
    assert (direct["sslmode"], direct["sslrootcert"]) == ("verify-full", ca_file)


def test_a_bad_network_name_is_refused_with_its_key() -> None:
    with pytest.raises(ConfigError) as error:
        stack(postgres={"external": {**SERVER, "network": "no spaces; please"}})
    assert "poolkit:postgres.external.network" in str(error.value)
    assert "docker network ls" in str(error.value)


def test_kubernetes_refuses_a_docker_network() -> None:
    config = stack(target="kubernetes", postgres={"external": SERVER})
    keys = [problem.key for problem in kubernetes_problems(config)]
    assert "poolkit:postgres.external.network" in keys


def test_publishing_a_postgres_the_kit_does_not_run_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"poolkit:postgres\.publish: has no meaning"):
        stack(postgres={"publish": True, "external": SERVER})
