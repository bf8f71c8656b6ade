"""No CPU kernel reads past its input buffers: see guarded_reads.py, run in a child process so
that a read into the guard page fails this test rather than killing the test session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dkutil import HAS_EXT, NO_EXT_REASON


@pytest.mark.skipif(not HAS_EXT, reason=NO_EXT_REASON)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect guard pages: Linux")
def test_no_reads_past_input_buffers():
    script = Path(__file__).with_name("guarded_reads.py")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"exit status {proc.returncode} (negative: killed by that signal, -11 a read into the "
        f"guard page)\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    assert "checked" in proc.stdout
