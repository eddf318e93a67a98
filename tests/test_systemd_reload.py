"""systemd/orderwatch.service's ExecReload= run for real: the command line as systemd would
exec it ($MAINPID put in by systemd's rules) against a real child process that records SIGHUP.

On a minimal Debian without procps, `/bin/kill` does not exist and `systemctl reload` failed
with status=203/EXEC; the reload must need nothing but what the unit itself names."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "orderwatch.service"
# Blocks SIGHUP (held pending, not fatal), prints "ready", waits for it, prints "HUP", exit 0.
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
