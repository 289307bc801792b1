"""The documentation stands on its own: every relative link in README.md, docs/*.md and
benchmarks/README.md resolves inside the repository (in-page anchors included), nothing points
outside it, and the README's simulator recipe works as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests import deploy_helpers as dh

DOCS = [dh.README, *sorted((dh.REPO / "docs").glob("*.md")), dh.REPO / "benchmarks" / "README.md"]
# [text](target) and [text]: target, outside code blocks and inline code.
INLINE = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)


def _unfenced(text: str) -> str:
    return re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)


def _prose(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", _unfenced(text))


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation (backquotes too) dropped, spaces to
    hyphens: "### HTTP service discovery (`/sd`)" is #http-service-discovery-sd."""
    out: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _unfenced(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n, candidate = 0, slug
        while candidate in out:
            n += 1
            candidate = f"{slug}-{n}"
        out.add(candidate)
    return out


def links(path: Path) -> list[str]:
    prose = _prose(path.read_text(encoding="utf-8"))
    return INLINE.findall(prose) + REFERENCE.findall(prose)


def test_the_documents_exist() -> None:
    assert all(p.is_file() for p in DOCS), DOCS
    assert (dh.REPO / "docs" / "docspace-api.md") in DOCS


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(dh.REPO)))
def test_every_relative_link_resolves(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...
            continue
        where, _, anchor = target.partition("#")
        dest = (doc.parent / where).resolve() if where else doc
        if not dest.is_relative_to(dh.REPO) or not dest.exists():
            broken.append(f"{target} (no such file in the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(
                dest.read_text(encoding="utf-8") if where else text):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.name}: {broken}"


@pytest.mark.parametrize("doc", [d for d in DOCS if d.parent != dh.REPO / "benchmarks"],
                         ids=lambda p: str(p.relative_to(dh.REPO)))
def test_nothing_points_outside_the_repository(doc: Path) -> None:
    """No pointer outside the repository and none of the authors' internal words."""
    text = doc.read_text(encoding="utf-8")
    for outside in ("../shared", "/work/", "contract.md", "contract's", "owned by"):
        assert outside not in text, f"{doc.name} mentions {outside!r}"
    if doc == dh.README:
        assert "<!--" not in text, "README: no HTML comments (notes for the authors)"
        # A file the README names in backquotes exists too (e.g. `docs/docspace-api.md`).
        for name in re.findall(r"`([\w./-]+\.md)`", text):
            assert (dh.REPO / name).is_file() or (dh.REPO / "docs" / name).is_file(), name


def test_the_readme_simulator_recipe_works(tmp_path: Path) -> None:
    """`python -m docspace_simulator ... --write-config` writes a config the exporter accepts
    and serves: the commands of the README's simulator section, on free loopback ports."""
    readme = dh.README.read_text(encoding="utf-8")
    assert "python3 -m docspace_simulator --portals 200 --scenario stale" in readme
    assert "--write-config sim.yaml" in readme
    env = dict(os.environ, PYTHONPATH=str(dh.REPO), PYTHONDONTWRITEBYTECODE="1")
    config = tmp_path / "sim.yaml"
    with dh.children() as started:
        sim = dh.Child("simulator", [sys.executable, "-m", "docspace_simulator", "--portals", "3",
                                     "--scenario", "stale", "--write-config", str(config)],
                       tmp_path / "simulator.log", cwd=tmp_path, env=env)
        started.append(sim)
        dh.wait_until(lambda: "listening on http://127.0.0.1:" in sim.log_tail(),
                      timeout=30, interval=0.1, what="the simulator")
        checked = subprocess.run([sys.executable, "-m", "exporter", "--config.check",
                                  "--config.file", str(config)], capture_output=True, text=True,
                                 env=env, timeout=60, check=False)
        assert checked.returncode == 0, checked.stderr
        assert "OK, 3 portal(s): p0001, p0002, p0003" in checked.stdout
        port = dh.free_port()
        exporter = dh.Child("exporter", [sys.executable, "-m", "exporter", "--config.file",
                                         str(config), "--web.listen-address", f"127.0.0.1:{port}"],
                            tmp_path / "exporter.log", cwd=tmp_path, env=env)
        started.append(exporter)
        exporter.wait_http(f"http://127.0.0.1:{port}/-/ready")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            body = r.read().decode()
    ups = re.findall(r'^docspace_up\{portal="(p\d+)"\} (\S+)$', body, re.M)
    assert sorted(ups) == [("p0001", "1.0"), ("p0002", "1.0"), ("p0003", "1.0")], body[:500]
