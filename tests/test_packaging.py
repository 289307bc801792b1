"""Packaging: Dockerfile (hadolint, structure, its install steps replayed in a venv),
.dockerignore, docker-compose, Kubernetes manifests and the systemd unit."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import deploy_helpers as dh

DOCKERFILE = dh.REPO / "Dockerfile"
DOCKERIGNORE = dh.REPO / ".dockerignore"
COMPOSE = dh.DEPLOY / "docker-compose.yml"
K8S = dh.DEPLOY / "kubernetes"
UNIT = dh.DEPLOY / "systemd" / "docspace-backup-exporter.service"
PORT = 10057
UID = 65532
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (dh.REPO / "exporter" / "__init__.py").read_text()).group(1)  # type: ignore[union-attr]


# --- Dockerfile -------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in dockerfile_instructions():
        if ins[0] == "FROM":
            result.append([])
        result[-1].append(ins)
    return result


def test_hadolint_reports_nothing() -> None:
    hadolint = dh.binary("hadolint")
    result = dh.run([hadolint, "--no-color", str(DOCKERFILE)], cwd=dh.REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_hadolint_would_catch_a_regression() -> None:
    """hadolint really lints this file: dropping --no-cache-dir and the USER is reported."""
    hadolint = dh.binary("hadolint")
    bad = DOCKERFILE.read_text().replace("pip install --no-cache-dir", "pip install")
    bad = bad.replace(f"USER {UID}:{UID}", "USER root")
    proc = subprocess.run([hadolint, "--no-color", "-"], input=bad, text=True,
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "DL3042" in proc.stdout and "DL3002" in proc.stdout


def test_dockerfile_structure() -> None:
    builder, runtime = stages()
    for stage in (builder, runtime):
        image = stage[0][1].split()[0]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", image), image  # pinned, slim
    assert builder[0][1].endswith("AS builder")
    assert any(i == "RUN" and "pip wheel" in a for i, a in builder)
    instructions = dict((i, a) for i, a in runtime)  # last of each kind
    assert instructions["USER"] == f"{UID}:{UID}"
    assert instructions["EXPOSE"] == str(PORT)
    assert json.loads(instructions["ENTRYPOINT"]) == ["docspace-backup-exporter"]
    assert json.loads(instructions["CMD"]) == [
        "--config.file=/etc/docspace-backup-exporter/config.yaml"]
    health = instructions["HEALTHCHECK"]
    assert "/-/healthy" in health and "urllib" in health and "curl" not in health
    for _, args in dockerfile_instructions():
        if re.search(r"\bpip (install|wheel)\b", args):
            assert "--no-cache-dir" in args, args
    for ins, args in dockerfile_instructions():
        if ins in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(?i)(api_?key|token|password|secret)", args), args
    # The runtime stage gets the wheels through a bind mount, never a COPY into a layer.
    assert not any(i in ("COPY", "ADD") for i, _ in runtime)


def copy_sources() -> list[str]:
    """Sources of the builder stage's COPY instructions."""
    sources = []
    for ins, args in stages()[0]:
        if ins == "COPY":
            sources += args.split()[:-1]
    return sources


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also covers what is below a
    matching directory; `!` re-includes; `**` matches any number of directories."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        regex = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_dockerignore_lets_in_only_the_build_sources() -> None:
    patterns = dockerignore_patterns()
    sources = copy_sources()
    assert set(sources) == {"pyproject.toml", "README.md", "exporter/", "docspace_simulator/"}
    for src in sources:
        target = src.rstrip("/")
        assert (dh.REPO / target).exists(), src
        assert not dockerignored(target, patterns), src
        if (dh.REPO / target).is_dir():
            for f in (dh.REPO / target).rglob("*.py"):
                rel = f.relative_to(dh.REPO).as_posix()
                assert not dockerignored(rel, patterns), rel
    for unwanted in (".git/config", "config.yaml", "secrets/main.key", "tests/test_rules.py",
                     ".venv/bin/python", "deploy/kubernetes/secret.example.yaml",
                     "exporter/__pycache__/cli.cpython-311.pyc", "build/lib/x.py",
                     "docspace_backup_exporter.egg-info/PKG-INFO"):
        assert dockerignored(unwanted, patterns), unwanted


RUNTIME_MODULES = ("prometheus_client", "requests", "urllib3", "yaml", "bcrypt")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency_with_a_floor() -> None:
    """What exporter/ imports (at module level or lazily) outside the standard library is a
    declared runtime dependency, each with the `>=` floor that .ci/floors installs and tests;
    urllib3 is imported directly, so it is declared, not left to requests."""
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((dh.REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9._-]+)>=([0-9][0-9A-Za-z.]*)", dep.replace(" ", ""))
        assert m, f"{dep!r}: every runtime dependency needs a plain `>=` floor"
        floors[_canonical(m.group(1))] = m.group(2)
    imported = set()
    for source in (dh.REPO / "exporter").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    # docspace_simulator is this project's own second package (pyproject's packages).
    own = {"exporter", "docspace_simulator", "__future__"}
    third_party = imported - set(sys.stdlib_module_names) - own
    assert set(RUNTIME_MODULES) <= third_party, third_party
    providers = importlib.metadata.packages_distributions()
    for module in sorted(third_party):
        dists = {_canonical(d) for d in providers.get(module, [])}
        assert dists & set(floors), f"exporter/ imports {module} ({dists}) but " \
                                    f"pyproject.toml declares only {sorted(floors)}"


def dependency_dirs() -> list[str]:
    """The directories this interpreter imports the runtime dependencies from."""
    dirs = []
    for module in RUNTIME_MODULES:
        spec = importlib.util.find_spec(module)
        assert spec and spec.origin, module
        where = str(Path(spec.origin).parent.parent)
        if where not in dirs:
            dirs.append(where)
    return dirs


def test_dockerfile_install_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    """Replays the builder (COPY sources, `pip wheel`) and the runtime install in tmp dirs,
    then runs the console script, the CMD's config flag and the HEALTHCHECK command."""
    src = tmp_path / "src"
    src.mkdir()
    for item in copy_sources():  # the Dockerfile's COPY, so nothing else is needed
        source = dh.REPO / item.rstrip("/")
        if source.is_dir():
            shutil.copytree(source, src / item.rstrip("/"),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, src / item)
    wheels = tmp_path / "wheels"
    # As in the image, pip builds in an isolated environment (it fetches the build backend
    # named in pyproject.toml from the package index).
    built = dh.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                    "--wheel-dir", str(wheels), str(src)], cwd=tmp_path, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("docspace_backup_exporter-*.whl")
    assert wheel.name.startswith(f"docspace_backup_exporter-{VERSION}-py3-none-any")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    assert "exporter/__init__.py" in names and "exporter/cli.py" in names
    # --demo imports the simulator; the tests' faults stay out of the wheel.
    assert "docspace_simulator/__init__.py" in names and "docspace_simulator/server.py" in names
    assert not [n for n in names if n.startswith(("tests/", "deploy/"))]
    assert re.search(r"docspace-backup-exporter\s*=\s*exporter\.cli:main", entry_points)

    # Runtime: a fresh venv that sees the runtime dependencies where the interpreter running
    # the tests imports them from, so that the test works offline (the image installs them
    # from the builder's wheels instead). Not `--system-site-packages`: when the tests run in a
    # venv, that would show the base interpreter's packages, not this venv's.
    venv = tmp_path / "venv"
    made = dh.run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    purelib = dh.run([str(bindir / "python"), "-c",
                      "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    assert purelib.returncode == 0, purelib.stderr
    (Path(purelib.stdout.strip()) / "runtime-deps.pth").write_text(
        "".join(f"{d}\n" for d in dependency_dirs()))
    installed = dh.run([str(bindir / "python"), "-m", "pip", "install", "--no-cache-dir",
                        "--no-index", "--no-deps", str(wheel)], cwd=tmp_path, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    where = dh.run([str(bindir / "python"), "-c", "import exporter; print(exporter.__file__)"],
                   cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr
    version = dh.run([str(bindir / "docspace-backup-exporter"), "--version"], cwd=tmp_path,
                     env=env)
    assert version.returncode == 0, version.stdout + version.stderr
    assert VERSION in version.stdout + version.stderr

    # CMD points at /etc/docspace-backup-exporter/config.yaml; the same flag on a tmp config.
    config = tmp_path / "config.yaml"
    key = tmp_path / "key"
    key.write_text("sk-test\n")
    config.write_text(f"portals:\n  - name: main\n    url: https://docspace.example.com\n"
                      f"    api_key_file: {key}\n")
    checked = dh.run([str(bindir / "docspace-backup-exporter"), "--config.check",
                      f"--config.file={config}"], cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # HEALTHCHECK: healthy while the exporter serves, failing once it is gone.
    health_cmd = json.loads(dict(stages()[-1])["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert health_cmd[0] == "python"
    port = dh.free_port()
    probe = [str(bindir / "python"), *[a.replace(f":{PORT}/", f":{port}/")
                                       for a in health_cmd[1:]]]
    with dh.children() as started:
        child = dh.Child("installed exporter",
                         [str(bindir / "docspace-backup-exporter"), "--demo",
                          f"--web.listen-address=127.0.0.1:{port}"],
                         tmp_path / "exporter.log", cwd=tmp_path, env=env)
        started.append(child)
        child.wait_http(f"http://127.0.0.1:{port}/-/healthy")
        assert dh.run(probe, env=env, timeout=30).returncode == 0
    assert dh.run(probe, env=env, timeout=30).returncode != 0


# --- docker compose ---------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path (relative to deploy/) of the service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith("."):
            out[container] = (COMPOSE.parent / host).resolve()
    return out


def test_compose_services_and_mounts() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"docspace-backup-exporter", "prometheus", "alertmanager", "grafana"}
    exporter = services["docspace-backup-exporter"]
    assert (COMPOSE.parent / exporter["build"]["context"]).resolve() == dh.REPO
    assert exporter["build"]["dockerfile"] == "Dockerfile"
    assert exporter["command"] == ["--demo", f"--web.listen-address=:{PORT}"]
    for name, service in services.items():
        if "image" in service and name != "docspace-backup-exporter":
            tag = service["image"].rsplit(":", 1)[1]
            assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), service["image"]  # pinned
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
        for host in bind_mounts(service).values():
            assert host.exists(), host
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])
             if not v.startswith(".")}
    assert named == set(doc["volumes"])


def test_compose_runs_prometheus_3_lts_and_a_matching_alertmanager() -> None:
    """The demo stack runs what CI tests beside Prometheus 2: Prometheus 3 (the 3.5 LTS line)
    and an Alertmanager made for it (>= 0.28)."""
    services = compose()["services"]
    prometheus = services["prometheus"]["image"].rsplit(":v", 1)[1]
    alertmanager = services["alertmanager"]["image"].rsplit(":v", 1)[1]
    assert prometheus.split(".")[:2] == ["3", "5"], prometheus
    assert tuple(map(int, alertmanager.split("."))) >= dh.ALERTMANAGER_MIN_WITH_PROM3


def test_compose_prometheus_gets_the_shipped_config_and_rules() -> None:
    services = compose()["services"]
    mounts = bind_mounts(services["prometheus"])
    config_arg = next(a for a in services["prometheus"]["command"]
                      if a.startswith("--config.file="))
    config_path = config_arg.split("=", 1)[1]
    assert mounts[config_path] == dh.PROMETHEUS_CONFIG
    config = yaml.safe_load(dh.PROMETHEUS_CONFIG.read_text())
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        (host_dir,) = [h for c, h in mounts.items() if in_container.startswith(c + "/")]
        assert host_dir / Path(in_container).name == dh.RULES_FILE
    # the config's host names are the compose services
    hosts = {t.split(":")[0] for job in config["scrape_configs"]
             for t in job["static_configs"][0]["targets"]}
    hosts |= {r["replacement"].split(":")[0] for job in config["scrape_configs"]
              for r in job.get("relabel_configs", []) if r.get("target_label") == "__address__"}
    hosts -= set(yaml.safe_load(dh.PROMETHEUS_CONFIG.read_text())["scrape_configs"][1]
                 ["static_configs"][0]["targets"])  # /probe targets are portal names
    hosts.add(config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
              .split(":")[0])
    assert hosts <= set(services), hosts
    am_mounts = bind_mounts(services["alertmanager"])
    assert dh.ALERTMANAGER_CONFIG in am_mounts.values()


def test_compose_grafana_provisioning() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = bind_mounts(grafana)
    prov = dh.DEPLOY / "grafana" / "provisioning"
    assert mounts["/etc/grafana/provisioning/datasources"] == prov / "datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == prov / "dashboards"
    provider = yaml.safe_load((prov / "dashboards" / "docspace.yml").read_text())["providers"][0]
    dashboards = [c for c, h in mounts.items() if h == dh.DASHBOARD]
    assert dashboards and dashboards[0].startswith(provider["options"]["path"] + "/")
    source = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


# --- Kubernetes -------------------------------------------------------------------------

EXPECTED_KINDS = {
    "deployment.yaml": ("apps/v1", "Deployment"),
    "service.yaml": ("v1", "Service"),
    "configmap.yaml": ("v1", "ConfigMap"),
    "secret.example.yaml": ("v1", "Secret"),
    "servicemonitor.yaml": ("monitoring.coreos.com/v1", "ServiceMonitor"),
    "probe.yaml": ("monitoring.coreos.com/v1", "Probe"),
    "prometheusrule.yaml": ("monitoring.coreos.com/v1", "PrometheusRule"),
    "scrapeconfig.yaml": ("monitoring.coreos.com/v1alpha1", "ScrapeConfig"),
    "kustomization.yaml": ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}


def manifest(name: str) -> dict[str, Any]:
    (doc,) = list(yaml.safe_load_all((K8S / name).read_text()))
    return dict(doc)


def container() -> dict[str, Any]:
    (c,) = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_every_manifest_parses_with_kind_and_metadata() -> None:
    files = {p.name for p in K8S.glob("*.yaml")}
    assert files == set(EXPECTED_KINDS)
    for name, (api_version, kind) in EXPECTED_KINDS.items():
        doc = manifest(name)
        assert (doc["apiVersion"], doc["kind"]) == (api_version, kind), name
        if kind != "Kustomization":
            assert doc["metadata"]["name"].startswith("docspace-backup-exporter"), name
            assert doc["metadata"]["namespace"] == "monitoring", name
            assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == \
                "docspace-backup-exporter"
    kustomization = manifest("kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]


def test_deployment_hardening_probes_and_resources() -> None:
    deploy = manifest("deployment.yaml")
    pod = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= \
        deploy["spec"]["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    assert pod["automountServiceAccountToken"] is False
    c = container()
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == UID and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": PORT}
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    assert f"--web.listen-address=:{PORT}" in c["args"]


def _mount_paths() -> dict[str, dict[str, Any]]:
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container()["volumeMounts"]}


def test_config_from_configmap_and_keys_from_secret_files() -> None:
    mounts = _mount_paths()
    config_arg = next(a for a in container()["args"] if a.startswith("--config.file="))
    config_path = Path(config_arg.split("=", 1)[1])
    cm_volume = mounts[str(config_path.parent)]
    assert cm_volume["configMap"]["name"] == manifest("configmap.yaml")["metadata"]["name"]
    config = yaml.safe_load(manifest("configmap.yaml")["data"][config_path.name])
    secret = manifest("secret.example.yaml")
    (secret_mount,) = [m for m, v in mounts.items() if "secret" in v]
    assert mounts[secret_mount]["secret"]["secretName"] == secret["metadata"]["name"]
    key_files = [p["api_key_file"] for p in config["portals"]]
    assert key_files
    for path in key_files:
        assert str(Path(path).parent) == secret_mount, path
        assert Path(path).name in secret["stringData"], path
    for portal in config["portals"]:
        assert not {"api_key", "token", "password"} & set(portal), "secrets belong in the Secret"


def test_configmap_config_passes_config_check(tmp_path: Path) -> None:
    """The ConfigMap's config.yaml, with the Secret's example keys as files, is valid for the
    exporter (`--config.check`)."""
    if not dh.exporter_available():
        dh.unavailable("the exporter package (exporter/cli.py) does not exist yet")
    (secret_mount,) = [m for m, v in _mount_paths().items() if "secret" in v]
    for key, value in manifest("secret.example.yaml")["stringData"].items():
        (tmp_path / key).write_text(value + "\n")
    text = manifest("configmap.yaml")["data"]["config.yaml"].replace(secret_mount, str(tmp_path))
    (tmp_path / "config.yaml").write_text(text)
    env = dict(os.environ, PYTHONPATH=str(dh.REPO), PYTHONDONTWRITEBYTECODE="1")
    result = dh.run([sys.executable, "-m", "exporter", "--config.check",
                     f"--config.file={tmp_path / 'config.yaml'}"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = text.replace("api_key_file", "api_key_fil", 1)
    (tmp_path / "broken.yaml").write_text(broken)
    result = dh.run([sys.executable, "-m", "exporter", "--config.check",
                     f"--config.file={tmp_path / 'broken.yaml'}"], cwd=tmp_path, env=env)
    assert result.returncode == 1


def test_service_and_monitors_select_the_exporter() -> None:
    service = manifest("service.yaml")
    pod_labels = manifest("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", PORT, "http")
    monitor = manifest("servicemonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert re.fullmatch(".*docspace.*", service["metadata"]["name"])  # rules' job regex
    probe = manifest("probe.yaml")["spec"]
    assert probe["prober"]["path"] == "/probe"
    assert probe["prober"]["url"] == (f"{service['metadata']['name']}."
                                      f"{service['metadata']['namespace']}.svc:{PORT}")
    config = yaml.safe_load(manifest("configmap.yaml")["data"]["config.yaml"])
    assert probe["targets"]["staticConfig"]["static"] == [p["name"] for p in config["portals"]]
    for spec in (endpoint, probe):
        assert int(spec["scrapeTimeout"].rstrip("s")) - 0.5 > 10


def test_prometheusrule_groups_equal_the_rules_file() -> None:
    rule = manifest("prometheusrule.yaml")
    rules_file = yaml.safe_load(dh.RULES_FILE.read_text())
    assert rule["spec"]["groups"] == rules_file["groups"]
    assert set(rule["spec"]) == {"groups"}


def test_prometheusrule_is_the_generators_output() -> None:
    spec = importlib.util.spec_from_file_location("generate_prometheusrule",
                                                  K8S / "generate_prometheusrule.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == (K8S / "prometheusrule.yaml").read_text(), \
        "run: python deploy/kubernetes/generate_prometheusrule.py"


# --- systemd ----------------------------------------------------------------------------


def unit_directives() -> dict[str, list[str]]:
    text = re.sub(r"\\\n\s*", " ", UNIT.read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_unit_hardening() -> None:
    d = unit_directives()
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "CapabilityBoundingSet": "", "DynamicUser": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    (start,) = d["ExecStart"]
    assert start.split()[0].endswith("/docspace-backup-exporter")
    assert "--config.file=/etc/docspace-backup-exporter/config.yaml" in start
    assert f":{PORT}" in start
    assert d["WantedBy"] == ["multi-user.target"]


def _unit_with_stub_binary(tmp_path: Path) -> Path:
    """The unit, with ExecStart's binary replaced by an executable stub: verify checks that
    the binary exists, and the real one is only there after installation."""
    binary = unit_directives()["ExecStart"][0].split()[0]
    stub = tmp_path / "bin" / "docspace-backup-exporter"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(binary, str(stub)))
    return unit


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # .ci/run installs systemd; like every tool, it fails in CI when missing
    tool = dh.binary("systemd-analyze")
    unit = _unit_with_stub_binary(tmp_path)
    result = dh.run([tool, "verify", str(unit)], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # unknown keys and bad values are only warnings: the output must be empty
    assert output.strip() == "", output
    bad = tmp_path / "bad" / UNIT.name
    bad.parent.mkdir()
    bad.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    warned = dh.run([tool, "verify", str(bad)], cwd=tmp_path)
    assert "Unknown key" in warned.stdout + warned.stderr


def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    # .ci/run installs systemd; like every tool, it fails in CI when missing
    tool = dh.binary("systemd-analyze")
    unit = _unit_with_stub_binary(tmp_path)
    result = dh.run([tool, "security", "--offline=yes", "--no-pager", str(unit)], cwd=tmp_path)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    if match is None and "offline" in result.stderr:
        dh.unavailable("this systemd-analyze cannot assess a unit offline")
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_systemd_credentials_config_example(tmp_path: Path) -> None:
    """The README/unit recipe: api_key_file: ${CREDENTIALS_DIRECTORY}/<credential name>."""
    if not dh.exporter_available():
        dh.unavailable("the exporter package (exporter/cli.py) does not exist yet")
    (credential,) = unit_directives()["LoadCredential"]
    name = credential.split(":", 1)[0]
    (tmp_path / name).write_text("sk-test\n")
    config = tmp_path / "config.yaml"
    config.write_text("portals:\n  - name: main\n    url: https://docspace.example.com\n"
                      f"    api_key_file: ${{CREDENTIALS_DIRECTORY}}/{name}\n")
    env = dict(os.environ, PYTHONPATH=str(dh.REPO), PYTHONDONTWRITEBYTECODE="1",
               CREDENTIALS_DIRECTORY=str(tmp_path))
    result = dh.run([sys.executable, "-m", "exporter", "--config.check",
                     f"--config.file={config}"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_port_is_consistent() -> None:
    assert f"EXPOSE {PORT}" in DOCKERFILE.read_text()
    assert f":{PORT}" in UNIT.read_text()
    assert any(fnmatch.fnmatch(t, f"*:{PORT}") for t in
               yaml.safe_load(dh.PROMETHEUS_CONFIG.read_text())["scrape_configs"][0]
               ["static_configs"][0]["targets"])
