"""pyopencl plumbing shared by the artifact runner and the tuning runner.

Device choice (`pick_device`): `QCOMPILE_OPENCL_DEVICE` = "P:D" (platform / device indices as
`qcompile.gpu.opencl.list_devices()` prints them) or a substring of the device or platform
name; else pyopencl's own `PYOPENCL_CTX`; else the first GPU (Intel first), else the first
device of any kind (PoCL's CPU device). Any OpenCL 1.2+ device works.

Build options (`build_options`): `-cl-fp32-correctly-rounded-divide-sqrt` wherever the device
supports it (OpenCL's default f32 division may be off by 2.5 ulp, and the quantize at an int8
region's entry divides by the scale: one ulp there moves a value across a rounding tie and
changes a u8 by 1); `-D QCOMPILE_NO_DOT_PRODUCT` forces the `char4` fallback of the int8 dot
product (see `qcompile.gpu.schedules.intrinsics`); `-cl-fast-relaxed-math` and
`-cl-mad-enable` are never passed (bit-exact epilogues).
"""
from __future__ import annotations

import os
from typing import Any

from ..errors import QCompileError


class OpenCLUnavailable(QCompileError):
    """No usable OpenCL platform / device / pyopencl."""


def _cl():
    try:
        import pyopencl as cl
    except ImportError as err:
        raise OpenCLUnavailable(
            "the OpenCL runner needs pyopencl (`pip install pyopencl`) and an OpenCL driver "
            "(Intel GPU: Debian `intel-opencl-icd`; any CPU: `pocl-opencl-icd`)") from err
    return cl


def list_devices() -> list[tuple[int, int, Any, Any]]:
    cl = _cl()
    out = []
    try:
        platforms = cl.get_platforms()
    except cl.Error as err:
        raise OpenCLUnavailable(f"no OpenCL platform found ({err}); install an ICD: "
                                "`intel-opencl-icd` (Intel GPU) or `pocl-opencl-icd` (CPU)") \
            from err
    for pi, p in enumerate(platforms):
        try:
            devs = p.get_devices()
        except cl.Error:
            continue
        for di, d in enumerate(devs):
            out.append((pi, di, p, d))
    if not out:
        raise OpenCLUnavailable("OpenCL platforms exist but expose no device; install "
                                "`intel-opencl-icd` (Intel GPU) or `pocl-opencl-icd` (CPU)")
    return out


def pick_device(spec: str | None = None):
    cl = _cl()
    spec = spec if spec is not None else os.environ.get("QCOMPILE_OPENCL_DEVICE")
    devs = list_devices()
    if spec:
        if ":" in spec and all(x.isdigit() for x in spec.split(":", 1)):
            pi, di = (int(x) for x in spec.split(":", 1))
            for p_i, d_i, _, d in devs:
                if (p_i, d_i) == (pi, di):
                    return d
        for _, _, p, d in devs:
            if spec.lower() in d.name.lower() or spec.lower() in p.name.lower():
                return d
        raise OpenCLUnavailable(f"QCOMPILE_OPENCL_DEVICE={spec!r} matches no device; devices: "
                                + "; ".join(f"{a}:{b} {d.name} ({p.name})"
                                            for a, b, p, d in devs))
    if os.environ.get("PYOPENCL_CTX"):
        return cl.create_some_context(interactive=False).devices[0]
    gpus = [d for _, _, _, d in devs if d.type & cl.device_type.GPU]
    gpus.sort(key=lambda d: 0 if "intel" in (d.vendor or "").lower() else 1)
    return (gpus or [d for _, _, _, d in devs])[0]


def has_dot_product(device) -> bool:
    return "cl_khr_integer_dot_product" in (device.extensions or "")


def correct_division(device) -> bool:
    cl = _cl()
    try:
        return bool(device.single_fp_config
                    & cl.device_fp_config.CORRECTLY_ROUNDED_DIVIDE_SQRT)
    except cl.Error:
        return False


def build_options(device, force_fallback: bool = False) -> list[str]:
    opts = []
    if correct_division(device):
        opts.append("-cl-fp32-correctly-rounded-divide-sqrt")
    if force_fallback:
        opts.append("-DQCOMPILE_NO_DOT_PRODUCT")
    return opts


def describe(device) -> dict:
    return {"name": device.name.strip(), "platform": device.platform.name.strip(),
            "version": device.version.strip(), "driver": device.driver_version.strip(),
            "compute_units": int(device.max_compute_units),
            "max_work_group_size": int(device.max_work_group_size),
            "integer_dot_product": has_dot_product(device),
            "correctly_rounded_division": correct_division(device)}


class Context:
    """A context + in-order queue on one device, and compiled programs cached by source."""

    def __init__(self, device=None, profiling: bool = False):
        cl = _cl()
        self.cl = cl
        self.device = device if device is not None else pick_device()
        self.ctx = cl.Context([self.device])
        props = cl.command_queue_properties.PROFILING_ENABLE if profiling else 0
        self.queue = cl.CommandQueue(self.ctx, properties=props)
        self._programs: dict[tuple[str, tuple[str, ...]], Any] = {}

    def program(self, source: str, options: list[str] | None = None):
        key = (source, tuple(options or ()))
        prg = self._programs.get(key)
        if prg is None:
            try:
                prg = self.cl.Program(self.ctx, source).build(options=list(options or ()))
            except self.cl.RuntimeError as err:
                raise QCompileError(f"OpenCL compilation failed on {self.device.name}: "
                                    f"{str(err)[:4000]}") from err
            self._programs[key] = prg
        return prg

    def check_launch(self, name: str, local: tuple[int, ...]) -> None:
        n = 1
        for v in local:
            n *= int(v)
        if n > self.device.max_work_group_size:
            raise QCompileError(
                f"kernel {name} needs work-groups of {n} work-items; {self.device.name} allows "
                f"{self.device.max_work_group_size}. Rebuild with a target whose "
                "max_threads_per_block fits this device.")
