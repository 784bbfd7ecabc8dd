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
