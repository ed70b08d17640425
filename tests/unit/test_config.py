"""Stack config validation: defaults, and a table of invalid configs whose errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolkit.config import ConfigError, Encrypted, load_stack, parse_stack
from poolkit.sizing import plan
from poolkit.units import GIB

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_empty_config_takes_every_default() -> None:
    config = parse_stack({}, "dev")
    assert config.postgres.memory_bytes == GIB and config.postgres.version == 17
    assert config.pgbouncer.pool_mode == "transaction" and config.pgbouncer.port == 6432
    assert config.database.name == "app" and config.apps == ()


def test_keys_without_namespace_and_other_providers_are_accepted() -> None:
    config = parse_stack({"postgres": {"cpus": 4}, "docker:host": "unix:///x"}, "dev")
    assert config.postgres.cpus == 4


def test_app_ports_default_to_consecutive_ranges() -> None:
    config = parse_stack({"poolkit:apps": [
        {"name": "a", "style": "lambda", "instances": 3, "replicas": 3},
        {"name": "b", "style": "workers"},
    ]}, "dev")  # fmt: skip
    assert [(a.port, a.replicas) for a in config.apps] == [(8080, 3), (8083, 1)]


def test_app_runtime_defaults_to_python_and_reaches_the_plan() -> None:
    config = parse_stack({"poolkit:apps": [
        {"name": "a", "style": "lambda"},
        {"name": "b", "style": "workers", "runtime": "node"},
    ]}, "dev")  # fmt: skip
    assert [a.runtime for a in config.apps] == ["python", "node"]
    assert [a.runtime for a in plan(config).apps] == ["python", "node"]


def test_secure_password_is_kept_encrypted() -> None:
    config = parse_stack({"poolkit:app_password": {"secure": "v1:abc"}}, "dev")
    assert config.database.app_password == Encrypted("v1:abc")


def test_session_mode_is_allowed_with_a_warning() -> None:
    config = parse_stack({"poolkit:pgbouncer": {"pool_mode": "session"}}, "dev")
    assert "session" in config.warnings[0]


@pytest.mark.parametrize("stack", ["dev", "staging", "prod"])
def test_shipped_stack_files_are_valid_and_plannable(stack: str) -> None:
    config = load_stack(ROOT / f"Pulumi.{stack}.yaml")
    assert config.stack == stack
    assert plan(config).apps


def test_shipped_stacks_differ_as_their_files_say() -> None:
    dev, prod = (load_stack(ROOT / f"Pulumi.{s}.yaml") for s in ("dev", "prod"))
    assert dev.postgres.memory_bytes == GIB and prod.postgres.memory_bytes == 16 * GIB
    assert plan(prod).pool.pool_size > plan(dev).pool.pool_size


APP = {"name": "api", "style": "lambda", "instances": 5}

# (id, config mapping, key the first problem must name, a word the message or fix must hold)
INVALID = [
    ("unknown-section", {"poolkit:postgress": {}}, "poolkit:postgress", "did you mean 'postgres'"),
    ("unknown-key", {"poolkit:postgres": {"memroy": "1GiB"}}, "poolkit:postgres.memroy",
     "did you mean 'memory'"),
    ("section-not-mapping", {"poolkit:postgres": "big"}, "poolkit:postgres", "mapping"),
    ("version-too-old", {"poolkit:postgres": {"version": 12}}, "poolkit:postgres.version", "15"),
    ("version-as-string", {"poolkit:postgres": {"version": "17"}}, "poolkit:postgres.version",
     "unquoted"),
    ("memory-no-unit", {"poolkit:postgres": {"memory": "lots"}}, "poolkit:postgres.memory",
     "size"),
    ("memory-bad-unit", {"poolkit:postgres": {"memory": "4PB"}}, "poolkit:postgres.memory",
     "unknown unit"),
    ("memory-too-small", {"poolkit:postgres": {"memory": "64MB"}}, "poolkit:postgres.memory",
     "256MiB"),
    ("memory-as-number", {"poolkit:postgres": {"memory": 4096}}, "poolkit:postgres.memory", "text"),
    ("cpus-zero", {"poolkit:postgres": {"cpus": 0}}, "poolkit:postgres.cpus", "between 1 and 256"),
    ("cpus-bool", {"poolkit:postgres": {"cpus": True}}, "poolkit:postgres.cpus", "whole number"),
    ("cpus-float", {"poolkit:postgres": {"cpus": 2.5}}, "poolkit:postgres.cpus", "whole number"),
    ("storage-unknown", {"poolkit:postgres": {"storage": "tape"}}, "poolkit:postgres.storage",
     "ssd, hdd, san or nvme"),
    ("workload-unknown", {"poolkit:postgres": {"workload": "batch"}}, "poolkit:postgres.workload",
     "web, oltp"),
    ("max-connections-low", {"poolkit:postgres": {"max_connections": 5}},
     "poolkit:postgres.max_connections", "20 to 10000"),
    ("port-privileged", {"poolkit:postgres": {"port": 80}}, "poolkit:postgres.port", "1024"),
    ("publish-string", {"poolkit:postgres": {"publish": "yes"}}, "poolkit:postgres.publish",
     "true or false"),
    ("pgbouncer-version-format", {"poolkit:pgbouncer": {"version": "latest"}},
     "poolkit:pgbouncer.version", "1.24"),
    ("pgbouncer-version-number", {"poolkit:pgbouncer": {"version": 1.24}},
     "poolkit:pgbouncer.version", "quote"),
    ("pgbouncer-too-old", {"poolkit:pgbouncer": {"version": "1.12"}},
     "poolkit:pgbouncer.version", "1.17"),
    ("pool-mode-statement", {"poolkit:pgbouncer": {"pool_mode": "statement"}},
     "poolkit:pgbouncer.pool_mode", "transaction"),
    ("pool-size-zero", {"poolkit:pgbouncer": {"default_pool_size": 0}},
     "poolkit:pgbouncer.default_pool_size", "1 to 1000"),
    ("prepared-on-old-pgbouncer",
     {"poolkit:pgbouncer": {"version": "1.18", "max_prepared_statements": 100}},
     "poolkit:pgbouncer.max_prepared_statements", "1.21"),
    ("query-wait-too-short", {"poolkit:pgbouncer": {"query_wait_timeout": 1}},
     "poolkit:pgbouncer.query_wait_timeout", "2 and 3600"),
    ("port-clash", {"poolkit:postgres": {"port": 6432}}, "poolkit:pgbouncer.port",
     "clashes with poolkit:postgres.port"),
    ("db-name-uppercase", {"poolkit:database": {"name": "MyApp"}}, "poolkit:database.name",
     "identifier"),
    ("db-name-injection", {"poolkit:database": {"name": "app; DROP"}}, "poolkit:database.name",
     "identifier"),
    ("db-name-reserved", {"poolkit:database": {"name": "postgres"}}, "poolkit:database.name",
     "reserved"),
    ("user-reserved", {"poolkit:database": {"app_user": "pgbouncer_admin"}},
     "poolkit:database.app_user", "reserves"),
    ("same-users", {"poolkit:database": {"app_user": "x", "migrator_user": "x"}},
     "poolkit:database.migrator_user", "differ"),
    ("password-short", {"poolkit:app_password": "short"}, "poolkit:app_password", "12"),
    ("password-newline", {"poolkit:migrator_password": "a-long-password\nx=1"},
     "poolkit:migrator_password", "control"),
    ("apps-not-list", {"poolkit:apps": {"name": "api"}}, "poolkit:apps", "list"),
    ("app-missing-style", {"poolkit:apps": [{"name": "api"}]}, "poolkit:apps[0].style",
     "required"),
    ("app-bad-style", {"poolkit:apps": [{**APP, "style": "fargate"}]}, "poolkit:apps[0].style",
     "lambda or workers"),
    ("app-bad-runtime", {"poolkit:apps": [{**APP, "runtime": "deno"}]},
     "poolkit:apps[0].runtime", "python or node"),
    ("app-bad-name", {"poolkit:apps": [{**APP, "name": "My App"}]}, "poolkit:apps[0].name",
     "lower-case"),
    ("app-zero-instances", {"poolkit:apps": [{**APP, "instances": 0}]},
     "poolkit:apps[0].instances", "1 to 100000"),
    ("app-duplicate", {"poolkit:apps": [APP, {**APP, "port": 9000}]}, "poolkit:apps[1].name",
     "unique"),
    ("app-port-clash", {"poolkit:apps": [{**APP, "port": 5432}]}, "poolkit:apps[0].port",
     "poolkit:postgres.port"),
    ("app-replicas-over-instances", {"poolkit:apps": [{**APP, "instances": 2, "replicas": 3}]},
     "poolkit:apps[0].replicas", "instances"),
    ("app-unknown-key", {"poolkit:apps": [{**APP, "memory": "1GiB"}]}, "poolkit:apps[0].memory",
     "known keys"),
    ("unknown-top-level", {"poolkit:postgres_version": 17}, "poolkit:postgres_version",
     "did you mean"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "key", "hint"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_config_names_key_value_and_fix(raw, key, hint) -> None:
    with pytest.raises(ConfigError) as error:
        plan(parse_stack(raw, "dev"))
    problem = error.value.problems[0]
    assert problem.key == key, str(error.value)
    assert hint in f"{problem.message} {problem.fix}", str(problem)
    assert "Fix:" in str(problem)


def test_every_problem_is_reported_at_once() -> None:
    raw = {"poolkit:postgres": {"cpus": 0, "storage": "tape"},
           "poolkit:pgbouncer": {"pool_mode": "statement"}}  # fmt: skip
    with pytest.raises(ConfigError) as error:
        parse_stack(raw, "dev")
    assert [p.key for p in error.value.problems] == [
        "poolkit:postgres.cpus", "poolkit:postgres.storage", "poolkit:pgbouncer.pool_mode",
    ]  # fmt: skip


def test_password_never_appears_in_errors() -> None:
    with pytest.raises(ConfigError) as error:
        parse_stack({"poolkit:app_password": "tiny-pw"}, "dev")
    assert "tiny-pw" not in str(error.value)


def test_bad_stack_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="stack: is not a valid stack name"):
        parse_stack({}, "Dev Stack")


@pytest.mark.parametrize("name", ["dev", "my_app", "My.App-2", "a", "x" * 100, "_b", "v1.2"])
def test_stack_names_pulumi_accepts_are_accepted(name: str) -> None:
    assert parse_stack({}, name).stack == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "dev stack", "dev\n", "x" * 101, "é"])
def test_bad_stack_name_is_reported_with_the_files_other_problems(name: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_stack({"poolkit:postgres": {"cpus": 0}, "poolkit:bogus": 1}, name)
    keys = [problem.key for problem in error.value.problems]
    assert keys[0] == "stack" and "poolkit:postgres.cpus" in keys and "poolkit:bogus" in keys
    assert "letters, digits, -, _ and ." in str(error.value)


def test_bad_stack_name_joins_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "Pulumi.bad name.yaml"
    broken.write_text("config: [1, 2]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_stack(broken)
    assert [problem.key for problem in error.value.problems] == ["stack", "config"]


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip
KEYS = st.sampled_from(["poolkit:postgres", "poolkit:pgbouncer", "poolkit:database",
                        "poolkit:apps", "poolkit:app_password", "postgres",
                        "poolkit:x"])  # fmt: skip
SECTION_KEYS = st.sampled_from(["memory", "cpus", "version", "port", "name", "style", "instances",
                                "pool_mode", "max_connections", "app_user", "zzz"])  # fmt: skip


SECTION = st.dictionaries(SECTION_KEYS, JSONISH, max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, JSONISH | SECTION | st.lists(SECTION, max_size=3), max_size=4))
def test_validation_never_crashes(raw) -> None:
    """Any YAML-shaped input either validates and plans, or raises ConfigError: no traceback."""
    try:
        plan(parse_stack(raw, "dev"))
    except ConfigError as error:
        assert error.problems
