"""The Pulumi program under the mock runtime: what it asks Docker for, checked input by input.

Every test runs ``__main__.py`` afresh (``harness.deploy``) with the config of a real stack file
and compares the recorded inputs with what the core model renders for that stack.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest
from psycopg.conninfo import conninfo_to_dict

from poolkit import node_apps
from poolkit.config import ConfigError, StackConfig, load_stack, parse_stack
from poolkit.envfile import parse_env
from poolkit.layouts import docker_layout, network_layout
from poolkit.outputs import Outputs
from poolkit.render import (
    pgbouncer_peers,
    render_backup_schedule,
    render_env,
    render_init_sql,
    render_pg_hba,
    render_pgbackrest_conf,
    render_pgbouncer_ini,
    render_pgpass,
    render_postgresql_conf,
    render_userlist,
)
from poolkit.secrets import CREDENTIALS, Credential, Secrets
from poolkit.sizing import Plan, plan

from .harness import (
    CONTAINER,
    IMAGE,
    NETWORK,
    PASSWORD,
    PROJECT,
    RANDOM_ID,
    VOLUME,
    Deployment,
    Registered,
    deploy,
    is_secret,
    stack_file_config,
)

pytestmark = pytest.mark.pulumi

STACKS = ("dev", "staging", "prod")
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?\d+s$")
"""Go's canonical form of whole-second durations ("2s", "1m0s"), which the provider reads back."""


def model(name: str) -> tuple[StackConfig, Plan]:
    """The stack file through the core model, as poolkit plan/render see it."""
    stack = load_stack(PROJECT / f"Pulumi.{name}.yaml")
    return stack, plan(stack)


def uploads(container: Registered) -> dict[str, dict[str, Any]]:
    return {u["file"]: u for u in container.args["uploads"]}


def secrets_of(
    deployment: Deployment, stack: StackConfig, given: dict[str, str] | None = None
) -> Secrets:
    """The credentials the program must have built from the mocks' random outputs."""
    given = given or {}

    def state(kind: str, role: str, key: str) -> str:
        return deployment.named(f"poolkit-{role.replace('_', '-')}-{kind}").state[key]

    users = {"superuser": "postgres", "migrator": stack.database.migrator_user,
             "app": stack.database.app_user, "pgbouncer_admin": "pgbouncer_admin",
             "pgbouncer_stats": "pgbouncer_stats"}  # fmt: skip
    return Secrets(**{
        role: Credential(user=user,
                         password=given.get(role) or state("password", role, "result"),
                         salt=state("salt", role, "b64Std"),
                         # generated passwords: 256 SCRAM iterations; chosen ones and the
                         # exporters' login (lib/pq refuses fewer): 4096
                         iterations=4096 if role in given or role == "pgbouncer_stats" else 256)
        for role, user in users.items()
    })  # fmt: skip


@pytest.fixture(params=STACKS)
def stack_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def deployed(stack_name: str) -> Deployment:
    return deploy(stack_name, stack_file_config(stack_name))


@pytest.fixture
def dev() -> Deployment:
    return deploy("dev", stack_file_config("dev"))


# --- rendered files -----------------------------------------------------------------------------


def test_pgbouncer_ini_upload_is_the_core_rendering(stack_name: str, deployed: Deployment) -> None:
    stack, sized = model(stack_name)
    container = deployed.named("poolkit-pgbouncer-container")
    layout = docker_layout(stack)
    peers = pgbouncer_peers(sized, layout)
    assert len(peers) == sized.pool.split.processes
    for peer in peers:  # one file per process (pgbouncer.ini alone, pgbouncer-N.ini among several)
        ini = uploads(container)[f"/etc/pgbouncer/{peer.ini}"]
        expected = render_pgbouncer_ini(stack, sized, layout, peer.peer_id)
        assert ini["content"] == expected, f"{container.urn}: {peer.ini} differs from the renderer"
        assert "\npool_mode = transaction\n" in ini["content"], container.urn
        assert (ini["permissions"], ini["owner"], ini["group"]) == ("0640", "999", "999")


def test_postgres_configs_are_the_core_rendering(stack_name: str, deployed: Deployment) -> None:
    stack, sized = model(stack_name)
    layout = docker_layout(stack)
    container = deployed.named("poolkit-postgres-container")
    files = uploads(container)
    credentials = secrets_of(deployed, stack)
    expected = {
        "/etc/poolkit/postgresql.conf": (render_postgresql_conf(stack, sized, layout), "0644"),
        "/etc/poolkit/pg_hba.conf": (render_pg_hba(stack, layout), "0644"),
        "/etc/poolkit/init.sql": (render_init_sql(stack, credentials), "0600"),
    }
    if stack.backup.enabled:
        passphrase = deployed.named("poolkit-backup-passphrase").state["result"]
        with_passphrase = dataclasses.replace(credentials, backup_passphrase=passphrase)
        expected |= {
            layout.pgbackrest_conf: (render_pgbackrest_conf(stack, with_passphrase, layout),
                                     "0600"),
            layout.pgpass: (render_pgpass(credentials), "0600"),
            f"{layout.config_dir}/backup-schedule": (render_backup_schedule(stack, layout),
                                                    "0644"),
        }  # fmt: skip
    assert set(files) == set(expected), container.urn
    for path, (content, mode) in expected.items():
        assert files[path]["content"] == content, f"{container.urn}: {path} differs"
        assert (files[path]["permissions"], files[path]["owner"]) == (mode, "999"), path
    assert is_secret(container.inputs["uploads"]), f"{container.urn}: init.sql is not secret"


def test_userlist_holds_verifiers_never_passwords(dev: Deployment) -> None:
    stack, _ = model("dev")
    credentials = secrets_of(dev, stack)
    container = dev.named("poolkit-pgbouncer-container")
    userlist = uploads(container)["/etc/pgbouncer/userlist.txt"]
    assert userlist["content"] == render_userlist(credentials), container.urn
    assert userlist["permissions"] == "0600", container.urn
    for credential in (credentials.app, credentials.pgbouncer_admin, credentials.pgbouncer_stats):
        assert f'"{credential.user}" "{credential.verifier}"' in userlist["content"]
    for credential in (getattr(credentials, name) for name in CREDENTIALS):
        if credential is not None:  # the Docker target makes no poolkit_monitor role
            assert credential.password not in userlist["content"], f"{container.urn}: leaked"
    assert is_secret(container.inputs["uploads"]), f"{container.urn}: userlist.txt is not secret"


def test_salts_and_passwords_are_resources_kept_in_state(dev: Deployment) -> None:
    """Random values come from resources (stable across ups), never from apply callbacks."""
    passwords, salts = dev.of_type(PASSWORD), dev.of_type(RANDOM_ID)
    assert len(passwords) == len(salts) == 5
    for resource in passwords:
        assert (resource.args["length"], resource.args["special"]) == (32, False), resource.urn
    for resource in salts:
        assert resource.args["byteLength"] == 16, resource.urn


# --- network exposure, health, ordering ---------------------------------------------------------


def test_every_published_port_binds_loopback(stack_name: str, deployed: Deployment) -> None:
    for container in deployed.containers().values():
        for port in container.args.get("ports") or []:
            assert port["ip"] == "127.0.0.1", f"{container.urn} publishes {port} beyond loopback"


def test_published_ports_are_those_of_the_stack_file(stack_name: str, deployed: Deployment) -> None:
    stack, _ = model(stack_name)
    expected = {f"poolkit-{stack_name}-pgbouncer": {(6432, stack.pgbouncer.port)}}
    expected[f"poolkit-{stack_name}-postgres"] = (
        {(5432, stack.postgres.port)} if stack.postgres.publish else set()
    )
    for app in stack.apps:
        for replica in range(app.replicas):
            expected[f"poolkit-{stack_name}-{app.name}-{replica}"] = {(8080, app.port + replica)}
    published = {
        name: {(p["internal"], p["external"]) for p in c.args.get("ports") or []}
        for name, c in deployed.containers().items()
    }
    assert published == expected


def test_containers_have_healthchecks_with_explicit_durations(deployed: Deployment) -> None:
    for name, container in deployed.containers().items():
        check = container.args.get("healthcheck")
        assert check, f"{container.urn} has no healthcheck"
        assert check["tests"][0] == "CMD", container.urn
        for key in ("interval", "timeout", "startPeriod"):
            assert GO_DURATION.match(check[key]), f"{container.urn}: {key}={check[key]!r}"
        assert check["retries"] >= 3, container.urn
        assert container.args["wait"] is True and container.args["waitTimeout"] > 0, name
        assert container.args["restart"] == "unless-stopped", container.urn


def test_postgres_and_pgbouncer_are_checked_with_pg_isready(dev: Deployment) -> None:
    containers = dev.containers()
    expected = {
        # the superuser on the socket (pg_hba.conf's local line): no FATAL in Postgres's log
        "poolkit-dev-postgres": ["CMD", "pg_isready", "-h", "/var/run/postgresql", "-p", "5432",
                                 "-U", "postgres", "-d", "postgres"],
        # a known role on the console: no "no such user" warning in PgBouncer's log
        "poolkit-dev-pgbouncer": ["CMD", "pg_isready", "-h", "127.0.0.1", "-p", "6432",
                                  "-U", "pgbouncer_stats", "-d", "pgbouncer"],
    }
    for name, tests in expected.items():
        assert containers[name].args["healthcheck"]["tests"] == tests, name


def test_pgbouncer_starts_after_postgres_and_apps_after_pgbouncer(dev: Deployment) -> None:
    postgres = dev.named("poolkit-postgres-container")
    pgbouncer = dev.named("poolkit-pgbouncer-container")
    assert postgres.args["wait"] is True, "Postgres must be healthy before dependents start"
    assert postgres.urn in pgbouncer.dependencies, f"{pgbouncer.urn} does not wait for Postgres"
    apps = [c for n, c in dev.containers().items() if n not in (
        "poolkit-dev-postgres", "poolkit-dev-pgbouncer")]  # fmt: skip
    assert len(apps) == 3
    for app in apps:
        assert pgbouncer.urn in app.dependencies, f"{app.urn} does not wait for PgBouncer"


ENGINE_NAMED = (CONTAINER, NETWORK, VOLUME)
"""Docker objects whose names are unique on one engine."""


def fixed_identity(resource: Registered) -> list[str]:
    """What two copies of ``resource`` cannot share on one engine: its name, its host ports."""
    fixed = [f"name {resource.args['name']}"] if resource.args.get("name") else []
    return fixed + [f"host port {port['external']}" for port in resource.args.get("ports", [])
                    if port.get("external")]  # fmt: skip


def test_containers_are_replaced_safely(dev: Deployment) -> None:
    """Fixed names and host ports: the old container must be deleted before its replacement.

    The rule comes from each container's own inputs, so a container that gains a fixed name
    or port without the option fails here; and Docker cannot change a running container's
    healthcheck, so a changed one must be a replacement.
    """
    for container in dev.containers().values():
        fixed = fixed_identity(container)
        assert fixed, f"{container.urn}: expected a fixed name (the stack's docker names)"
        assert container.delete_before_replace, f"{container.urn}: {', '.join(fixed)} would clash"
        assert "healthcheck" in container.args, container.urn
        assert "healthcheck" in container.replace_on_changes, container.urn


def test_postgres_keeps_data_on_a_named_volume(dev: Deployment) -> None:
    volume = dev.of_type(VOLUME)[0]
    postgres = dev.named("poolkit-postgres-container")
    assert postgres.args["volumes"] == [
        {"volumeName": volume.args["name"], "containerPath": "/var/lib/postgresql/data"}
    ], postgres.urn
    assert postgres.args["networksAdvanced"][0]["aliases"] == ["postgres"], postgres.urn


# --- app containers -----------------------------------------------------------------------------


def app_env(container: Registered) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container.args["envs"])


def test_app_env_carries_the_pooled_url_and_planned_limit(
    stack_name: str, deployed: Deployment
) -> None:
    stack, sized = model(stack_name)
    credentials = secrets_of(deployed, stack)
    containers = deployed.containers()
    for app in sized.apps:
        for replica in range(app.replicas):
            container = containers[f"poolkit-{stack_name}-{app.name}-{replica}"]
            assert is_secret(container.inputs["envs"]), f"{container.urn}: env is not secret"
            env = app_env(container)
            pooled = conninfo_to_dict(env["POOLED_DATABASE_URL"])
            assert (pooled["host"], pooled["port"]) == ("pgbouncer", "6432"), container.urn
            assert (pooled["user"], pooled["password"], pooled["dbname"]) == (
                credentials.app.user,
                credentials.app.password,
                stack.database.name,
            ), container.urn
            assert env["POOL_CONNECTION_LIMIT"] == str(app.connection_limit), container.urn
            assert env["APP_STYLE"] == app.style, container.urn
            assert env["PGBOUNCER_PREPARED_STATEMENTS"] == (
                "on" if sized.prepared_statements else "off"
            ), container.urn


def test_only_the_first_replica_migrates_over_the_direct_url(dev: Deployment) -> None:
    stack, _ = model("dev")
    migrator = secrets_of(dev, stack).migrator
    containers = dev.containers()
    first, second = (
        app_env(containers["poolkit-dev-orders-0"]),
        app_env(containers["poolkit-dev-orders-1"]),
    )
    direct = conninfo_to_dict(first["DIRECT_URL"])
    assert (direct["host"], direct["port"], direct["user"], direct["password"]) == (
        "postgres", "5432", migrator.user, migrator.password
    )  # fmt: skip
    assert first["APP_MIGRATE"] == "1"
    assert "DIRECT_URL" not in second and "APP_MIGRATE" not in second


def test_app_env_comes_from_the_env_renderer(dev: Deployment) -> None:
    """Same variables as .env, pointed at the private network instead of published ports."""
    stack, sized = model("dev")
    layout = docker_layout(stack)
    rendered = parse_env(render_env(stack, sized, secrets_of(dev, stack), layout,
                                    sized.app("orders")))  # fmt: skip
    env = app_env(dev.containers()["poolkit-dev-orders-0"])
    host_url = rendered["POOLED_DATABASE_URL"]
    expected = host_url.replace(f"@127.0.0.1:{stack.pgbouncer.port}/", "@pgbouncer:6432/")
    assert env["POOLED_DATABASE_URL"] == expected


# --- images, names, components ------------------------------------------------------------------


def test_images_are_built_locally_and_run_by_digest(dev: Deployment) -> None:
    images = {r.name: r for r in dev.of_type(IMAGE)}
    builds = {name: (r.args["build"]["context"], r.args["build"]["dockerfile"])
              for name, r in images.items()}  # fmt: skip
    assert builds == {
        "poolkit-postgres-image": ("images/postgres", "images/postgres/Dockerfile"),
        "poolkit-pgbouncer-image": ("images/pgbouncer", "images/pgbouncer/Dockerfile"),
        "poolkit-app-image": ("apps", "images/app/Dockerfile"),
    }
    for image in images.values():
        assert image.args["skipPush"] is True, image.urn
        assert image.args["build"]["args"]["BASE_IMAGE"] == "debian:trixie-slim", image.urn
        assert (PROJECT / image.args["build"]["dockerfile"]).is_file(), image.urn
    assert images["poolkit-postgres-image"].args["build"]["args"]["PG_MAJOR"] == "17"
    containers = dev.containers()
    digest = {n: r.state["repoDigest"] for n, r in images.items()}
    assert containers["poolkit-dev-postgres"].args["image"] == digest["poolkit-postgres-image"]
    assert containers["poolkit-dev-pgbouncer"].args["image"] == digest["poolkit-pgbouncer-image"]
    assert containers["poolkit-dev-edge-0"].args["image"] == digest["poolkit-app-image"]


def test_docker_objects_are_named_and_labelled_by_stack(
    stack_name: str, deployed: Deployment
) -> None:
    prefix = f"poolkit-{stack_name}-"
    for resource in deployed.resources:
        if resource.type in (CONTAINER, NETWORK, VOLUME):
            assert resource.args["name"].startswith(prefix), resource.urn
            labels = {item["label"]: item["value"] for item in resource.args["labels"]}
            assert labels["poolkit.stack"] == stack_name, resource.urn
            assert labels["poolkit.component"], resource.urn
        if resource.type == IMAGE:
            assert resource.args["imageName"].startswith(prefix), resource.urn


def test_components_own_their_children(dev: Deployment) -> None:
    components = {r.urn: r for r in dev.resources if not r.custom}
    assert sorted(r.type for r in components.values()) == [
        "poolkit:index:Environment", "poolkit:index:PgBouncer", "poolkit:index:Postgres",
        "poolkit:index:ServerlessApp", "poolkit:index:ServerlessApp",
    ]  # fmt: skip
    for resource in dev.resources:
        if resource.type == "poolkit:index:Environment":
            continue
        parent = components.get(resource.parent)
        assert parent is not None, f"{resource.urn} is not parented to a component"
        assert resource.name.startswith(f"{parent.name}-"), resource.urn


# --- outputs ------------------------------------------------------------------------------------


def test_urls_and_env_file_are_secret_outputs(dev: Deployment) -> None:
    for key in Outputs.SECRET:
        assert key in dev.secret_outputs, f"output {key} is not a secret"
    for key in (Outputs.PLAN, Outputs.PGBOUNCER_PORT, Outputs.VERSIONS, Outputs.CONTAINERS):
        assert key not in dev.secret_outputs, f"output {key} should be plain"


def test_outputs_match_the_rendered_env_file(stack_name: str, deployed: Deployment) -> None:
    stack, sized = model(stack_name)
    env_text = render_env(stack, sized, secrets_of(deployed, stack), docker_layout(stack))
    outputs = deployed.outputs
    assert outputs[Outputs.ENV_FILE] == env_text
    env = parse_env(env_text)
    assert outputs[Outputs.DIRECT_URL] == env["DIRECT_URL"]
    assert outputs[Outputs.POOLED_URL] == env["DATABASE_URL"]
    assert outputs[Outputs.POOLED_LIBPQ_URL] == env["POOLED_DATABASE_URL"]
    assert outputs[Outputs.PLAN] == sized.as_dict()
    pooled = conninfo_to_dict(outputs[Outputs.POOLED_LIBPQ_URL])
    assert (pooled["host"], pooled["port"]) == ("127.0.0.1", str(stack.pgbouncer.port))
    network_text = render_env(stack, sized, secrets_of(deployed, stack), network_layout(stack))
    assert outputs[Outputs.NETWORK_ENV_FILE] == network_text
    network_env = parse_env(network_text)
    direct = conninfo_to_dict(network_env["DIRECT_URL"])
    pooled = conninfo_to_dict(network_env["POOLED_DATABASE_URL"])
    assert (direct["host"], direct["port"], pooled["host"], pooled["port"]) == (
        "postgres", "5432", "pgbouncer", "6432")  # fmt: skip


def test_dev_and_prod_differ_as_their_files_say() -> None:
    dev, prod = deploy("dev", stack_file_config("dev")), deploy("prod", stack_file_config("prod"))
    replicas = {name: {app: len(names) for app, names in d.outputs[Outputs.CONTAINERS]["apps"]
                       .items()} for name, d in (("dev", dev), ("prod", prod))}  # fmt: skip
    assert replicas == {"dev": {"orders": 2, "edge": 1}, "prod": {"orders": 3, "edge": 3}}
    assert (dev.outputs[Outputs.POSTGRES_PORT], prod.outputs[Outputs.POSTGRES_PORT]) == (
        15432,
        None,
    )
    assert (dev.outputs[Outputs.PGBOUNCER_PORT], prod.outputs[Outputs.PGBOUNCER_PORT]) == (
        16432, 36432)  # fmt: skip

    def pool(d: Deployment) -> str:
        return d.outputs[Outputs.PLAN]["pgbouncer"]["settings"]["default_pool_size"]

    assert pool(dev) == model("dev")[1].pgbouncer_value("default_pool_size")
    assert pool(prod) == model("prod")[1].pgbouncer_value("default_pool_size")
    assert int(pool(prod)) > int(pool(dev))
    prod_ini = uploads(prod.named("poolkit-pgbouncer-container"))["/etc/pgbouncer/pgbouncer-1.ini"]
    assert "\nshop = host=postgres port=5432 dbname=shop\n" in prod_ini["content"]
    assert "\nquery_wait_timeout = 10\n" in prod_ini["content"]


# --- config handling ----------------------------------------------------------------------------


def test_given_passwords_are_used_and_stay_secret() -> None:
    config = stack_file_config("dev") | {
        "poolkit:app_password": "given app p@ss:/word%?#",
        "poolkit:migrator_password": "given-owner-password",
    }
    keys = ("poolkit:app_password", "poolkit:migrator_password")
    deployed = deploy("dev", config, secret_keys=keys)
    names = {r.name for r in deployed.of_type(PASSWORD)}
    assert "poolkit-app-password" not in names and "poolkit-migrator-password" not in names
    pooled = conninfo_to_dict(deployed.outputs[Outputs.POOLED_LIBPQ_URL])
    assert pooled["password"] == "given app p@ss:/word%?#"
    direct = conninfo_to_dict(deployed.outputs[Outputs.DIRECT_URL])
    assert direct["password"] == "given-owner-password"
    stack, _ = model("dev")
    given = {"app": config["poolkit:app_password"], "migrator": config["poolkit:migrator_password"]}
    userlist = uploads(deployed.named("poolkit-pgbouncer-container"))["/etc/pgbouncer/userlist.txt"]
    assert userlist["content"] == render_userlist(secrets_of(deployed, stack, given))
    assert not deployed.warnings, deployed.warnings


def test_a_password_kept_in_clear_text_is_warned_about() -> None:
    config = stack_file_config("dev") | {"poolkit:app_password": "clear-text-password"}
    deployed = deploy("dev", config)
    assert any("poolkit:app_password is stored in clear text" in w for w in deployed.warnings)


INVALID = {
    "zero cpus": ({"poolkit:postgres": {"cpus": 0}}, "poolkit:postgres.cpus"),
    "misspelt section": ({"poolkit:postgress": {"cpus": 2}}, "poolkit:postgress"),
    "misspelt key": ({"poolkit:pgbouncer": {"pool_mod": "transaction"}}, "pool_mod"),
    "short password": ({"poolkit:app_password": "tiny-pw"}, "poolkit:app_password"),
    "pool over max_connections": (
        {
            "poolkit:postgres": {"max_connections": 20},
            "poolkit:pgbouncer": {"default_pool_size": 40},
        },
        "poolkit:postgres.max_connections",
    ),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_an_invalid_stack_fails_before_any_resource(case: str) -> None:
    config, key = INVALID[case]
    with pytest.raises(ConfigError) as expected:
        plan(parse_stack(config, "broken"))
    with pytest.raises(pulumi.RunError) as failure:
        deploy("broken", config)
    assert str(expected.value) in str(failure.value)
    assert key in str(failure.value)
    assert "tiny-pw" not in str(failure.value), "the password leaked into the error"
    assert deploy.last_monitor.registered == [], "resources were registered before the failure"


@pytest.mark.parametrize(("key", "value"), [("postgres", {"version": 16}),
                                            ("pgbouncer", {"version": "1.23"})])
def test_a_version_the_images_cannot_build_is_refused_before_any_resource(
    key: str, value: dict[str, Any]
) -> None:
    config = {f"poolkit:{key}": value}
    plan(parse_stack(config, "old"))  # valid for the core (the local target may have it)
    with pytest.raises(pulumi.RunError) as failure:
        deploy("old", config)
    message = str(failure.value)
    assert f"poolkit:{key}.version" in message and "Fix: use" in message, message
    assert deploy.last_monitor.registered == [], "resources were registered before the failure"


def test_every_problem_is_reported_at_once() -> None:
    config = {"poolkit:postgres": {"version": 15}, "poolkit:pgbouncer": {"version": "1.23"}}
    with pytest.raises(pulumi.RunError) as failure:
        deploy("two", config)
    assert "postgres.version" in str(failure.value)
    assert "pgbouncer.version" in str(failure.value)


def test_versions_output_is_what_the_images_install(dev: Deployment) -> None:
    assert dev.outputs[Outputs.VERSIONS] == {"postgres": 17, "pgbouncer": "1.24"}
    bouncer = dev.named("poolkit-pgbouncer-image")
    assert bouncer.args["build"]["args"]["PGBOUNCER_SERIES"] == "1.24"
    assert "PGBOUNCER_SERIES" in (PROJECT / "images/pgbouncer/Dockerfile").read_text()


def test_every_container_stops_gracefully_per_role(dev: Deployment) -> None:
    """Without destroy_grace_seconds the provider removes a container by force (SIGKILL)."""
    containers = dev.containers()
    lifecycle = {name: (c.args["stopSignal"], c.args["stopTimeout"], c.args["destroyGraceSeconds"])
                 for name, c in containers.items()}  # fmt: skip
    assert lifecycle["poolkit-dev-postgres"] == ("SIGINT", 120, 120)
    # PgBouncer: safe shutdown, bounded by query_wait_timeout (15 s by default) + 5 s
    assert lifecycle["poolkit-dev-pgbouncer"] == ("SIGINT", 20, 20)
    apps = {v for n, v in lifecycle.items() if n not in ("poolkit-dev-postgres",
                                                         "poolkit-dev-pgbouncer")}
    assert apps == {("SIGTERM", 10, 10)}


def test_pgbouncer_grace_follows_query_wait_timeout() -> None:
    prod = deploy("prod", stack_file_config("prod"))
    assert prod.containers()["poolkit-prod-pgbouncer"].args["destroyGraceSeconds"] == 10 + 5


@pytest.mark.parametrize("stack_name", STACKS)
def test_postgres_gets_the_memory_cpus_and_shm_it_was_sized_for(
    stack_name: str, deployed: Deployment
) -> None:
    stack, sized = model(stack_name)
    postgres = deployed.containers()[f"poolkit-{stack_name}-postgres"]
    shared_buffers = {s.name: s.value for s in sized.postgres}["shared_buffers"]
    expected = {"dev": (1024, 2, 256), "staging": (4096, 2, 1024), "prod": (16384, 8, 4096)}
    memory, cpus, shm = expected[stack_name]
    assert shared_buffers == (f"{shm}MB" if shm < 1024 else f"{shm // 1024}GB")
    assert postgres.args["memory"] == memory == stack.postgres.memory_bytes // 2**20
    assert postgres.args["cpuShares"] == 1024 * cpus
    assert postgres.args["shmSize"] == shm > 64


@pytest.mark.parametrize("stack_name", STACKS)
def test_several_pgbouncer_processes_hand_queued_connections_to_their_peers(
    stack_name: str, deployed: Deployment
) -> None:
    """A process restarted on its own closes its listener; the kernel then moves the connections
    queued on it to a peer instead of resetting them (docs/scaling.md)."""
    _, sized = model(stack_name)
    bouncer = deployed.containers()[f"poolkit-{stack_name}-pgbouncer"]
    assert sized.pool.split.processes > 1
    assert bouncer.args["sysctls"] == {"net.ipv4.tcp_migrate_req": "1"}


def test_one_pgbouncer_process_sets_no_sysctl() -> None:
    config = stack_file_config("dev")
    config["poolkit:pgbouncer"] = {**config.get("poolkit:pgbouncer", {}), "processes": 1}
    bouncer = deploy("dev", config).containers()["poolkit-dev-pgbouncer"]
    assert not bouncer.args.get("sysctls")


def test_app_image_context_holds_only_the_app_modules() -> None:
    """An edit to tests, docs or stack files must not change the app image's build context."""
    from docker.utils.build import exclude_paths

    context = PROJECT / "apps"
    patterns = [line for line in (context / ".dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    # The daemon always receives .dockerignore itself; COPY *.py does not take it.
    included = {p for p in exclude_paths(str(context), patterns) if "/" not in p}
    assert included - {".dockerignore"} == {p.name for p in context.glob("*.py")}
    assert "COPY *.py /opt/poolkit/apps/" in (PROJECT / "images/app/Dockerfile").read_text()


NODE_STACK = {"poolkit:apps": [
    {"name": "orders", "style": "lambda", "instances": 4},
    {"name": "edge", "style": "workers", "instances": 4, "runtime": "node"},
]}  # fmt: skip


def test_node_apps_run_the_node_image_with_the_variables_they_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``runtime: node`` app runs images/app-node (context: the staged host build), with
    ``DATABASE_URL`` and a healthcheck that needs no python3; Python apps keep images/app."""
    built: list[Path] = []
    monkeypatch.setattr(node_apps, "ensure_built", lambda root: built.append(root))
    deployment = deploy("ts", NODE_STACK)
    assert built == [Path.cwd()], "the program did not make sure apps/ts is built"
    images = {r.name: r for r in deployment.of_type(IMAGE)}
    build = images["poolkit-app-node-image"].args["build"]
    assert (build["context"], build["dockerfile"]) == ("apps/ts/image",
                                                       "images/app-node/Dockerfile")
    assert (PROJECT / build["dockerfile"]).is_file()
    containers = deployment.containers()
    node, python = containers["poolkit-ts-edge-0"], containers["poolkit-ts-orders-0"]
    assert node.args["image"] == images["poolkit-app-node-image"].state["repoDigest"]
    assert python.args["image"] == images["poolkit-app-image"].state["repoDigest"]
    assert node.args["healthcheck"]["tests"][:2] == ["CMD", "node"]
    assert python.args["healthcheck"]["tests"][:2] == ["CMD", "python3"]
    node_env, python_env = app_env(node), app_env(python)
    assert node_env["DATABASE_URL"] == python_env["POOLED_DATABASE_URL"]
    assert "POOLED_DATABASE_URL" not in node_env and "DATABASE_URL" not in python_env
    assert {"POOL_CONNECTION_LIMIT", "PGBOUNCER_PREPARED_STATEMENTS", "DIRECT_URL",
            "APP_MIGRATE", "APP_STYLE"} <= set(node_env)  # fmt: skip
    assert deployment.outputs[Outputs.PLAN]["apps"]["edge"]["runtime"] == "node"


def test_a_node_app_that_cannot_be_built_fails_before_any_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_apps, "ensure_built", lambda root: "Node.js is not installed")
    with pytest.raises(pulumi.RunError, match=r"poolkit:apps \(runtime: node\): Node.js is not"):
        deploy("ts", NODE_STACK)
    assert deploy.last_monitor.registered == [], "resources were registered before the failure"
    monkeypatch.setattr(node_apps, "ensure_built", lambda root: "built without a node app")
    deploy("plain", {"poolkit:apps": NODE_STACK["poolkit:apps"][:1]})  # no node app: no build


def test_fixed_names_are_replaced_delete_first(dev: Deployment) -> None:
    """Every container, network and volume the program registers with a fixed name or host
    port (found from its inputs, not listed here) deletes before it is replaced."""
    fixed = [r for r in dev.resources if r.type in ENGINE_NAMED and fixed_identity(r)]
    assert {NETWORK, VOLUME} <= {r.type for r in fixed}
    for resource in dev.of_type(NETWORK) + dev.of_type(VOLUME):
        assert resource.delete_before_replace, f"{resource.urn}: delete_before_replace unset"
    for resource in fixed:
        assert resource.delete_before_replace, (
            f"{resource.urn}: {', '.join(fixed_identity(resource))} would clash on replace")


def test_a_pool_resize_changes_pgbouncer_and_leaves_postgres_alone() -> None:
    """The provider replaces a container whose uploads, env or limits change; a pool resize
    within max_connections' rounding step must reach PgBouncer only (a safe restart there),
    never Postgres."""
    config = stack_file_config("dev")
    pool = int(model("dev")[1].pgbouncer_value("default_pool_size"))
    resized = config | {"poolkit:pgbouncer": {**config.get("poolkit:pgbouncer", {}),
                                              "default_pool_size": pool + 2}}  # fmt: skip
    before, after = deploy("dev", config), deploy("dev", resized)
    postgres = "poolkit-postgres-container"
    assert before.named(postgres).args == after.named(postgres).args
    pgbouncer = "poolkit-pgbouncer-container"
    assert before.named(pgbouncer).args != after.named(pgbouncer).args
