"""``poolkit plan`` and ``poolkit render`` invoked in-process: exit codes, output, files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from poolkit.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("POOLKIT_APP_PASSWORD", raising=False)
    monkeypatch.delenv("POOLKIT_MIGRATOR_PASSWORD", raising=False)
    return CliRunner()


def test_plan_json_has_the_documented_shape(runner: CliRunner) -> None:
    result = runner.invoke(main, ["plan", "--stack", "dev", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"postgres", "pgbouncer", "apps", "why"}
    assert data["postgres"]["settings"]["shared_buffers"] == "256MB"
    assert data["pgbouncer"]["settings"]["pool_mode"] == "transaction"
    assert data["apps"]["orders"]["connection_limit"] == 1
    assert data["why"]["postgres.work_mem"].startswith("pgtune:")


def test_plan_text_explains_each_number(runner: CliRunner) -> None:
    result = runner.invoke(main, ["plan", "--stack", "prod"])
    assert result.exit_code == 0
    assert "default_pool_size = 9" in result.output  # 26 over the 3 processes of 8 CPUs
    assert "9 of the pool of 26" in result.output
    assert "Prisma's pool guidance" in result.output


def test_render_writes_every_file_with_private_modes(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    result = runner.invoke(main, ["render", "--stack", "dev", "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert names >= {"postgresql.conf", "pg_hba.conf", "pgbouncer-1.ini", "pgbouncer-2.ini",
                     "userlist.txt",
                     "init.sql", ".env", "secrets.json"}  # fmt: skip
    for name in ("userlist.txt", "init.sql", ".env", "secrets.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    assert "password" not in result.output.lower()


def test_render_twice_is_byte_stable(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "r"
    first_run = runner.invoke(main, ["render", "--stack", "dev", "--out", str(out)])
    assert first_run.exit_code == 0, first_run.output
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"pgbouncer-1.ini", "userlist.txt", ".env", "secrets.json"} <= set(first)
    second_run = runner.invoke(main, ["render", "--stack", "dev", "--out", str(out)])
    assert second_run.exit_code == 0, second_run.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first


def test_render_kubernetes_writes_the_objects_as_yaml_secrets_private(
    runner: CliRunner, tmp_path: Path
) -> None:
    import yaml

    out = tmp_path / "k8s"
    result = runner.invoke(main, ["render", "--stack", "k8s", "--out", str(out)])  # its target
    assert result.exit_code == 0, result.output
    files = sorted(p for p in out.iterdir() if p.suffix == ".yaml")
    kinds = [yaml.safe_load(p.read_text())["kind"] for p in files]
    assert kinds[0] == "Namespace" and len(files) == 19
    for path, kind in zip(files, kinds, strict=True):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert (mode == 0o600) == (kind == "Secret"), path.name
    again = runner.invoke(main, ["render", "--stack", "k8s", "--target", "kubernetes",
                                 "--out", str(out)])  # fmt: skip
    assert again.exit_code == 0 and [p.read_bytes() for p in files] == [
        p.read_bytes() for p in sorted(out.glob("*.yaml"))]


def test_render_kubernetes_with_tls_and_an_external_postgres(
    runner: CliRunner, tmp_path: Path
) -> None:
    """The certificate is generated once (tls.json, 0600), the external CA read from its file."""
    import yaml

    from poolkit.tls import new_ca

    ca_file = tmp_path / "provider-ca.pem"
    stack_file = tmp_path / "Pulumi.byo.yaml"
    external = {"host": "db.example.com", "admin_user": "byo_admin", "ca_file": str(ca_file),
                "max_connections": 100}  # fmt: skip
    stack_file.write_text(yaml.safe_dump({"config": {
        "poolkit:target": "kubernetes", "poolkit:postgres": {"cpus": 2, "external": external},
        "poolkit:pgbouncer": {"replicas": 2, "client_tls": True},
        "poolkit:tls": {"names": ["db.example.com"]}}}))  # fmt: skip
    out = tmp_path / "out"
    args = ["render", "--stack-file", str(stack_file), "--out", str(out)]
    missing = runner.invoke(main, args)
    assert missing.exit_code == 2 and "poolkit:postgres.external.ca_file" in missing.output
    ca_file.write_text(new_ca("provider CA").cert)
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert stat.S_IMODE((out / "tls.json").stat().st_mode) == 0o600
    objs = {f"{o['kind']}/{o['metadata']['name']}": o for o in
            (yaml.safe_load(t) for n, t in written.items() if n.endswith(".yaml"))}  # fmt: skip
    assert objs["ConfigMap/server-ca"]["data"]["server-ca.crt"] == ca_file.read_text()
    assert objs["Secret/tls"]["type"] == "kubernetes.io/tls"
    assert "StatefulSet/postgres" not in objs
    assert runner.invoke(main, args).exit_code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written


def test_up_target_pulumi_refuses_a_kubernetes_stack_with_the_fix(runner: CliRunner) -> None:
    result = runner.invoke(main, ["up", "--target", "pulumi", "--stack", "k8s"])
    assert result.exit_code == 2
    assert "poolkit:target" in result.output and "pulumi up --stack k8s" in result.output


def test_password_from_environment_is_used_not_printed(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLKIT_APP_PASSWORD", "from-the-env-1234")
    result = runner.invoke(main, ["render", "--stack", "dev", "--out", str(tmp_path)])
    assert result.exit_code == 0
    assert "from-the-env-1234" in (tmp_path / ".env").read_text()
    assert "from-the-env-1234" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan"], "exactly one of --stack NAME or --stack-file PATH"),
        (["plan", "--stack", "dev", "--stack-file", "x.yaml"], "exactly one of"),
        (["plan", "--stack", "nosuch"], "Pulumi.nosuch.yaml does not exist"),
        (["plan", "--stack-file", "nosuch.yaml"], "--stack-file: does not exist"),
        (["plan", "--stack-file", "README.md"], "config"),
        (["render", "--stack", "dev"], "Missing option '--out'"),
        (["plan", "--stack", "dev", "--bogus"], "No such option '--bogus'"),
    ],
)
def test_bad_invocations_exit_2_naming_the_argument(runner, args, message) -> None:
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_invalid_stack_file_lists_every_problem_and_exits_2(
    runner: CliRunner, tmp_path: Path
) -> None:
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text("config:\n  poolkit:postgres:\n    cpus: 0\n    memroy: 1GiB\n")
    result = runner.invoke(main, ["plan", "--stack-file", str(bad)])
    assert result.exit_code == 2
    assert "2 problems" in result.output
    assert "poolkit:postgres.cpus" in result.output
    assert "did you mean 'memory'" in result.output
    assert not (tmp_path / "rendered").exists()
