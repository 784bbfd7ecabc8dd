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


def two_class_torchscript(folder, names):
    """A real TorchScript classifier with two classes (``names``): the mean brightness and its
    complement as logits; returns ``(model path, class-file path)``."""
    import warnings

    import torch

    class Net(torch.nn.Module):
        def forward(self, x):
            m = x.mean((1, 2, 3))
            return torch.stack([m, 1 - m], 1)

    model, classes = folder / "net.pt", folder / "classes.txt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(Net()).save(str(model))
    classes.write_text("\n".join(names) + "\n")
    return model, classes


def default_sigint():
    """``preexec_fn`` for a child that is sent Ctrl-C: SIGINT back to its default, so Python
    installs its KeyboardInterrupt handler even when this test runs in a background job (whose
    shell ignores SIGINT, an inherited setting the child would otherwise keep)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def dump_dom(page, profile):
    """Open the HTML file ``page`` in headless Chromium and return ``(DOM after load, stderr)``;
    skips the test when Chromium is not installed.

    Args:
        page: the HTML file.
        profile: a fresh folder for Chromium's user data.
    """
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                           "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr
