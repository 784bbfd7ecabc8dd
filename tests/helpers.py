"""Helpers shared by the CLI-facing tests."""

import pytest

from physical_adv.cli import main


def run_cli(capsys, *args):
    """Run ``physical-adv ARGS`` in-process; returns ``(exit code, stdout, stderr)``."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code, err, fragment):
    """The user-error contract: exit 2, one line ``physical-adv: error: …`` naming ``fragment``, no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("physical-adv: error: ") and fragment in lines[0], err
    assert "Traceback" not in err
