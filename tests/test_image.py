"""The container image, built from the unchanged Dockerfile with buildah and run with podman.

The base image is made from Debian packages (tests/image_helpers.py), because no registry
can be reached; everything after `FROM` is the Dockerfile as shipped. The container runs
`--demo` in its own network namespace (slirp4netns: no CNI plugins, nothing bound but a
loopback port on the host) and is scraped from the host.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from exporter import __version__
from tests import deploy_helpers as dh
from tests import image_helpers as ih

pytestmark = pytest.mark.e2e
CONTAINER_PORT = 10057  # the Dockerfile's EXPOSE and the HEALTHCHECK's port


@pytest.fixture(scope="module")
def image() -> str:
    dh.binary("buildah")
    dh.binary("podman")
    dh.binary("slirp4netns")
    dh.binary("runc")
    return ih.build_image()


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return dh.run([dh.binary("podman"), *args], timeout=timeout)


def podman_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    runtime, ulimits = ih.RUNTIME[:2], ih.RUNTIME[2:]
    return podman(*runtime, "run", *ulimits, *args, timeout=timeout)


def inspect(image: str) -> dict[str, Any]:
    proc = podman("image", "inspect", image)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout)[0])


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[tuple[str, str]]:
    """`--demo` listening on all interfaces of its own namespace, published on 127.0.0.1."""
    port = dh.free_port()
    name = f"docspace-ci-{uuid.uuid4().hex[:8]}"
    run = podman_run("-d", "--rm", "--name", name, "--network", "slirp4netns",
                 "-p", f"127.0.0.1:{port}:{CONTAINER_PORT}", image,
                 "--demo", f"--web.listen-address=:{CONTAINER_PORT}")
    assert run.returncode == 0, run.stderr
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            state = podman("inspect", "--format", "{{.State.Running}}", name)
            if state.stdout.strip() != "true":
                logs = podman("logs", name)
                pytest.fail(f"container stopped: {logs.stdout[-2000:]}{logs.stderr[-2000:]}")
            return dh.http_get(base + "/-/ready", timeout=2)[0] == 200

        dh.wait_until(ready, timeout=60, interval=0.5, what="the container's /-/ready")
        yield name, base
    finally:
        podman("rm", "-f", "-t", "5", name)


def test_version_matches_the_package(image: str) -> None:
    proc = podman_run("--rm", "--network", "none", image, "--version")
    assert proc.returncode == 0, proc.stderr
    assert __version__ in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert re.search(rf"\b{re.escape(__version__)}\b", proc.stdout + proc.stderr)


def test_image_config_keeps_user_healthcheck_and_port(image: str) -> None:
    info = inspect(image)
    config = info["Config"]
    assert config["User"] == "65532:65532"
    assert f"{CONTAINER_PORT}/tcp" in config["ExposedPorts"]
    # --format docker keeps HEALTHCHECK; OCI would have dropped it silently.
    assert info["Healthcheck"]["Test"][0] == "CMD", info.get("Healthcheck")
    assert config["Entrypoint"] == ["docspace-backup-exporter"]


def test_runs_as_65532(container: tuple[str, str]) -> None:
    name, _ = container
    # the exporter process itself (pid 1), not a fresh exec
    status = podman("exec", name, "cat", "/proc/1/status")
    assert status.returncode == 0, status.stderr
    uids = re.search(r"^Uid:\s+(.*)$", status.stdout, re.MULTILINE)
    assert uids and set(uids.group(1).split()) == {"65532"}, status.stdout


def test_healthy_and_demo_portals_scraped(container: tuple[str, str]) -> None:
    _, base = container
    status, body = dh.http_get(base + "/-/healthy")
    assert status == 200 and body.strip() == b"Healthy"
    status, body = dh.http_get(base + "/metrics", timeout=15)
    assert status == 200
    text = body.decode()
    portals = set(re.findall(r'^docspace_portal_info\{[^}]*portal="([^"]+)"', text, re.MULTILINE))
    assert {"healthy", "down", "stale", "backup-failed"} <= portals, portals
    assert re.search(r'^docspace_up\{portal="healthy"\} 1(\.0)?$', text, re.MULTILINE)
    assert re.search(r'^docspace_exporter_build_info\{[^}]*version="' + re.escape(__version__),
                     text, re.MULTILINE)


def test_healthcheck_passes_inside(container: tuple[str, str]) -> None:
    name, _ = container
    # `podman healthcheck run` executes the image's HEALTHCHECK command in the container.
    deadline = time.monotonic() + 30
    while True:
        proc = podman("healthcheck", "run", name)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and it is the command the Dockerfile ships, which really fails on a wrong port.
    cmd = inspect(dh.run([dh.binary("podman"), "inspect", "--format", "{{.Image}}",
                          name]).stdout.strip())["Healthcheck"]["Test"][1:]
    assert cmd[0] == "python" and "127.0.0.1:10057/-/healthy" in cmd[-1], cmd
    broken = podman("exec", name, *[c.replace(":10057", ":10058") for c in cmd])
    assert broken.returncode != 0
