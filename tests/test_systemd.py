"""systemd: the unit file and the daemon's side of the protocol.

systemd/orderwatch.service: the directives operators rely on, `systemd-analyze` on it, and its
ExecReload= run for real (the command line as systemd would exec it, $MAINPID put in by
systemd's rules, against a real child process that records SIGHUP). On a minimal Debian without
procps `/bin/kill` does not exist and `systemctl reload` failed with status=203/EXEC; the reload
must need nothing but what the unit itself names. `systemd-analyze verify` needs the ExecStart=
binary to exist where it runs, so the tests verify a copy in tmp_path whose ExecStart= points at
a stub executable; the rest of the unit is byte-for-byte the shipped one.

A real child process speaks the notify protocol (READY, STATUS, WATCHDOG, STOPPING, RELOADING)
on a real datagram socket."""

from __future__ import annotations

import asyncio
import itertools
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orderwatch.devtools.simulator import SimOptions, running_simulator

from harness import API_KEY, SECRET, child_env, write_config


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    async def until(self, prefix: str, timeout: float = 20) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for m in self.messages:
                if any(line.startswith(prefix) for line in m.splitlines()):
                    return m
            if loop.time() > deadline:
                raise AssertionError(f"no {prefix} in {self.messages}")
            try:
                self.messages.append((await loop.sock_recv(self.sock, 4096)).decode())
            except BlockingIOError:
                await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_notify_protocol_with_a_child_daemon(tmp_path: Path) -> None:
    """READY=1 after start, STATUS= with counts, WATCHDOG=1 at half WATCHDOG_USEC,
    RELOADING=1 with MONOTONIC_USEC on SIGHUP, STOPPING=1 on SIGTERM, then exit 0."""
    sock = NotifySocket(tmp_path / "notify.sock")
    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        cfg = write_config(tmp_path, rs.base_url)
        env = {
            **child_env(),
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "WATCHDOG_USEC": "2000000",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orderwatch",
            "run",
            "-c",
            str(cfg),
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await sock.until("READY=1")
            assert "pending 0" in await sock.until("STATUS=")
            await sock.until("WATCHDOG=1")
            proc.send_signal(signal.SIGHUP)
            reloading = await sock.until("RELOADING=1")
            assert "MONOTONIC_USEC=" in reloading
            proc.send_signal(signal.SIGTERM)
            await sock.until("STOPPING=1")
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            sock.sock.close()


@pytest.mark.slow
async def test_watchdog_is_fed_while_the_store_hangs(tmp_path: Path) -> None:
    """A store that hangs (another process holds SQLite's write lock; PostgreSQL down or a
    long `LOCK TABLE`) is reported, not a stalled daemon: the event loop still runs. Each
    claim waited 10 s for the lock, the scheduler's heartbeat went stale after 8 s and the
    pings stopped, so systemd's watchdog would have killed a daemon that was only waiting."""
    import sqlite3
    import sys
    import time

    from orderwatch.store.sqlite import DB_NAME

    sock = NotifySocket(tmp_path / "notify.sock")
    async with running_simulator(SimOptions(api_key=API_KEY, complete_after=3600.0)) as rs:
        polling = {"initial_delay": "0s", "max_interval": "200ms"}
        cfg = write_config(tmp_path, rs.base_url, polling=polling, watchlists=[])
        env = {
            **child_env(),
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "WATCHDOG_USEC": "2000000",
        }
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "orderwatch", "run", "-c", str(cfg)),
            env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )
        blocker = None
        try:
            await sock.until("READY=1")
            add = [sys.executable, "-m", "orderwatch", "add", "-c", str(cfg), "O-HANG1", "O-HANG2"]
            adder = await asyncio.create_subprocess_exec(*add, env=child_env())
            assert await adder.wait() == 0
            await asyncio.sleep(1.0)  # polled a few times
            blocker = sqlite3.connect(tmp_path / "state" / DB_NAME, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            loop = asyncio.get_running_loop()
            pings = [time.monotonic()]  # the window's start, then every ping in it
            end = loop.time() + 14.0
            while (left := end - loop.time()) > 0:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock.sock, 4096), left)
                except TimeoutError:
                    break
                if "WATCHDOG=1" in data.decode().splitlines():
                    pings.append(time.monotonic())
            pings.append(time.monotonic())  # and its end
            gaps = [round(b - a, 1) for a, b in itertools.pairwise(pings)]
            assert max(gaps) < 2.0, f"gaps between pings over 14 s: {gaps}"
        finally:
            if blocker is not None:
                blocker.execute("ROLLBACK")
                blocker.close()
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            sock.sock.close()


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


RECORDER = (
    "import signal\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})\n"
    "print('ready', flush=True)\n"
    "signal.sigwait({signal.SIGHUP})\n"
    "print('HUP', flush=True)\n"
)


def exec_reload_line() -> str:
    lines: list[str] = re.findall(r"^ExecReload=(.*)$", UNIT.read_text(), re.M)
    (line,) = lines
    return line.strip()


def systemd_argv(line: str, env: dict[str, str]) -> list[str]:
    """argv as systemd execs it (systemd.service(5), "Command lines"): words split and quotes
    removed as by a shell; a word that is exactly `$NAME` becomes the variable's value split
    at whitespace; `${NAME}` inside a word becomes its value as-is; `$$` a literal `$`; any
    other `$` stays for the program to see."""
    assert line[0] not in "-@:+!|", "a prefix this emulation does not model"
    argv: list[str] = []
    for word in shlex.split(line):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            argv.extend(env.get(whole.group(1), "").split())
            continue
        argv.append(
            re.sub(
                r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), ""),
                word,
            )
        )
    return argv


def no_kill_path(tmp_path: Path) -> tuple[str, Path]:
    """A PATH with only a `kill` that signals nothing and leaves a mark: procps's is not there
    and, were an external kill looked up, this one would be found and the test would see it."""
    bin_dir, mark = tmp_path / "bin", tmp_path / "external-kill-ran"
    bin_dir.mkdir()
    fake = bin_dir / "kill"
    fake.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(mark))}\nexit 97\n")
    fake.chmod(0o755)
    return str(bin_dir), mark


def test_exec_reload_names_no_kill_binary() -> None:
    """ExecReload= starts an absolute program that exists everywhere systemd does (/bin/sh),
    not /bin/kill or any other kill executable."""
    argv = shlex.split(exec_reload_line())
    assert argv[0] == "/bin/sh" and Path(argv[0]).exists()
    words = [token for word in argv for token in shlex.split(word)]  # and the -c script's
    assert not any(Path(w).name == "kill" and "/" in w for w in words), argv


def test_exec_reload_delivers_sighup_to_the_main_pid_without_procps(tmp_path: Path) -> None:
    """With $MAINPID a live child's PID and no kill executable to be found, the command exits
    0 and the child receives SIGHUP (the shell's builtin kill sent it)."""
    path, mark = no_kill_path(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", RECORDER], stdout=subprocess.PIPE, text=True, env={}
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        # systemd both substitutes ${MAINPID} and sets it in a control process's environment.
        env = {"MAINPID": str(child.pid), "PATH": path}
        argv = systemd_argv(exec_reload_line(), env)
        reload = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert reload.returncode == 0, reload.stderr
        assert child.wait(timeout=30) == 0
        assert child.stdout.read() == "HUP\n"
        assert not mark.exists(), "an external kill was run"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_exec_reload_fails_when_the_main_pid_is_unknown(tmp_path: Path) -> None:
    """Without $MAINPID (systemd knows no main process) kill gets no operand at all, not a
    PID such as 1, 0 or -1 that would signal something else, and the reload exits non-zero,
    so `systemctl reload` reports it."""
    path, mark = no_kill_path(tmp_path)
    env = {"PATH": path}
    argv = systemd_argv(exec_reload_line(), env)
    # Checked before it runs: a line that expanded to an operand here would signal it.
    assert argv[:2] == ["/bin/sh", "-c"] and shlex.split(argv[2]) == ["kill", "-s", "HUP"]
    reload = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert reload.returncode != 0
    assert not mark.exists()


def test_the_shipped_push_block_and_its_credential_line_fit_together(tmp_path: Path) -> None:
    """The systemd config had no push section: uncommented, the one shipped there checks out
    with the credential the unit's commented LoadCredential= line names."""
    (line,) = [x for x in UNIT.read_text().splitlines() if "runa-push" in x]
    assert line.startswith("#LoadCredential=runa-push:")
    shipped = (UNIT.parents[1] / "config" / "orderwatch.systemd.yaml").read_text()
    config = re.sub(r"^# (push:|  \S)", r"\1", shipped, flags=re.M)
    assert "\npush:\n" in config and "${CREDENTIALS_DIRECTORY}/runa-push" in config
    config = config.replace("/var/lib/orderwatch", str(tmp_path))
    (tmp_path / "watchlist.txt").write_text("")
    path = tmp_path / "orderwatch.yaml"
    path.write_text(config)
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, value in (("runa", API_KEY), ("webhook", SECRET), ("runa-push", SECRET)):
        (creds / name).write_text(value + "\n")
    env = {**child_env(), "CREDENTIALS_DIRECTORY": str(creds)}

    def check() -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "orderwatch", "check-config", "-c", str(path)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)

    r = check()
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    (creds / "runa-push").unlink()  # the push block is read: without its credential, refused
    r = check()
    assert r.returncode == 2 and "push.secret_file" in r.stderr, r.stderr
