"""Command-line tools whose reader stops early (``tool | head``) end quietly, not with a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rgbt_perception.io.console import EXIT_OUTPUT_CLOSED, console_script, stdout_closed


def run_into_closed_pipe(command: list[str], cwd: str) -> subprocess.CompletedProcess:
    """Run ``command`` with standard output a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, cwd=cwd)
    finally:
        os.close(write_end)


def test_a_report_into_a_closed_pipe_ends_with_the_sigpipe_status(repo_root, tmp_path):
    result = run_into_closed_pipe([sys.executable, "-m", "training.transfer_study", "--preset", "cpu",
                                   "--out", str(tmp_path / "study"), "--dry-run"], repo_root)
    assert result.returncode == EXIT_OUTPUT_CLOSED == 141
    assert result.stderr == ""
    assert not (tmp_path / "study").exists()


def test_status_passes_through_and_other_broken_pipes_raise(capsys):
    @console_script
    def tool(status: int) -> int:
        print("table")
        return status

    assert tool(3) == 3 and capsys.readouterr().out == "table\n"
    assert not stdout_closed()

    @console_script
    def writes_to_a_gone_subprocess() -> int:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        writes_to_a_gone_subprocess()
