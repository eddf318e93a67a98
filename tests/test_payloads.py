"""Final payload files: atomic, 0600, and never through a temp file another writer owns."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from orderwatch.payloads import TMP_PREFIX, prepare_output_dir, write_payload


def test_a_temp_file_of_another_writer_is_left_alone(tmp_path: Path) -> None:
    """Replicas that share output_dir may share a pid (1 in containers): a write must not
    truncate and rename what another writer of the same order has half written."""
    prepare_output_dir(tmp_path)
    theirs = tmp_path / f"{TMP_PREFIX}O-P1.{os.getpid()}"
    theirs.write_bytes(b'{"half": ')
    final = write_payload(tmp_path, "O-P1", b'{"id": "O-P1"}')
    assert final.read_bytes() == b'{"id": "O-P1"}'
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert theirs.read_bytes() == b'{"half": '
    assert sorted(p.name for p in tmp_path.iterdir()) == [theirs.name, "O-P1.json"]
