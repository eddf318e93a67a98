"""The notify protocol, spoken to real AF_UNIX datagram sockets (a path and an abstract name)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orderwatch.ops.systemd import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_arrive_one_datagram_each(receiver: tuple[socket.socket, str]) -> None:
    """READY=1, STATUS=..., STOPPING=1 each arrive as their own datagram on a path socket."""
    sock, path = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    n.ready()
    n.status("pending 3, final 1")
    n.stopping()
    assert [recv(sock) for _ in range(3)] == ["READY=1", "STATUS=pending 3, final 1", "STOPPING=1"]


def test_status_is_kept_on_one_line(receiver: tuple[socket.socket, str]) -> None:
    """A multi-line status cannot smuggle in a second field such as READY=1."""
    sock, path = receiver
    Notifier.from_env({"NOTIFY_SOCKET": path}).status("a\nREADY=1")
    assert recv(sock) == "STATUS=a READY=1"


def test_reloading_carries_monotonic_usec(receiver: tuple[socket.socket, str]) -> None:
    """RELOADING=1 and MONOTONIC_USEC=<now on CLOCK_MONOTONIC> come in one message."""
    sock, path = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier.from_env({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = recv(sock).split("\n")
    assert first == "RELOADING=1" and second.startswith("MONOTONIC_USEC=")
    assert before <= int(second.removeprefix("MONOTONIC_USEC=")) <= after


def test_abstract_namespace_socket() -> None:
    """NOTIFY_SOCKET=@name reaches a socket bound in the abstract namespace."""
    name = f"orderwatch-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
        n.watchdog()
        n.ready()
        assert [recv(sock), recv(sock)] == ["WATCHDOG=1", "READY=1"]


def test_watchdog_interval_is_half_watchdog_usec(receiver: tuple[socket.socket, str]) -> None:
    """WATCHDOG_USEC=30s gives a 15 s ping interval, and WATCHDOG=1 is sent."""
    sock, path = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert n.watchdog_interval_s == 15.0
    n.watchdog()
    assert recv(sock) == "WATCHDOG=1"


def test_watchdog_pid_of_another_process_disables_the_watchdog() -> None:
    """WATCHDOG_PID names the process systemd watches: ours enables it, another does not."""
    usec = {"WATCHDOG_USEC": "2000000"}
    assert Notifier.from_env({**usec, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 1.0
    assert (
        Notifier.from_env({**usec, "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_interval_s
        is None
    )
    assert Notifier.from_env({"WATCHDOG_USEC": "junk"}).watchdog_interval_s is None
    assert Notifier.from_env({}).watchdog_interval_s is None


def test_watchdog_not_sent_when_systemd_did_not_ask(receiver: tuple[socket.socket, str]) -> None:
    """Without WATCHDOG_USEC, watchdog() sends nothing (the next datagram is READY=1)."""
    sock, path = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    n.watchdog()
    n.ready()
    assert recv(sock) == "READY=1"


def test_no_notify_socket_is_a_no_op() -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    n = Notifier.from_env({})
    assert not n.enabled and n.send("READY=1") is False
    n.ready()
    n.reloading()
    n.stopping()


def test_send_failures_never_raise(tmp_path: Path) -> None:
    """A socket that is gone (or an address that cannot exist) makes send return False."""
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert n.send("READY=1") is False
    n.ready()
    assert Notifier("bad\0path").send("READY=1") is False
