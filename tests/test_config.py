"""Config loading: one YAML fixture per failure mode, every problem with its path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import (
    ApiKeyAuth,
    ConfigError,
    PasswordAuth,
    TokenAuth,
    load_config,
    parse_duration,
)

CONF = Path(__file__).parent / "conffiles"
KEY = "sk-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
ENV = {"DOCSPACE_TOKEN": "tok-from-env-1234"}


def problems_of(name: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(CONF / name, environ=environ if environ is not None else ENV)
    return info.value.problems


def test_valid_config() -> None:
    cfg = load_config(CONF / "valid.yaml", environ=ENV)
    assert [p.name for p in cfg.portals] == ["main", "second.portal_2", "login"]
    main, second, login = cfg.portals
    assert isinstance(main.auth, ApiKeyAuth) and main.auth.key.reveal() == KEY  # newline stripped
    assert main.timeout == 5.0 and main.history is True and main.dump is False
    assert isinstance(second.auth, TokenAuth)
    assert second.auth.token.reveal() == ENV["DOCSPACE_TOKEN"]
    assert second.url == "http://docspace2.example.com:8080/sub"  # trailing slash dropped
    assert second.timeout == 0.5 and second.dump is True
    assert isinstance(login.auth, PasswordAuth)
    assert login.auth.username == "admin@example.com"
    assert login.auth.password.reveal() == "p@ss word"  # inner space kept, newlines stripped
    assert login.history is False and login.insecure_skip_verify is True
    assert (cfg.max_concurrency, cfg.max_requests_per_host) == (16, 4)


def test_secrets_are_not_in_repr() -> None:
    cfg = load_config(CONF / "valid.yaml", environ=ENV)
    text = repr(cfg) + str(cfg) + "".join(repr(p) + repr(p.auth) for p in cfg.portals)
    for secret in (KEY, ENV["DOCSPACE_TOKEN"], "p@ss word"):
        assert secret not in text
    assert "redacted" in repr(cfg.portals[0].auth)


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("empty.yaml", ["(root): the config is empty"]),
        ("not_a_mapping.yaml", ["(root): must be a mapping"]),
        ("invalid_yaml.yaml", ["invalid YAML at line"]),
        ("no_portals.yaml", ["portals: is empty"]),
        ("portal_not_mapping.yaml", ["portals[0]: must be a mapping"]),
        ("unknown_keys.yaml", ["portal: unknown key", "portals[0].histroy: unknown key",
                               "defaults.timeuot: unknown key"]),
        ("duplicate_names.yaml", ["portals[2].name: duplicate name 'main' (also portals[0])"]),
        ("bad_names.yaml", ["portals[0].name: 'has space' may only contain",
                            "portals[1].name: must not be empty", "portals[2].name: is required",
                            "portals[3].name: must be a string"]),
        ("bad_urls.yaml", ["portals[0].url: must start with http:// or https://",
                           "portals[1].url: must not have a query",
                           "portals[2].url: must not contain user:password@",
                           "portals[3].url: has no host", "portals[4].url: is not a valid URL",
                           "portals[5].url: is required"]),
        ("auth_missing.yaml", ["portals[0]: needs one auth method",
                               "portals[1].password: is required with username",
                               "portals[2].username: is required with password"]),
        ("auth_double.yaml", ["portals[0]: has more than one auth method (api_key, token)",
                              "portals[1].api_key: set either api_key or api_key_file, not both",
                              "portals[2]: has more than one auth method"]),
        ("unreadable_files.yaml", ["portals[0].api_key_file: cannot read secrets/does-not-exist",
                                   "portals[1].password_file: cannot read /nonexistent/pw",
                                   "portals[2].ca_file: cannot read missing-ca.pem: No such file"]),
        ("ca_file_directory.yaml", ["portals[0].ca_file: cannot read secrets: Is a directory"]),
        ("duplicate_keys.yaml", ["defaults.timeout: duplicate key (line 5; first on line 4)",
                                 "portals[0].url: duplicate key (line 9; first on line 8)",
                                 "max_concurrency: duplicate key (line 11; first on line 2)"]),
        ("env_unset.yaml", ["portals[0].url: environment variable DOCSPACE_HOST_UNSET_FOR_TEST",
                            "portals[0].api_key: environment variable "
                            "DOCSPACE_KEY_UNSET_FOR_TEST"]),
        ("bad_values.yaml", ["defaults.timeout: must be a duration", "portals[0].timeout: must be",
                             "portals[0].dump: must be true or false",
                             "portals[1].api_key: a DocSpace API key starts with sk-",
                             "portals[1].history: must be true or false",
                             "max_concurrency: must be a whole number"]),
    ],
)
def test_config_failure_modes(fixture: str, expected: list[str]) -> None:
    problems = problems_of(fixture, environ={})
    for want in expected:
        assert any(want in p for p in problems), (want, problems)


def test_duplicate_keys_are_errors_even_when_the_rest_is_valid() -> None:
    problems = problems_of("duplicate_keys.yaml")
    assert len(problems) == 3, problems  # nothing else is wrong with the file
    assert not any("https://b.example.com" in p for p in problems)  # values stay out


def test_duplicate_keys_beside_other_problems_and_through_aliases(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {name: a, name: b}\nportals:\n  - *b\n  - *b\n"
                    "  - {<<: *b, url: x, url: y}\n")
    problems = problems_of(str(path))
    assert [p for p in problems if "duplicate key" in p] == [
        "base.name: duplicate key (line 1; first on line 1); each key may appear once",
        "portals[2].url: duplicate key (line 5; first on line 5); each key may appear once"]
    assert "base: unknown key" in problems  # the other problems are still reported


def test_unset_variable_is_one_problem_per_value() -> None:
    """`${UNSET}` is reported once, not again as the empty value it leaves behind."""
    problems = problems_of("env_unset.yaml", environ={})
    assert problems == [
        "portals[0].url: environment variable DOCSPACE_HOST_UNSET_FOR_TEST is not set",
        "portals[0].api_key: environment variable DOCSPACE_KEY_UNSET_FOR_TEST is not set"]


def test_every_problem_reported_at_once() -> None:
    # bad_urls.yaml has six broken portals: all six are reported, not just the first.
    assert len(problems_of("bad_urls.yaml")) == 6


def test_secret_values_never_in_problems() -> None:
    problems = "\n".join(problems_of("bad_urls.yaml") + problems_of("bad_values.yaml")
                         + problems_of("auth_double.yaml"))
    assert "hunter2" not in problems
    assert "not-an-sk-key" not in problems
    assert "only-a-password" not in problems


@pytest.mark.parametrize(("text", "seconds"), [(10, 10.0), (2.5, 2.5), ("500ms", 0.5),
                                                ("10s", 10.0), ("1m", 60.0), ("1h", 3600.0),
                                                ("7", 7.0)])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 minutes", "-1s", 0, True, None, [1]])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True,
                          text=True, timeout=60, env=full_env)


def test_config_check_valid_exits_0() -> None:
    r = run_cli("--config.check", "--config.file", str(CONF / "valid.yaml"), env=ENV)
    assert r.returncode == 0, r.stderr
    assert "3 portal(s)" in r.stdout
    assert KEY not in r.stdout + r.stderr


def test_config_check_invalid_prints_every_problem_and_exits_1() -> None:
    r = run_cli("--config.check", "--config.file", str(CONF / "bad_urls.yaml"))
    assert r.returncode == 1
    assert "6 problem(s)" in r.stderr
    for i in range(6):
        assert f"portals[{i}].url" in r.stderr
    assert "hunter2" not in r.stdout + r.stderr


def test_bad_config_at_startup_exits_1_and_serves_nothing() -> None:
    r = run_cli("--config.file", str(CONF / "auth_double.yaml"),
                "--web.listen-address", "127.0.0.1:0")
    assert r.returncode == 1
    assert "portals[0]" in r.stderr and "listening" not in r.stderr


def test_config_example_is_valid_apart_from_its_secret_files() -> None:
    """The shipped example documents every key; only its placeholder files are missing."""
    root = Path(__file__).resolve().parent.parent
    with pytest.raises(ConfigError) as info:
        load_config(root / "config.example.yaml", environ={})
    assert info.value.problems
    for p in info.value.problems:
        assert "cannot read" in p, p
