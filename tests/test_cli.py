"""The command line as a user meets it: real child processes, exit codes, one-line errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from harness import API_KEY, REPO, SECRET, child_env


def ow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orderwatch", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=cwd,
        timeout=60,
    )


def config(tmp_path: Path, **extra: object) -> Path:
    cfg = {
        "runa": {"base_url": "http://127.0.0.1:9/v2", "api_key": API_KEY},
        "state_dir": str(tmp_path / "state"),
        "output_dir": str(tmp_path / "orders"),
        "admin": {"listen": None},
        **extra,
    }
    path = tmp_path / "ow.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_check_config_ok_and_broken(tmp_path: Path) -> None:
    """check-config exits 0 on a good config; 2 with one located line per problem."""
    good = config(tmp_path)
    assert ow("check-config", "-c", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("rate_limit:\n  requests_per_sec: 5\npolling:\n  max_interval: never\n")
    r = ow("check-config", "-c", str(bad))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"{bad}:2: rate_limit.requests_per_sec: unknown key 'requests_per_sec' "
        "(did you mean 'requests_per_second'?)",
        f"{bad}:4: polling.max_interval: invalid duration 'never': use e.g. 250ms, 30s, 5m, 2h, 3d",
    ]


@pytest.mark.slow
def test_check_config_refuses_what_run_would_refuse(tmp_path: Path) -> None:
    """No API key and a callback that cannot be imported: check-config said ok and `run`
    then exited 2; both are now check-config's errors, located at the config file (the
    callback first: it is found while the config is read, the key after)."""
    cfg = tmp_path / "nokey.yaml"
    cfg.write_text(yaml.safe_dump({"callbacks": ["orderwatch_no_such_module:on_final"]}))
    r = ow("check-config", "-c", str(cfg))
    assert r.returncode == 2, r.stdout
    assert r.stderr.startswith(f"{cfg}:2: callbacks[0]: cannot import orderwatch_no_such_module")
    cfg.write_text(yaml.safe_dump({"callbacks": ["asyncio:sleep"]}))
    r = ow("check-config", "-c", str(cfg))
    assert r.returncode == 2, r.stdout
    assert r.stderr.splitlines() == [f"{cfg}: runa.api_key: is required (or runa.api_key_file)"]


@pytest.mark.slow
def test_callbacks_that_cannot_be_loaded_are_located(tmp_path: Path) -> None:
    """Each callback that cannot be loaded is its own located line, as other config problems
    are (it was one unlocated line for the first of them, from check-config, run, wait and
    replay alike)."""
    cfg = tmp_path / "cb.yaml"
    cfg.write_text(
        f"runa:\n  base_url: http://127.0.0.1:9/v2\n  api_key: {API_KEY}\n"
        f"state_dir: {tmp_path / 'state'}\noutput_dir: {tmp_path / 'orders'}\n"
        "admin:\n  listen: null\n"
        "callbacks:\n"
        "  - asyncio:sleep\n"
        "  - json:dumps\n"
        "  - orderwatch_no_such_module:on_final\n"
        "  - os.path:nothing\n"
    )
    expected = [
        f"{cfg}:10: callbacks[1]: must be an async function (async def)",
        f"{cfg}:11: callbacks[2]: cannot import orderwatch_no_such_module:"
        " ModuleNotFoundError: No module named 'orderwatch_no_such_module'",
        f"{cfg}:12: callbacks[3]: module os.path has no nothing",
    ]
    for command in (["check-config"], ["run"], ["replay", "O-1"], ["wait", "O-1"]):
        r = ow(*command, "-c", str(cfg))
        assert (r.returncode, r.stderr.splitlines()) == (2, expected), command
    assert ow("add", "-c", str(cfg), "O-1").returncode == 0  # it runs nobody's code


@pytest.mark.slow
def test_no_traceback_for_user_mistakes(tmp_path: Path) -> None:
    """A missing config, a missing API key, a bad argument: one line, exit 2, no traceback."""
    r = ow("run", "-c", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "cannot read config" in r.stderr
    cfg = tmp_path / "nokey.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "s"),
                "admin": {"listen": None},
                "output_dir": str(tmp_path / "o"),
            }
        )
    )
    r = ow("run", "-c", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "runa.api_key: is required" in r.stderr
    r = ow("frobnicate")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = ow("wait", "-c", str(config(tmp_path)), "--timeout", "soon", "O-1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "argument --timeout: invalid duration 'soon'" in r.stderr


@pytest.mark.slow
def test_add_hostile_ids_rejected_valid_kept(tmp_path: Path) -> None:
    """add reports invalid IDs (exit 2) but keeps the valid ones; nothing escapes the dirs."""
    cfg = config(tmp_path)
    r = ow("add", "-c", str(cfg), "O-GOOD1", "../../etc/passwd", "a/b", "O-GOOD2", "x" * 200)
    assert r.returncode == 2
    assert "invalid order id: '../../etc/passwd', 'a/b', 'xxxxxxxx" in r.stderr
    assert "accepted 2 order(s), 2 new" in r.stdout
    status = json.loads(ow("status", "-c", str(cfg), "--json").stdout)
    assert status["orders"]["pending"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ow.yaml", "state"]


def test_status_of_a_state_dir_that_does_not_exist(tmp_path: Path) -> None:
    """A mistyped state_dir: status says there is no state there (exit 1) instead of creating
    it and reporting a healthy-looking empty queue."""
    cfg = config(tmp_path)
    r = ow("status", "-c", str(cfg))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        f"orderwatch: no state in {tmp_path / 'state'}: nothing was added there (is state_dir right?)"
    )
    assert not (tmp_path / "state").exists()


@pytest.mark.slow
def test_add_twice_tracks_once(tmp_path: Path) -> None:
    """An order is tracked once however often it is added."""
    cfg = config(tmp_path)
    assert ow("add", "-c", str(cfg), "O-1", "O-1", "O-2").returncode == 0
    r = ow("add", "-c", str(cfg), "O-1")
    assert "accepted 1 order(s), 0 new" in r.stdout
    status = json.loads(ow("status", "-c", str(cfg), "--json").stdout)
    assert status["orders"]["pending"] == 2


@pytest.mark.slow
def test_status_per_order_and_unknown(tmp_path: Path) -> None:
    """status ID shows state and polls; an untracked ID is named and exits 1."""
    cfg = config(tmp_path)
    ow("add", "-c", str(cfg), "O-1")
    r = ow("status", "-c", str(cfg), "O-1", "O-NOPE")
    assert r.returncode == 1
    assert "O-1" in r.stdout and "pending" in r.stdout and "O-NOPE: not tracked" in r.stdout
    data = json.loads(ow("status", "-c", str(cfg), "O-1", "--json").stdout)
    assert data["orders"][0]["state"] == "pending" and data["unknown"] == []


@pytest.mark.slow
def test_second_daemon_on_same_state_refused(tmp_path: Path) -> None:
    """One embedded state has one daemon: a second `run` exits 2 with a clear line."""
    import fcntl
    import os

    cfg = config(tmp_path)
    (tmp_path / "state").mkdir(mode=0o700)
    fd = os.open(tmp_path / "state" / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # stands in for the first daemon
    try:
        r = ow("run", "-c", str(cfg))
    finally:
        os.close(fd)
    assert r.returncode == 2
    assert "another orderwatch daemon is already running" in r.stderr


@pytest.mark.slow
def test_admin_port_in_use_is_one_line(tmp_path: Path) -> None:
    """An admin.listen port another process holds is one clear line and exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config(tmp_path, admin={"listen": f"127.0.0.1:{port}"})
        r = ow("run", "-c", str(cfg))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"admin.listen 127.0.0.1:{port}: Address already in use" in r.stderr


@pytest.mark.slow
def test_unusable_directories_are_one_line(tmp_path: Path) -> None:
    """A state_dir or output_dir that cannot be created is one clear line, exit 1."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for key in ("state_dir", "output_dir"):
        cfg = config(tmp_path, **{key: str(blocker / "sub")})
        r = ow("run", "-c", str(cfg))
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert f"{key} {blocker / 'sub'}: Not a directory" in r.stderr


@pytest.mark.slow
async def test_ctrl_c_during_the_demo_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C stopped the demo's daemon, which closed its store while the demo still read
    it: a traceback (RuntimeError: cannot schedule new futures after shutdown), exit 1."""
    import asyncio
    import signal

    from harness import spawn

    proc = await spawn(
        "demo",
        "--orders",
        "3",
        env={"TMPDIR": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = b""
    while b"following" not in seen:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line, seen
        seen += line
    await asyncio.sleep(1.5)  # the demo's daemon is polling
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    text = (seen + err).decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "demo: interrupted" in text


def test_a_lock_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    """A lock file we cannot open (root's, left by one `sudo orderwatch run`; here a path
    that cannot be a file) was a traceback from `run`, `status` and `add` (which had
    accepted the orders by then)."""
    from orderwatch.core.errors import StoreError
    from orderwatch.store.lock import DaemonLock

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    lock = DaemonLock(not_a_dir)
    with pytest.raises(StoreError, match=r"daemon.lock: Not a directory"):
        lock.acquire()
    with pytest.raises(StoreError, match=r"daemon.lock: Not a directory"):
        lock.is_held_elsewhere()


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
@pytest.mark.slow
def test_a_root_owned_lock_left_behind_is_one_line_for_the_service_user() -> None:
    """The service user's state, after one `sudo orderwatch run` left a root-owned 0600
    daemon.lock: `run` says so in one line; `add` keeps the orders it accepted and says so."""
    base = Path(tempfile.mkdtemp(prefix="orderwatch-lock-"))  # not under pytest's 0700 tmp
    try:
        base.chmod(0o755)
        cfg = config(base)
        for sub in ("state", "orders"):
            (base / sub).mkdir(mode=0o700)
            os.chown(base / sub, 65534, 65534)
        lock = base / "state" / "daemon.lock"
        lock.write_text("1 run\n")
        lock.chmod(0o600)

        def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
            user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            return subprocess.run(
                [*user, sys.executable, "-m", "orderwatch", *args],
                capture_output=True,
                text=True,
                env=child_env(),
                timeout=60,
            )

        ran = as_nobody("run", "-c", str(cfg))
        assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr
        assert ran.stderr.strip() == f"orderwatch: state_dir lock {lock}: Permission denied"
        added = as_nobody("add", "-c", str(cfg), "O-1")
        assert "Traceback" not in added.stderr, added.stderr
        assert (added.returncode, added.stdout) == (0, "accepted 1 order(s), 1 new\n")
    finally:
        shutil.rmtree(base)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from orderwatch.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_help_has_a_description_and_its_defaults(command: str) -> None:
    """Each command's --help says what it does and, for every option that takes a value, what
    happens when it is left out (a new user read `simulate --help` and learnt neither)."""
    parser = _subcommands()[command]
    assert parser.description and len(parser.description) > 40, command
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue  # positionals, --help, flags
        assert action.help and "default" in action.help, (command, action.dest)
        assert "%(default)s" not in text  # every placeholder was expanded


def test_simulate_help_says_what_a_user_needs() -> None:
    """`orderwatch simulate --help` names its address and port, which API key it accepts,
    which IDs answer 404 and how long orders take."""
    text = " ".join(_subcommands()["simulate"].format_help().split())
    assert "http://127.0.0.1:8765/v2" in text
    assert "(default: 8765)" in text and "(default: 127.0.0.1)" in text
    assert "O-404" in text and "404" in text
    assert "--api-key" in text and "any key is accepted" in text
    assert "(default: 3s)" in text


def test_wait_help_says_what_no_timeout_means() -> None:
    """`wait --timeout` had no default shown: the help says it waits until every order ends."""
    text = " ".join(_subcommands()["wait"].format_help().split())
    assert "default: no limit, wait until every order has ended" in text


@pytest.mark.slow
def test_check_config_names_a_watchlist_that_is_not_there(tmp_path: Path) -> None:
    """A mistyped watchlist (`watchlsit.txt`) passed check-config, and `run` only logged a
    warning once started: it is a located problem, exit 2, as is one that cannot be read."""
    cfg = tmp_path / "ow.yaml"
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "ok.txt").write_text("O-1\n")
    cfg.write_text(
        f"runa:\n  base_url: http://127.0.0.1:9/v2\n  api_key: {API_KEY}\n"
        "watchlists:\n  - ok.txt\n  - watchlsit.txt\n  - adir\n  - fifo\n"
    )
    r = ow("check-config", "-c", str(cfg))
    assert (r.returncode, r.stderr.splitlines()) == (
        2,
        [
            f"{cfg}:6: watchlists[1]: no such file: {tmp_path / 'watchlsit.txt'}",
            f"{cfg}:7: watchlists[2]: cannot read {tmp_path / 'adir'}: Is a directory",
            f"{cfg}:8: watchlists[3]: cannot read {tmp_path / 'fifo'}: not a regular file",
        ],
    ), r.stdout
    cfg.write_text(cfg.read_text().split("watchlists:")[0] + "watchlists: [ok.txt]\n")
    assert ow("check-config", "-c", str(cfg)).returncode == 0


@pytest.mark.slow
async def test_the_demo_logs_at_its_level_and_shows_progress(tmp_path: Path) -> None:
    """The demo's level is info, yet it printed `[debug] order.polled` lines (it lowered the
    poller's logger to debug to show each poll): no debug line now, and each order's progress
    shows as `wait` shows it on a terminal."""
    import re

    from harness import run_in_pty

    code, screen = await run_in_pty("demo", "--orders", "2", env={"TMPDIR": str(tmp_path)})
    text = re.sub(r"\x1b\[[0-9;]*m", "", screen)  # the console renderer's colours
    assert code == 0, text
    assert "[info" in text and "[debug" not in text
    assert re.search(r"O-\w{26} processing \(answers: \d+ processing\)", text), text
    assert "demo: ok" in text


@pytest.mark.slow
async def test_status_counts_failed_answers_beside_the_last_error(tmp_path: Path) -> None:
    """`status ID` showed `POLLS 0` beside `LAST ERROR http 404`: the store counts PROCESSING
    answers (polls) apart from failed ones in a row (error_streak), and the column showed only
    the first. It now shows both, under a name that says what they count."""
    import re

    from orderwatch.devtools.simulator import SimOptions, running_simulator

    from harness import write_config

    async with running_simulator(SimOptions(api_key=API_KEY)) as rs:
        cfg = write_config(tmp_path, rs.base_url, polling={"not_found_grace": "10m"})
        r = await asyncio.to_thread(ow, "wait", "-c", str(cfg), "--timeout", "2s", "O-404X")
        assert r.returncode == 1 and "1 order(s) still pending" in r.stderr, r.stderr
    r = ow("status", "-c", str(cfg), "O-404X")
    header, row = r.stdout.splitlines()[1:3]
    assert header.split() == [
        "ORDER",
        "STATE",
        "RESULT",
        "FOUND",
        "BY",
        "ANSWERS",
        "NEXT",
        "POLL",
        "LAST",
        "ERROR",
    ]
    assert re.fullmatch(
        r"O-404X +pending +- +- +0 processing, [1-9]\d* failed in a row +\S+( \S+)? +http 404",
        row,
    ), row


def _ow_env(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orderwatch", *args],
        capture_output=True,
        text=True,
        env={**child_env(), **env},
        timeout=60,
    )


@pytest.mark.slow
def test_commands_need_only_the_secrets_they_use(tmp_path: Path) -> None:
    """`add` and `status` failed with `runa.api_key: environment variable RUNA_API_KEY is not
    set`, though they never call the API. They use no secret (but a PostgreSQL DSN); `replay`
    signs webhooks, so it needs their secrets and nothing else; `wait` needs every one."""
    cfg = tmp_path / "ow.yaml"
    cfg.write_text(
        "runa:\n  base_url: http://127.0.0.1:9/v2\n  api_key: ${RUNA_API_KEY}\n"
        f"state_dir: {tmp_path / 'state'}\noutput_dir: {tmp_path / 'orders'}\n"
        "webhooks:\n  - url: http://127.0.0.1:9/hook\n    secret: ${WEBHOOK_SECRET}\n"
        "admin:\n  listen: 0.0.0.0:0\n  token_file: ${CREDENTIALS_DIRECTORY}/admin\n"
    )
    for var in ("RUNA_API_KEY", "WEBHOOK_SECRET", "CREDENTIALS_DIRECTORY"):
        assert var not in child_env()
    r = _ow_env("add", "-c", str(cfg), "O-1")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    r = _ow_env("status", "-c", str(cfg), "O-1")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert "O-1" in r.stdout and "pending" in r.stdout
    r = _ow_env("replay", "-c", str(cfg), "O-1")
    assert (r.returncode, r.stderr.splitlines()) == (
        2,
        [f"{cfg}:8: webhooks[0].secret: environment variable WEBHOOK_SECRET is not set"],
    )
    r = _ow_env("replay", "-c", str(cfg), "O-1", WEBHOOK_SECRET=SECRET)
    assert (r.returncode, r.stderr.strip()) == (2, "orderwatch: no final event yet for: O-1")
    r = _ow_env("wait", "-c", str(cfg), "O-1")
    assert (r.returncode, r.stderr.splitlines()) == (
        2,
        [
            f"{cfg}:3: runa.api_key: environment variable RUNA_API_KEY is not set",
            f"{cfg}:8: webhooks[0].secret: environment variable WEBHOOK_SECRET is not set",
            f"{cfg}:11: admin.token_file: environment variable CREDENTIALS_DIRECTORY is not set",
        ],
    )


@pytest.mark.slow
def test_status_and_add_work_with_the_systemd_config_outside_the_unit(tmp_path: Path) -> None:
    """With the shipped systemd config, `status` and `add` run by hand failed with
    `CREDENTIALS_DIRECTORY is not set` (only the unit has one): they read no secret now."""
    shipped = REPO / "config" / "orderwatch.systemd.yaml"
    dirs = {"ORDERWATCH_STATE_DIR": str(tmp_path / "state")}
    dirs["ORDERWATCH_OUTPUT_DIR"] = str(tmp_path / "orders")
    r = _ow_env("add", "-c", str(shipped), "O-1", **dirs)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    r = _ow_env("status", "-c", str(shipped), **dirs)
    assert r.returncode == 0 and "pending 1" in r.stdout, r.stderr
    r = _ow_env("check-config", "-c", str(shipped), **dirs)
    assert r.returncode == 2 and "CREDENTIALS_DIRECTORY is not set" in r.stderr
