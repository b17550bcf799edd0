"""Errors qcompile raises on bad input. Each message names the node, file or flag and says
what to do; the CLI prints them without a traceback and exits with status 2."""


class QCompileError(Exception):
    """Base class: a user-facing error with an actionable message."""


class ModelError(QCompileError):
    """The ONNX file is missing, unreadable, invalid, or uses what qcompile cannot import."""


class UnsupportedOpsError(ModelError):
    """The model uses op types no converter handles; lists every one with its node names."""

    def __init__(self, unsupported: dict[str, list[str]], path: str | None = None):
        self.unsupported = unsupported
        where = f" in {path}" if path else ""
        lines = [f"{len(unsupported)} unsupported ONNX op type(s){where}:"]
        for op_type, nodes in sorted(unsupported.items()):
            shown = ", ".join(repr(n) for n in nodes[:8])
            more = f" (+{len(nodes) - 8} more)" if len(nodes) > 8 else ""
            lines.append(f"  {op_type}: {len(nodes)} node(s): {shown}{more}")
        lines.append("Remove or replace these ops (or constant-fold them) before compiling.")
        super().__init__("\n".join(lines))


class InputError(QCompileError):
    """Inputs given at run time (or --input-shape) do not match the model."""


class TargetError(QCompileError):
    """Unknown target, or a target the running CPU cannot execute."""


class TuningDatabaseError(QCompileError):
    """The tuning database is corrupt or belongs to another target / TVM version."""


class ArtifactError(QCompileError):
    """A build directory is missing files or was produced by an incompatible qcompile."""


class QuantizationError(QCompileError):
    """Invalid quantization parameters (e.g. a FakeQuantize with il == ih) or settings."""
