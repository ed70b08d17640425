"""DockerEngineMocks applies a small Pulumi program to the real Docker engine.

Needs a running engine and the base image (scripts/docker-engine start;
scripts/offline-base-image). Without them these tests fail, they never skip.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pulumi
import pulumi_docker as pd
import pytest

from tests.conftest import free_ports
from tests.pulumi.harness import reset_runtime

from .conftest import BASE_IMAGE
from .engine_mocks import RUN_LABEL, DockerEngineMocks, cleanup

pytestmark = pytest.mark.e2e

PROBE_UID = "999"
# A one-line TCP server from perl-base (in every Debian image): greets with an env var.
SERVER = (
    "my $s = IO::Socket::INET->new(LocalAddr => '0.0.0.0', LocalPort => 8080, Listen => 5,"
    " ReuseAddr => 1) or die $!; while (my $c = $s->accept) { print $c \"$ENV{GREETING}\\n\";"
    " close $c }"
)
DOCKERFILE = f"""FROM {BASE_IMAGE}
ARG FLAVOUR=unset
RUN useradd --system --uid {PROBE_UID} --user-group probe && echo "$FLAVOUR" > /flavour
"""


def run_program(mocks: DockerEngineMocks, program: Any) -> dict[str, Any]:
    """Run `program()` (which returns an Output of a dict) under the mocks; return its value."""
    reset_runtime()
    mocks.install(project="poolkit-e2e", stack="engine-mocks")
    result: dict[str, Any] = {}

    @pulumi.runtime.test
    def apply() -> pulumi.Output:
        return program().apply(result.update)

    apply()
    mocks.finish_run()
    return result


def probe_program(context: Path, port: int, run_id: str) -> pulumi.Output:
    network = pd.Network("net", labels=[pd.NetworkLabelArgs(label="poolkit.role", value="test")])
    volume = pd.Volume("data")
    image = pd.Image(
        "probe-image",
        image_name=f"poolkit-e2e-probe:{run_id}",
        build=pd.DockerBuildArgs(context=str(context), args={"FLAVOUR": "built-with-arg"}),
        skip_push=True,
    )
    container = pd.Container(
        "probe",
        image=image.repo_digest,
        command=["perl", "-MIO::Socket::INET", "-e", SERVER],
        envs=["GREETING=hello from the probe"],
        user=f"{PROBE_UID}:{PROBE_UID}",
        networks_advanced=[pd.ContainerNetworksAdvancedArgs(name=network.name, aliases=["probe"])],
        volumes=[pd.ContainerVolumeArgs(volume_name=volume.name, container_path="/data")],
        uploads=[pd.ContainerUploadArgs(
            file="/etc/probe/secret.conf", content=pulumi.Output.secret("token=s3cret\n"),
            permissions="0600", owner=PROBE_UID, group=PROBE_UID)],
        healthcheck=pd.ContainerHealthcheckArgs(
            tests=["CMD", "test", "-s", "/etc/probe/secret.conf"],
            interval="1s", timeout="2s", retries=5, start_period="1s"),
        ports=[pd.ContainerPortArgs(internal=8080, external=port, ip="127.0.0.1")],
        labels=[pd.ContainerLabelArgs(label="poolkit.role", value="probe")],
        restart="no",
        wait=True,
        wait_timeout=60,
        must_run=True,
    )
    return pulumi.Output.all(
        container=container.id, container_name=container.name, network=network.name,
        volume=volume.name, repo_digest=image.repo_digest)


@pytest.fixture(scope="module")
def applied(client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[dict[str, Any], int, str]]:
    context = tmp_path_factory.mktemp("probe-image")
    (context / "Dockerfile").write_text(DOCKERFILE)
    run_id = f"e2e-{uuid.uuid4().hex[:10]}"
    port = free_ports(1)
    mocks = DockerEngineMocks(run_id, client)
    try:
        yield run_program(mocks, lambda: probe_program(context, port, run_id)), port, run_id
    finally:
        cleanup(run_id, client, images=True)


def test_upload_is_in_place_with_mode_and_owner(client, applied) -> None:
    outputs, _, _ = applied
    container = client.containers.get(outputs["container"])
    result = container.exec_run(["stat", "-c", "%a %u:%g", "/etc/probe/secret.conf"])
    assert result.output.decode().strip() == "600 999:999"
    assert container.exec_run(["cat", "/etc/probe/secret.conf"]).output == b"token=s3cret\n"


def test_port_is_published_on_loopback_and_answers(client, applied) -> None:
    outputs, port, _ = applied
    container = client.containers.get(outputs["container"])
    bindings = container.attrs["HostConfig"]["PortBindings"]["8080/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert sock.makefile().readline() == "hello from the probe\n"


def test_container_is_healthy_and_runs_as_given_user(client, applied) -> None:
    outputs, _, _ = applied
    container = client.containers.get(outputs["container"])
    assert container.attrs["State"]["Health"]["Status"] == "healthy"
    assert container.attrs["Config"]["User"] == "999:999"
    assert container.exec_run(["id", "-u"]).output == b"999\n"
    assert container.exec_run(["cat", "/flavour"]).output == b"built-with-arg\n"


def test_network_alias_volume_and_labels(client, applied) -> None:
    outputs, _, run_id = applied
    container = client.containers.get(outputs["container"])
    networks = container.attrs["NetworkSettings"]["Networks"]
    assert list(networks) == [outputs["network"]]
    assert "probe" in networks[outputs["network"]]["Aliases"]
    mounts = [(m["Name"], m["Destination"], m["RW"]) for m in container.attrs["Mounts"]]
    assert mounts == [(outputs["volume"], "/data", True)]
    assert container.labels == {"poolkit.role": "probe", RUN_LABEL: run_id}
    assert client.networks.get(outputs["network"]).attrs["Labels"] == {
        "poolkit.role": "test", RUN_LABEL: run_id}
    assert client.volumes.get(outputs["volume"]).attrs["Labels"] == {RUN_LABEL: run_id}


def test_repo_digest_is_the_built_image_id(client, applied) -> None:
    outputs, _, run_id = applied
    image = client.images.get(f"poolkit-e2e-probe:{run_id}")
    assert outputs["repo_digest"] == image.id
    assert client.containers.get(outputs["container"]).image.id == image.id


def test_unemulated_input_fails_loudly(client) -> None:
    run_id = f"e2e-{uuid.uuid4().hex[:10]}"
    mocks = DockerEngineMocks(run_id, client)

    def program() -> pulumi.Output:
        vol = pd.Volume("v", driver="local", driver_opts={"type": "tmpfs", "device": "tmpfs"})
        return pulumi.Output.all(vol.name)

    try:
        with pytest.raises(Exception, match="not emulated: docker:index/volume:Volume 'v'"):
            run_program(mocks, program)
        assert client.volumes.list(filters={"label": f"{RUN_LABEL}={run_id}"}) == []
    finally:
        cleanup(run_id, client)


def test_cleanup_removes_everything_it_created(client, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    run_id = f"e2e-{uuid.uuid4().hex[:10]}"
    port = free_ports(1)
    try:
        outputs = run_program(DockerEngineMocks(run_id, client),
                              lambda: probe_program(tmp_path, port, run_id))
        assert client.containers.get(outputs["container"]).status == "running"
    finally:
        cleanup(run_id, client, images=True)
    selector = {"label": f"{RUN_LABEL}={run_id}"}
    assert client.containers.list(all=True, filters=selector) == []
    assert client.networks.list(filters=selector) == []
    assert client.volumes.list(filters=selector) == []
    assert client.images.list(filters=selector) == []


def test_failed_run_leaves_nothing_after_cleanup(client, tmp_path: Path) -> None:
    """A container fails its healthcheck while a slow build runs in another thread; after
    cleanup (which first waits for creations in flight), nothing of the run is left."""
    run_id = f"e2e-{uuid.uuid4().hex[:10]}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nARG TOKEN\nRUN echo \"$TOKEN\" > /token && sleep 4\n")
    mocks = DockerEngineMocks(run_id, client, build_cache=False)  # its layers go at cleanup

    def program() -> pulumi.Output:
        slow = pd.Image("slow", image_name=f"poolkit-e2e-slow:{run_id}", skip_push=True,
                        build=pd.DockerBuildArgs(context=str(tmp_path), args={"TOKEN": run_id}))
        pd.Container("after-slow", image=slow.repo_digest, command=["sleep", "60"])
        failing = pd.Container(
            "failing", image=BASE_IMAGE, command=["sleep", "60"], wait=True, wait_timeout=3,
            healthcheck=pd.ContainerHealthcheckArgs(tests=["CMD", "false"], interval="1s",
                                                    retries=1))
        return pulumi.Output.all(failing.id, slow.repo_digest)

    try:
        with pytest.raises(Exception, match=r"container failing-[0-9a-f]+ not healthy"):
            run_program(mocks, program)
    finally:
        mocks.cleanup(images=True)
    selector = {"label": f"{RUN_LABEL}={run_id}"}
    time.sleep(1)  # anything still coming would have had the time to show up
    assert client.containers.list(all=True, filters=selector) == []
    assert client.images.list(filters=selector) == []
    with pytest.raises(RuntimeError, match="is closed"):
        mocks.new_resource(pulumi.runtime.MockResourceArgs(
            typ="docker:index/volume:Volume", name="late", inputs={}, provider=None,
            resource_id=None, custom=True))


# A server that shuts down gracefully on SIGTERM (it logs it), as the kit's servers do.
GRACEFUL = "trap 'echo stopping gracefully; exit 0' TERM; echo started; while :; do sleep 0.2; done"


def lifecycle_program(run_id: str, content: str, grace: int | None, restart: str = "no"):
    container = pd.Container(
        "svc", name=f"{run_id}-svc", image=BASE_IMAGE, command=["sh", "-c", GRACEFUL],
        uploads=[pd.ContainerUploadArgs(file="/etc/svc.conf", content=content)],
        stop_signal="SIGTERM", stop_timeout=grace, destroy_grace_seconds=grace, restart=restart,
        opts=pulumi.ResourceOptions(delete_before_replace=True))
    return pulumi.Output.all(id=container.id, name=container.name)


def test_a_second_run_keeps_updates_replaces_and_destroy_deletes(client) -> None:
    """As the provider: same inputs keep the container, a restart policy is updated in place,
    a changed upload replaces it (deleted first: delete_before_replace), and the delete stops
    it with its stop signal because destroy_grace_seconds is set."""
    run_id = f"e2e-{uuid.uuid4().hex[:10]}"
    mocks = DockerEngineMocks(run_id, client)
    try:
        first = run_program(mocks, lambda: lifecycle_program(run_id, "a", 10))
        assert run_program(mocks, lambda: lifecycle_program(run_id, "a", 10)) == first
        assert mocks.actions[-1] == ("same", "svc")
        updated = run_program(mocks, lambda: lifecycle_program(run_id, "a", 10, "always"))
        assert updated["id"] == first["id"] and mocks.actions[-1] == ("update", "svc")
        assert client.api.inspect_container(first["id"])["HostConfig"]["RestartPolicy"][
            "Name"] == "always"
        replaced = run_program(mocks, lambda: lifecycle_program(run_id, "b", 10, "always"))
        assert replaced["id"] != first["id"]
        assert mocks.actions[-2:] == [("delete", "svc"), ("replace", "svc")]
        assert "stopping gracefully" in mocks.removed_logs[first["name"]]
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(first["id"])
        new = client.containers.get(replaced["id"])
        assert new.exec_run(["cat", "/etc/svc.conf"]).output == b"b"
        assert new.attrs["Config"]["StopSignal"] == "SIGTERM"
        assert new.attrs["Config"]["StopTimeout"] == 10
        mocks.destroy()
        assert "stopping gracefully" in mocks.removed_logs[first["name"]]
        assert client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}) == []
    finally:
        mocks.cleanup()


def test_without_grace_a_delete_kills_the_container(client) -> None:
    """No destroy_grace_seconds: removed by force, the server never sees its stop signal."""
    run_id = f"e2e-{uuid.uuid4().hex[:10]}"
    mocks = DockerEngineMocks(run_id, client)
    try:
        first = run_program(mocks, lambda: lifecycle_program(run_id, "a", None))
        time.sleep(0.5)
        mocks.destroy()
        log = mocks.removed_logs[first["name"]]
        assert "started" in log and "stopping gracefully" not in log
    finally:
        mocks.cleanup()


def healthcheck_program(run_id: str, interval: str, replace_on_changes: list[str]):
    container = pd.Container(
        "probe", name=f"{run_id}-probe", image=BASE_IMAGE, command=["sleep", "infinity"],
        healthcheck=pd.ContainerHealthcheckArgs(tests=["CMD", "true"], interval=interval),
        opts=pulumi.ResourceOptions(delete_before_replace=True,
                                    replace_on_changes=replace_on_changes))
    return pulumi.Output.all(id=container.id)


def test_a_changed_healthcheck_replaces_only_with_replace_on_changes(client) -> None:
    """The provider's schema does not force a new container for a healthcheck, and its update
    does not apply one: only ``replace_on_changes`` makes the change reach the engine."""
    run_id = f"e2e-{uuid.uuid4().hex[:10]}"
    mocks = DockerEngineMocks(run_id, client)
    try:
        first = run_program(mocks, lambda: healthcheck_program(run_id, "2s", []))
        kept = run_program(mocks, lambda: healthcheck_program(run_id, "3s", []))
        assert kept == first and mocks.actions[-1] == ("update", "probe")
        health = client.api.inspect_container(first["id"])["Config"]["Healthcheck"]
        assert health["Interval"] == 2 * 10**9  # the engine still has the old one
        replaced = run_program(mocks, lambda: healthcheck_program(run_id, "4s", ["healthcheck"]))
        assert replaced != first and mocks.actions[-2:] == [("delete", "probe"),
                                                            ("replace", "probe")]
        health = client.api.inspect_container(replaced["id"])["Config"]["Healthcheck"]
        assert health["Interval"] == 4 * 10**9
    finally:
        mocks.cleanup()


def volume_program(run_id: str, retain: bool) -> pulumi.Output:
    volume = pd.Volume("repo", name=f"{run_id}-repo",
                       labels=[pd.VolumeLabelArgs(label=RUN_LABEL, value=run_id)],
                       opts=pulumi.ResourceOptions(retain_on_delete=retain))  # fmt: skip
    return pulumi.Output.all(name=volume.name)


def test_destroy_keeps_a_retained_volume_and_a_new_run_adopts_it(client) -> None:
    """As Pulumi: ``retain_on_delete`` drops the volume from the state on destroy and leaves it
    on the engine with its contents; the next run's create hands back the same volume. Without
    the option, destroy removes it."""
    run_id = f"e2e-{uuid.uuid4().hex[:10]}"
    mocks = DockerEngineMocks(run_id, client)
    try:
        name = run_program(mocks, lambda: volume_program(run_id, True))["name"]
        client.containers.run(BASE_IMAGE, ["sh", "-c", "echo kept > /repo/file"], remove=True,
                              volumes={name: {"bind": "/repo", "mode": "rw"}},
                              labels={RUN_LABEL: run_id})  # fmt: skip
        mocks.destroy()
        assert mocks.actions[-1] == ("retain", "repo") and mocks.state == {}
        assert client.volumes.get(name).name == name
        assert run_program(mocks, lambda: volume_program(run_id, False))["name"] == name
        assert mocks.actions[-1] == ("create", "repo")
        read = client.containers.run(BASE_IMAGE, ["cat", "/repo/file"], remove=True,
                                     volumes={name: {"bind": "/repo", "mode": "ro"}},
                                     labels={RUN_LABEL: run_id})  # fmt: skip
        assert read == b"kept\n"
        mocks.destroy()
        assert mocks.actions[-1] == ("delete", "repo")
        with pytest.raises(docker.errors.NotFound):
            client.volumes.get(name)
    finally:
        mocks.cleanup()
