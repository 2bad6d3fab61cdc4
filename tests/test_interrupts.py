"""Ctrl-C anywhere leaves nothing behind and exits 130, also inside TensorRT, which swallows Python exceptions
raised in its callbacks."""

import os
import signal
import subprocess
import sys

import pytest

from vtp_export.util.interrupts import deferred_interrupt

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def interactive_sigint():
    """Ctrl-C as a terminal's Python has it: pytest-xdist's workers ignore SIGINT, and an ignored signal stays
    ignored in the processes they start."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_inside_is_raised_once_the_block_is_left():
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt() as interrupted:
            assert not interrupted()
            os.kill(os.getpid(), signal.SIGINT)
            assert interrupted(), "noted, not raised, inside the block"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_interrupt_no_exception():
    with deferred_interrupt() as interrupted:
        pass
    assert not interrupted()


def test_ctrl_c_during_the_tensorrt_check_stops_the_export_and_leaves_nothing(tmp_path):
    out = tmp_path / "e"
    command = [sys.executable, "-m", "vtp_export", "--model", "llava15-tiny", "--method", "holov", "--keep", "64",
               "--target", "orin", "--precision", "fp32", "--tensorrt-check", "build", "--out", str(out),
               "--verify-samples", "1"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "TensorRT ONNX parser (build)" in line:
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "vtp-export: error: interrupted: nothing was left behind"
    assert "Exception caught" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
