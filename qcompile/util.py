"""Small shared helpers."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def quiet_stderr():
    """Silence C++-level stderr (TVM's 'Scope Saving/Loaded' warnings) for the block.

    What was printed is kept and replayed if the block raises, so real errors stay visible."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        except BaseException:
            os.dup2(saved, fd)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            lines = [ln for ln in text.splitlines() if "Scope Saving" not in ln
                     and "Scope Loaded" not in ln]
            if lines:
                sys.stderr.write("\n".join(lines) + "\n")
            raise
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("qcompile", "apache-tvm", "apache-tvm-ffi", "onnx", "numpy", "xgboost-cpu"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def tvm_version() -> str:
    import tvm

    return tvm.__version__
