"""Build the Dockerfile's image for real, offline from any registry: buildah, a base made from
Debian packages, and podman to run it.

No base image can be pulled on the machines that run the tests, so the Dockerfile's `FROM`
(python:3.11.x-slim-bookworm) is stood in for by a `debootstrap --variant=minbase` of the
same Debian release with Debian's python3, imported with `buildah from scratch` and tagged
with the `FROM` name. The base is cached as a tarball keyed by everything that shapes it
(package list, release, mirror, the post-processing below), so only the first run pays
for debootstrap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests import deploy_helpers as dh

DOCKERFILE = dh.REPO / "Dockerfile"
SUITE = "bookworm"  # the Debian release of python:3.11.x-slim-bookworm
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates", "tzdata")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What the official python image has and Debian's python3 lacks, done in the base:
#   - `python`, `python3`, `pip` on /usr/local/bin (the Dockerfile's HEALTHCHECK runs
#     `python`, its RUN steps run `pip`);
#   - no EXTERNALLY-MANAGED marker: the official image's pip installs into the system
#     interpreter (under /usr/local), and so does the Dockerfile.
# And one thing for an offline build: pip looks for packages only in /ci-wheels, which the
# build mounts from the host (wheels that the host's pip downloaded, see download_wheels),
# so the builder stage's `pip wheel .` needs no network and no proxy CA in the container.
POST_PROCESS = """
set -eu
printf '[global]\\nno-index = true\\nfind-links = /ci-wheels\\n' > etc/pip.conf
ln -sf /usr/bin/python3 usr/local/bin/python3
ln -sf /usr/bin/python3 usr/local/bin/python
ln -sf /usr/bin/pip3 usr/local/bin/pip
rm -f usr/lib/python3*/EXTERNALLY-MANAGED
rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb var/log/*
"""
BASE_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8")
IMAGE = "localhost/docspace-backup-exporter:ci"
# runc, not crun: crun refuses this machine's hybrid cgroup v1/v2 layout. The ulimits are
# set explicitly and low because the default container rlimits (1048576 open files) need
# CAP_SYS_RESOURCE, which a sandboxed root (CI's too) may not have; 4096 is plenty for the
# build and for the exporter (it caps itself at 256 connections).
RUNTIME = ("--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
CACHE_DIR = Path(os.environ.get("DOCSPACE_CI_CACHE", "/var/tmp"))
# Bounds of each step: a cold debootstrap downloads ~40 MB of packages.
DEBOOTSTRAP_TIMEOUT = 1200
BUILD_TIMEOUT = 900


def from_image() -> str:
    """The one base image name every FROM of the Dockerfile uses (stages aside)."""
    names = set()
    stages = set()
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"\s*FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            if m.group(1) not in stages:
                names.add(m.group(1))
            if m.group(2):
                stages.add(m.group(2))
    assert len(names) == 1, f"expected one base image in the Dockerfile, found {names}"
    (name,) = names
    return name


def fully_qualified(name: str) -> str:
    """docker.io/library/NAME for a short name, as buildah resolves `FROM NAME`."""
    first = name.split("/")[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def debian_mirror() -> str:
    """The machine's own Debian mirror (deb822 sources), so CI uses what apt uses."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    try:
        text = sources.read_text()
    except OSError:
        return DEFAULT_MIRROR
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
        if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
            return fields["URIs"].split()[0]
    return DEFAULT_MIRROR


def base_key() -> str:
    recipe = {"suite": SUITE, "packages": BASE_PACKAGES, "mirror": debian_mirror(),
              "post": POST_PROCESS, "variant": "minbase"}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def base_tarball() -> Path:
    return CACHE_DIR / f"docspace-ci-base-{base_key()}.tar"


def _check(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        raise AssertionError(f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc.stdout


def build_base_tarball() -> Path:
    """debootstrap the base (once; cached by key) and return the tarball."""
    tarball = base_tarball()
    if tarball.is_file():
        return tarball
    debootstrap = dh.binary("debootstrap")
    work = Path(tempfile.mkdtemp(prefix="docspace-ci-base-", dir=CACHE_DIR))
    try:
        root = work / "root"
        _check(dh.run([debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                       SUITE, str(root), debian_mirror()], timeout=DEBOOTSTRAP_TIMEOUT),
               "debootstrap")
        _check(dh.run(["sh", "-c", POST_PROCESS], cwd=root), "base post-processing")
        partial = work / "base.tar"
        _check(dh.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
                      timeout=300), "tar of the base")
        os.replace(partial, tarball)  # atomic: a broken run leaves no half tarball
        for old in CACHE_DIR.glob("docspace-ci-base-*.tar"):
            if old != tarball:  # bases of an older recipe
                old.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def image_label(image: str, label: str) -> str | None:
    buildah = dh.binary("buildah")
    proc = dh.run([buildah, "inspect", "--type", "image", image])
    if proc.returncode != 0:
        return None
    labels = json.loads(proc.stdout).get("OCIv1", {}).get("config", {}).get("Labels") or {}
    value = labels.get(label)
    return str(value) if value is not None else None


def import_base() -> str:
    """The base tarball as the Dockerfile's FROM image, via `buildah from scratch`."""
    buildah = dh.binary("buildah")
    name = fully_qualified(from_image())
    key = base_key()
    if image_label(name, "org.docspace-backup-exporter.ci-base") == key:
        return name
    tarball = build_base_tarball()
    ctr = _check(dh.run([buildah, "from", "scratch"]), "buildah from scratch").strip()
    try:
        _check(dh.run([buildah, "add", ctr, str(tarball), "/"], timeout=300), "buildah add")
        config = [buildah, "config", "--cmd", "python3",
                  "--label", f"org.docspace-backup-exporter.ci-base={key}"]
        for env in BASE_ENV:
            config += ["--env", env]
        _check(dh.run(config + [ctr]), "buildah config")
        _check(dh.run([buildah, "commit", "--format", "docker", ctr, name], timeout=300),
               "buildah commit")
    finally:
        dh.run([buildah, "rm", ctr])
    return name


def requirements() -> list[str]:
    """What the builder stage's `pip wheel .` needs: build backend and runtime deps."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        dh.unavailable("tomllib (Python 3.11+) is needed to read pyproject.toml")
    project = tomllib.loads((dh.REPO / "pyproject.toml").read_text())
    return [*project["build-system"]["requires"], "wheel", *project["project"]["dependencies"]]


def download_wheels(dest: Path) -> Path:
    """The wheels of requirements() for this interpreter (the base's python3 is Debian's
    3.11, like CI's), fetched by the host's pip with the host's index and CA settings."""
    dest.mkdir(parents=True, exist_ok=True)
    _check(dh.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
                   "--quiet", "--only-binary=:all:", "--dest", str(dest), *requirements()],
                  timeout=600), "pip download of the build's wheels")
    return dest


def build_image() -> str:
    """`buildah bud --pull-never --format docker` of the unchanged Dockerfile.

    --format docker keeps HEALTHCHECK (OCI has no such field); --layers reuses the cached
    steps of an unchanged context; --network none: the build is offline, its wheels come
    from a host folder mounted at /ci-wheels (the base's pip.conf looks only there)."""
    buildah = dh.binary("buildah")
    import_base()
    wheels = Path(tempfile.mkdtemp(prefix="docspace-ci-wheels-", dir=CACHE_DIR))
    try:
        download_wheels(wheels)
        _check(dh.run([buildah, "bud", "--pull-never", "--format", "docker", "--layers",
                       *RUNTIME, "--network", "none", "--volume", f"{wheels}:/ci-wheels:ro",
                       "-f", str(DOCKERFILE), "-t", IMAGE, str(dh.REPO)],
                      timeout=BUILD_TIMEOUT), "buildah bud")
    finally:
        shutil.rmtree(wheels, ignore_errors=True)
    return IMAGE
