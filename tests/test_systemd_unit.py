"""systemd/orderwatch.service: the directives operators rely on, and `systemd-analyze` on it.

`systemd-analyze verify` needs the ExecStart= binary to exist where it runs, so the tests
verify a copy in tmp_path whose ExecStart= points at a stub executable; the rest of the unit
is byte-for-byte the shipped one."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "orderwatch.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian: apt-get install systemd)"
)
HARDENING = {
    **dict.fromkeys(
        [
            "ProtectHome",
            "PrivateTmp",
            "PrivateDevices",
            "PrivateUsers",
            "NoNewPrivileges",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
            "ProtectClock",
            "ProtectHostname",
            "RestrictNamespaces",
            "RestrictRealtime",
            "RestrictSUIDSGID",
            "LockPersonality",
            "MemoryDenyWriteExecute",
        ],
        "yes",
    ),
    "ProtectSystem": "strict",
    "CapabilityBoundingSet": "",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
}


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def verifiable_copy(tmp_path: Path) -> Path:
    stub = tmp_path / "orderwatch"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text, n = re.subn(r"^ExecStart=\S+", f"ExecStart={stub}", UNIT.read_text(), flags=re.M)
    assert n == 1
    unit = tmp_path / "orderwatch.service"
    unit.write_text(text)
    return unit


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=120)


def test_unit_declares_the_operational_contract() -> None:
    """Type=notify with a SIGHUP reload, watchdog, state dir 0700, credentials, config path."""
    d = directives()
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "ExecStart": ["/usr/local/bin/orderwatch run"],
        "ExecReload": ["/bin/sh -c 'kill -s HUP ${MAINPID}'"],
        "WatchdogSec": ["30s"],
        "Restart": ["on-failure"],
        "TimeoutStopSec": ["15s"],
        "DynamicUser": ["yes"],
        "StateDirectory": ["orderwatch"],
        "StateDirectoryMode": ["0700"],
        "ConfigurationDirectory": ["orderwatch"],
        "UMask": ["0077"],
        "Environment": ["ORDERWATCH_CONFIG=/etc/orderwatch/orderwatch.yaml"],
        "LoadCredential": [
            "runa:/etc/orderwatch/runa.key",
            "webhook:/etc/orderwatch/webhook.secret",
        ],
    }
    assert {k: d.get(k) for k in expected} == expected


def test_unit_is_hardened_but_keeps_the_network() -> None:
    """The sandboxing directives are set; nothing cuts the daemon off from the Runa API."""
    d = directives()
    assert {k: d.get(k) for k in HARDENING} == {k: [v] for k, v in HARDENING.items()}
    assert "@system-service" in d["SystemCallFilter"]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "IPAddressDeny" not in d and "PrivateNetwork" not in d


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 and prints nothing on stderr (unknown keys only warn)."""
    r = analyze("verify", str(verifiable_copy(tmp_path)))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr


@needs_analyze
def test_systemd_analyze_security_score(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=true` rates the unit; printed, and in the OK band."""
    r = analyze("security", "--offline=true", "--no-pager", str(verifiable_copy(tmp_path)))
    score = re.search(r"Overall exposure level for \S+: ([\d.]+ \w+)", r.stdout)
    assert r.returncode == 0 and score, r.stdout + r.stderr
    print(f"systemd-analyze security: {score.group(1)}")
    assert score.group(1).endswith(" OK"), "the unit's exposure is above systemd's OK band"


def test_the_readme_installs_a_config_the_dynamic_user_can_read() -> None:
    """With DynamicUser= and no capabilities the service runs as a fresh uid, and systemd
    never chowns ConfigurationDirectory=: a config installed 0600 root was unreadable and
    the unit failed at start. It holds no secret (those come by LoadCredential=), so the
    install steps (docs/operations.md) install it 0644."""
    readme = (UNIT.parents[1] / "docs" / "operations.md").read_text()
    (line,) = [x for x in readme.splitlines() if "orderwatch.systemd.yaml /etc/" in x]
    mode = re.search(r"-m (0\d{3})", line)
    assert directives()["DynamicUser"] == ["yes"]
    assert mode is not None and int(mode.group(1), 8) & 0o004, line
    config = (UNIT.parents[1] / "config" / "orderwatch.systemd.yaml").read_text()
    assert re.search(r"^\s*(api_key|secret|state_dsn|token):", config, re.M) is None
