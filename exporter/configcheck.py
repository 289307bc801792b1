"""Problems: what collects the problems of a config document, each with its YAML path, so
every one is reported at once; and the converters the field tables in config.py name."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter.schedule import zone

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: Any) -> float:
    """`10`, `2.5`, `500ms`, `10s`, `1m`, `1h` -> seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 10s, 500ms or 1m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = DURATION_RE.match(value)
        if not m:
            raise ValueError(f"must be a duration like 10s, 500ms or 1m, not {value!r}")
        number = float(m.group(1))
        seconds = number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]
    else:
        raise ValueError("must be a duration like 10s, 500ms or 1m")
    if not seconds > 0:
        raise ValueError("must be greater than 0")
    return seconds


class Problems:
    """The problems found while walking a config document, each with its YAML path, so all
    of them are reported at once. Its converters report into it and return None (or a
    harmless stand-in) when a value is wrong; any problem fails the whole config."""

    def __init__(self, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.base_dir = base_dir
        self.environ = environ
        self.problems: list[str] = []
        # Paths whose ${VAR} is unset: that is their one problem, not also "must not be
        # empty" or "has no host" about what is left.
        self._unresolved: set[str] = set()

    def problem(self, path: str, msg: str) -> None:
        entry = f"{path}: {msg}"
        # A `defaults` value is checked once per portal: report it once.
        if path not in self._unresolved and entry not in self.problems:
            self.problems.append(entry)

    def expand(self, path: str, value: Any) -> Any:
        if not isinstance(value, str):
            return value

        def sub(m: re.Match[str]) -> str:
            var = m.group(1)
            if var not in self.environ:
                self.problem(path, f"environment variable {var} is not set")
                self._unresolved.add(path)
                return ""
            return self.environ[var]

        return ENV_RE.sub(sub, value)

    def read_secret_file(self, path: str, filename: Any) -> str | None:
        if not isinstance(filename, str) or not filename:
            self.problem(path, "must be a file path")
            return None
        p = Path(filename)
        if not p.is_absolute():
            p = self.base_dir / p
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            # The OS message names the file and why (no such file, permission) but
            # never its contents.
            self.problem(path, f"cannot read {filename}: {exc.strerror or exc}")
            return None
        except UnicodeDecodeError:
            self.problem(path, f"{filename} is not UTF-8 text")
            return None
        value = text.rstrip("\r\n")
        if not value.strip():
            self.problem(path, f"{filename} is empty")
            return None
        return value

    # -- converters: (path, value) -> the checked value; no message ever echoes a value
    # that could be a secret.

    def string(self, path: str, value: Any) -> str | None:
        if not isinstance(value, str):
            self.problem(path, "must be a string")
            return None
        if not value:
            self.problem(path, "must not be empty")
            return None
        return value

    def boolean(self, path: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.problem(path, "must be true or false")
        return False

    def positive_int(self, path: str, value: Any) -> int | None:
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            value = int(value)  # ASCII only: str.isdigit() is also true for '²' and '٣'
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.problem(path, "must be a whole number of at least 1")
            return None
        return value

    def duration(self, path: str, value: Any) -> float | None:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.problem(path, str(exc))
            return None

    def name(self, path: str, value: Any) -> str | None:
        name = self.string(path, value)
        if name is not None and not NAME_RE.match(name):
            self.problem(path, f"{name!r} may only contain letters, digits, _ . -")
            return None
        return name

    def url(self, path: str, value: Any) -> str | None:
        url = self.string(path, value)
        if url is None:
            return None
        try:
            parts = urlsplit(url)
            if "@" in parts.netloc:
                # Credentials in a URL would end up in logs and labels; they belong in
                # api_key & co.
                self.problem(path, "must not contain user:password@; use the auth keys")
                return None
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError:
            self.problem(path, "is not a valid URL")
            return None
        if parts.scheme not in ("http", "https"):
            self.problem(path, "must start with http:// or https://")
            return None
        if not parts.hostname:
            self.problem(path, "has no host")
            return None
        if parts.query or parts.fragment:
            self.problem(path, "must not have a query or fragment")
            return None
        return url.rstrip("/")

    def ca_file(self, path: str, value: Any) -> str | None:
        ca_file = self.string(path, value)
        if ca_file is None:
            return None
        ca_path = Path(ca_file)
        if not ca_path.is_absolute():
            ca_path = self.base_dir / ca_path
        try:
            with open(ca_path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            # Why, as for the *_file secrets: no such file, a directory, permission.
            self.problem(path, f"cannot read {ca_file}: {exc.strerror or exc}")
        return str(ca_path)

    def timezone(self, path: str, value: Any) -> str | None:
        name = self.string(path, value)
        if name is not None and zone(name) is None:
            self.problem(path, f"{name!r} is not an IANA time zone (like Europe/Berlin) "
                         "known to this system's tz database")
            return None
        return name
