"""A numpy executor of qcompile's Relax modules: the semantics of the integer IR.

`run(mod, inputs)` interprets `mod["main"]` binding by binding. Integer ops are computed
exactly (products and sums in int64 or, for large convolutions, float64 — exact below 2^53);
the quantization ops follow docs/integer-ir.md to the bit:

    quantize      clip(round_half_even(f32(x) / f32(scale)) + zp, dtype range)
    dequantize    f32(int32(q) - zp) * scale
    requantize    clip(round_half_even(f32(acc) * f32(mult)) + out_zp, clip_min, clip_max)
    qadd          clip(round_half_even(f32(f32(a - a_zp) * a_mult) + f32(f32(b - b_zp) *
                  b_mult)) + out_zp, ...)             (every f32 operation rounded separately)
    fake_quantize OpenVINO opset1 FakeQuantize in f32 (docs/architecture.md, numerics contract)

Float ops (the f32 remainder of a model: softmax, layer norm, ...) are computed in float32
numpy; they agree with a compiled module only approximately. Whatever op the executor does
not know raises `NotImplementedError` naming it — it never guesses.

`run(..., trace=True)` also returns every binding's value by var name, so tests can compare
intermediate integer tensors.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

F32 = np.float32

_OPS: dict[str, Callable] = {}


def _op(*names):
    def deco(fn):
        for n in names:
            _OPS[n] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------- helpers
def _attr(call, key, default=None):
    from .ops import attr

    return attr(call, key, default)


def _ints(v) -> list[int]:
    """A shape / tuple / array attribute as Python ints."""
    if v is None:
        return []
    if isinstance(v, (int, np.integer)):
        return [int(v)]
    out = []
    for x in v:
        out.append(int(x.value) if hasattr(x, "value") else int(x))
    return out


def _dtype(call) -> str:
    return str(call.ty.dtype)


def _np_dtype(d) -> np.dtype:
    return np.dtype(str(d))


def _per_axis(v: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A quantization parameter (scalar or vector along `axis`) shaped to broadcast."""
    v = np.asarray(v)
    if v.size == 1:
        return v.reshape(())
    shape = [1] * rank
    shape[axis % rank] = v.size
    return v.reshape(shape)


def fake_quantize(x, il, ih, ol, oh, levels: int) -> np.ndarray:
    """OpenVINO opset1 FakeQuantize, float32, numpy broadcasting (docs/architecture.md, numerics contract)."""
    x = np.asarray(x, F32)
    il, ih, ol, oh = (np.asarray(v, F32) for v in (il, ih, ol, oh))
    steps = F32(levels - 1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        q = np.round((x - il) / (ih - il) * steps)
        y = (q / steps * (oh - ol)).astype(F32) + ol
    lo, hi = np.minimum(il, ih), np.maximum(il, ih)
    return np.where(x <= lo, ol, np.where(x > hi, oh, y)).astype(F32)


def quantize(x, scale, zp, axis: int, dtype) -> np.ndarray:
    x = np.asarray(x, F32)
    rank = x.ndim
    s = _per_axis(np.asarray(scale, F32), rank, axis)
    z = _per_axis(np.asarray(zp), rank, axis).astype(F32)
    info = np.iinfo(dtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = np.round((x / s).astype(F32)) + z
    return np.clip(v, info.min, info.max).astype(dtype)


def dequantize(q, scale, zp, axis: int) -> np.ndarray:
    q = np.asarray(q)
    rank = q.ndim
    s = _per_axis(np.asarray(scale, F32), rank, axis)
    z = _per_axis(np.asarray(zp), rank, axis).astype(np.int64)
    d = (q.astype(np.int64) - z)
    if np.issubdtype(q.dtype, np.integer):
        d = d.astype(np.int32)
    return (d.astype(F32) * s).astype(F32)


def requantize(acc, mult, axis: int, out_zp: int, dtype, lo: int, hi: int) -> np.ndarray:
    acc = np.asarray(acc)
    m = _per_axis(np.asarray(mult, F32), acc.ndim, axis)
    v = np.round((acc.astype(F32) * m).astype(F32)) + F32(out_zp)
    return np.clip(v, lo, hi).astype(dtype)


def qadd(a, b, a_zp, a_mult, b_zp, b_mult, out_zp, dtype, lo, hi) -> np.ndarray:
    xa = ((np.asarray(a).astype(np.int32) - np.int32(a_zp)).astype(F32) * F32(a_mult)).astype(F32)
    xb = ((np.asarray(b).astype(np.int32) - np.int32(b_zp)).astype(F32) * F32(b_mult)).astype(F32)
    v = np.round((xa + xb).astype(F32)) + F32(out_zp)
    return np.clip(v, lo, hi).astype(dtype)


def _is_int(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.integer)


def _exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matmul, exact: float64 BLAS when every partial sum stays below 2^53."""
    k = a.shape[-1]
    amax = float(np.abs(a).max(initial=0))
    bmax = float(np.abs(b).max(initial=0))
    if amax * bmax * k < 2.0 ** 52:
        return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64)
    return np.matmul(a.astype(np.int64), b.astype(np.int64))


# -------------------------------------------------------------------------- conv / pool
def _windows(x: np.ndarray, kh, kw, strides, dilation):
    """[N, C, OH, OW, KH, KW] view of a padded NCHW array."""
    sh, sw = strides
    dh, dw = dilation
    n, c, h, w = x.shape
    oh = (h - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w - (dw * (kw - 1) + 1)) // sw + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, c, oh, ow, kh, kw), (s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw),
        writeable=False)


def _pad_nchw(x, pad, value):
    t, l, b, r = pad
    if not any(pad):
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def conv2d(x, w, strides=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1,
           out_dtype=None, pad_value=0) -> np.ndarray:
    """NCHW x OIHW convolution; exact for integer inputs. `pad_value`: what the padding
    holds (an int8 conv pads its u8 input with the zero point)."""
    x, w = np.asarray(x), np.asarray(w)
    if len(padding) == 2:
        padding = (padding[0], padding[1], padding[0], padding[1])
    integer = _is_int(x) and _is_int(w)
    xp = _pad_nchw(x, padding, pad_value)
    o, ig, kh, kw = w.shape
    win = _windows(xp, kh, kw, strides, dilation)          # N C OH OW KH KW
    n, c, oh, ow = win.shape[:4]
    og = o // groups
    outs = []
    for g in range(groups):
        cols = win[:, g * ig:(g + 1) * ig].transpose(0, 2, 3, 1, 4, 5).reshape(n, oh, ow, -1)
        wg = w[g * og:(g + 1) * og].reshape(og, -1).T
        if integer:
            r = _exact_matmul(cols, wg)
        else:
            r = np.matmul(cols.astype(F32), wg.astype(F32))
        outs.append(r)
    y = np.concatenate(outs, axis=-1).transpose(0, 3, 1, 2)
    dt = out_dtype or (np.int32 if integer else F32)
    return np.asarray(y, order="C").astype(dt)


def _pool(x, pool, strides, padding, dilation, ceil_mode, fn, pad_value):
    kh, kw = pool
    t, l, b, r = padding if len(padding) == 4 else (padding[0], padding[1]) * 2
    if ceil_mode:
        h, w = x.shape[2] + t + b, x.shape[3] + l + r
        eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
        oh = -(-(h - eh) // strides[0]) + 1
        ow = -(-(w - ew) // strides[1]) + 1
        if (oh - 1) * strides[0] >= x.shape[2] + t:
            oh -= 1
        if (ow - 1) * strides[1] >= x.shape[3] + l:
            ow -= 1
        b += max(0, (oh - 1) * strides[0] + eh - h)
        r += max(0, (ow - 1) * strides[1] + ew - w)
    xp = _pad_nchw(x, (t, l, b, r), pad_value)
    return fn(_windows(xp, kh, kw, strides, dilation))


def max_pool2d(x, pool, strides, padding, dilation=(1, 1), ceil_mode=False):
    x = np.asarray(x)
    low = np.iinfo(x.dtype).min if _is_int(x) else -np.inf
    return _pool(x, pool, strides, padding, dilation, ceil_mode,
                 lambda win: win.max(axis=(4, 5)), low).astype(x.dtype)


def avg_pool2d(x, pool, strides, padding, dilation=(1, 1), ceil_mode=False,
               count_include_pad=False):
    x = np.asarray(x, F32)
    s = _pool(x, pool, strides, padding, dilation, ceil_mode,
              lambda win: win.sum(axis=(4, 5), dtype=np.float64), 0.0)
    if count_include_pad:
        cnt = pool[0] * pool[1]
    else:
        ones = np.ones((1, 1) + x.shape[2:], F32)
        cnt = _pool(ones, pool, strides, padding, dilation, ceil_mode,
                    lambda win: win.sum(axis=(4, 5)), 0.0)
    return (s / cnt).astype(F32)


# ------------------------------------------------------------------------- op handlers
@_op("relax.quantize")
def _quantize(call, x, scale, zp):
    return quantize(x, scale, zp, int(call.attrs.axis), _np_dtype(call.attrs.out_dtype))


@_op("relax.dequantize")
def _dequantize(call, q, scale, zp):
    return dequantize(q, scale, zp, int(call.attrs.axis)).astype(_np_dtype(call.attrs.out_dtype))


@_op("qcompile.requantize")
def _requantize(call, acc, mult):
    a = lambda k, d=None: _attr(call, k, d)  # noqa: E731
    return requantize(acc, mult, int(a("axis", 1)), int(a("out_zp", 0)),
                      _np_dtype(a("out_dtype")), int(a("clip_min")), int(a("clip_max")))


@_op("qcompile.qadd")
def _qadd(call, x, y):
    a = lambda k, d=None: _attr(call, k, d)  # noqa: E731
    return qadd(x, y, a("a_zp"), a("a_mult"), a("b_zp"), a("b_mult"), a("out_zp"),
                _np_dtype(a("out_dtype")), int(a("clip_min")), int(a("clip_max")))


@_op("qcompile.fake_quantize")
def _fq(call, x, il, ih, ol, oh):
    return fake_quantize(x, il, ih, ol, oh, int(_attr(call, "levels")))


@_op("relax.nn.conv2d")
def _conv2d(call, x, w):
    at = call.attrs
    if (str(at.data_layout), str(at.kernel_layout), str(at.out_layout)) != ("NCHW", "OIHW",
                                                                           "NCHW"):
        raise NotImplementedError("reference conv2d supports NCHW/OIHW only")
    return conv2d(x, w, _ints(at.strides), _ints(at.padding), _ints(at.dilation),
                  int(at.groups), _np_dtype(_dtype(call)))


@_op("relax.matmul")
def _matmul(call, a, b):
    dt = _np_dtype(_dtype(call))
    if _is_int(a) and _is_int(b):
        return _exact_matmul(a, b).astype(dt)
    return np.matmul(a.astype(F32), b.astype(F32)).astype(dt)


def _binary(fn):
    def h(call, a, b):
        dt = _np_dtype(_dtype(call))
        with np.errstate(all="ignore"):
            if np.issubdtype(dt, np.integer):
                r = fn(np.asarray(a).astype(np.int64), np.asarray(b).astype(np.int64))
            else:
                r = fn(np.asarray(a, dt), np.asarray(b, dt))
        return np.asarray(r).astype(dt)

    return h


_OPS["relax.add"] = _binary(np.add)
_OPS["relax.subtract"] = _binary(np.subtract)
_OPS["relax.multiply"] = _binary(np.multiply)
_OPS["relax.maximum"] = _binary(np.maximum)
_OPS["relax.minimum"] = _binary(np.minimum)
_OPS["relax.power"] = _binary(np.power)


@_op("relax.divide")
def _divide(call, a, b):
    dt = _np_dtype(_dtype(call))
    with np.errstate(all="ignore"):
        if np.issubdtype(dt, np.integer):
            return np.floor_divide(a, b).astype(dt)
        return (np.asarray(a, dt) / np.asarray(b, dt)).astype(dt)


def _unary(fn):
    def h(call, x):
        dt = _np_dtype(_dtype(call))
        with np.errstate(all="ignore"):
            return np.asarray(fn(np.asarray(x))).astype(dt)

    return h


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64))


for _n, _f in {"relax.nn.relu": lambda x: np.maximum(x, 0), "relax.exp": np.exp,
               "relax.sqrt": np.sqrt, "relax.rsqrt": lambda x: 1 / np.sqrt(x),
               "relax.tanh": np.tanh, "relax.sigmoid": lambda x: 1 / (1 + np.exp(-x)),
               "relax.negative": np.negative, "relax.abs": np.abs, "relax.round": np.round,
               "relax.floor": np.floor, "relax.ceil": np.ceil, "relax.log": np.log,
               "relax.erf": _erf, "relax.isnan": np.isnan,
               "relax.nn.gelu": lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2.0)))}.items():
    _OPS[_n] = _unary(_f)


@_op("relax.astype")
def _astype(call, x):
    dt = _np_dtype(call.attrs.dtype)
    x = np.asarray(x)
    if np.issubdtype(dt, np.integer) and not _is_int(x):
        x = np.trunc(x)
    return x.astype(dt)


@_op("relax.clip")
def _clip(call, x, lo, hi):
    return np.clip(x, lo, hi).astype(x.dtype)


@_op("relax.where")
def _where(call, c, a, b):
    return np.where(c, a, b).astype(_np_dtype(_dtype(call)))


@_op("relax.reshape")
def _reshape(call, x, shape):
    return np.reshape(x, [int(s) for s in call.ty.shape])


@_op("relax.flatten")
def _flatten(call, x):
    return np.reshape(x, -1)


@_op("relax.permute_dims")
def _permute(call, x):
    axes = call.attrs.axes
    return np.transpose(x, None if axes is None else _ints(axes))


@_op("relax.expand_dims", "relax.squeeze")
def _same_shape_as_result(call, x):
    return np.reshape(x, [int(s) for s in call.ty.shape])


@_op("relax.concat")
def _concat(call, xs):
    return np.concatenate(list(xs), axis=int(call.attrs.axis))


@_op("relax.split")
def _split(call, x):
    ind = call.attrs.indices_or_sections
    axis = int(call.attrs.axis)
    if isinstance(ind, (int, np.integer)) or hasattr(ind, "value"):
        return tuple(np.split(x, int(getattr(ind, "value", ind)), axis=axis))
    return tuple(np.split(x, _ints(ind), axis=axis))


@_op("relax.strided_slice")
def _strided_slice(call, x, axes, begin, end, strides=None):
    axes, begin, end = _ints(axes), _ints(begin), _ints(end)
    strides = _ints(strides) if strides is not None else [1] * len(axes)
    sl = [slice(None)] * x.ndim
    for a, b, e, s in zip(axes, begin, end, strides):
        sl[a] = slice(b, e, s)
    return x[tuple(sl)]


@_op("relax.nn.pad")
def _pad(call, x):
    at = call.attrs
    w = _ints(at.pad_width)
    if str(getattr(at, "pad_mode", "constant")) != "constant":
        raise NotImplementedError("reference pad supports constant mode only")
    pw = [(w[2 * i], w[2 * i + 1]) for i in range(x.ndim)]
    return np.pad(x, pw, constant_values=np.asarray(float(at.pad_value)).astype(x.dtype))


@_op("relax.nn.max_pool2d")
def _max_pool(call, x):
    at = call.attrs
    if str(at.layout) != "NCHW":
        raise NotImplementedError("reference max_pool2d supports NCHW only")
    return max_pool2d(x, _ints(at.pool_size), _ints(at.strides), _ints(at.padding),
                      _ints(at.dilation), bool(at.ceil_mode))


@_op("relax.nn.avg_pool2d")
def _avg_pool(call, x):
    at = call.attrs
    if str(at.layout) != "NCHW" or _is_int(x):
        raise NotImplementedError("reference avg_pool2d supports f32 NCHW only")
    return avg_pool2d(x, _ints(at.pool_size), _ints(at.strides), _ints(at.padding),
                      _ints(at.dilation), bool(at.ceil_mode), bool(at.count_include_pad))


def _axes(call, x):
    ax = call.attrs.axis
    return tuple(range(x.ndim)) if ax is None else tuple(a % x.ndim for a in _ints(ax))


@_op("relax.sum")
def _sum(call, x):
    dt = _np_dtype(_dtype(call))
    acc = np.int64 if _is_int(x) else np.float64
    return np.sum(x, axis=_axes(call, x), keepdims=bool(call.attrs.keepdims),
                  dtype=acc).astype(dt)


@_op("relax.mean")
def _mean(call, x):
    dt = _np_dtype(_dtype(call))
    return np.mean(x.astype(np.float64), axis=_axes(call, x),
                   keepdims=bool(call.attrs.keepdims)).astype(dt)


@_op("relax.max")
def _max(call, x):
    return np.max(x, axis=_axes(call, x), keepdims=bool(call.attrs.keepdims))


@_op("relax.min")
def _min(call, x):
    return np.min(x, axis=_axes(call, x), keepdims=bool(call.attrs.keepdims))


@_op("relax.nn.softmax")
def _softmax(call, x):
    ax = int(call.attrs.axis)
    e = np.exp(x - x.max(axis=ax, keepdims=True))
    return (e / e.sum(axis=ax, keepdims=True)).astype(F32)


@_op("relax.nn.layer_norm")
def _layer_norm(call, x, gamma, beta):
    at = call.attrs
    axes = tuple(a % x.ndim for a in _ints(at.axes))
    xd = x.astype(np.float64)
    mu = xd.mean(axis=axes, keepdims=True)
    var = ((xd - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (xd - mu) / np.sqrt(var + float(at.epsilon))
    if bool(at.scale):
        y = y * gamma
    if bool(at.center):
        y = y + beta
    return y.astype(F32)


@_op("relax.nn.adaptive_avg_pool2d")
def _adaptive_avg(call, x):
    out = _ints(call.attrs.output_size) if call.attrs.output_size is not None else [1, 1]
    if list(out) != [1, 1]:
        raise NotImplementedError("reference adaptive_avg_pool2d supports output 1x1 only")
    return x.astype(np.float64).mean(axis=(2, 3), keepdims=True).astype(x.dtype)


# ---------------------------------------------------------------------------- executor
class Executor:
    """Interprets a Relax function; `values` maps each Var to its numpy value."""

    def __init__(self, mod, func_name: str = "main"):
        self.mod = mod
        self.func = mod[func_name]
        self.values: dict[Any, Any] = {}

    def eval(self, expr):
        import tvm
        from tvm import relax

        if isinstance(expr, relax.Var):
            if expr not in self.values:
                raise KeyError(f"reference: variable {expr.name!r} has no value")
            return self.values[expr]
        if isinstance(expr, tvm.ir.expr.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Tuple):
            return tuple(self.eval(f) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return self.eval(expr.tuple_value)[int(expr.index)]
        if isinstance(expr, relax.ShapeExpr):
            return [int(v) for v in expr.values]
        if tvm.ir.is_prim_expr(expr) or isinstance(expr, tvm.ir.expr.Constant):
            v = expr.value
            return v.value if hasattr(v, "value") else v
        if isinstance(expr, relax.Call):
            return self.call(expr)
        raise NotImplementedError(f"reference: cannot evaluate {type(expr).__name__}")

    def call(self, call):
        import tvm

        if not isinstance(call.op, tvm.ir.Op):
            raise NotImplementedError(f"reference: calls of {call.op} (only Relax ops and qcompile "
                                      "ops are interpreted)")
        fn = _OPS.get(call.op.name)
        if fn is None:
            raise NotImplementedError(f"reference: op {call.op.name!r} is not implemented")
        args = [self.eval(a) for a in call.args]
        return fn(call, *args)

    def run(self, inputs: list | dict):
        from tvm import relax

        params = list(self.func.params)
        if isinstance(inputs, dict):
            inputs = [inputs[p.name] for p in params]
        if len(inputs) != len(params):
            raise ValueError(f"reference: {len(params)} inputs expected, got {len(inputs)}")
        for p, v in zip(params, inputs):
            self.values[p] = np.asarray(v)
        body = self.func.body
        for block in body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.values[b.var] = self.eval(b.value)
                else:
                    raise NotImplementedError("reference: match_cast bindings")
        return self.eval(body.body)


def run(mod, inputs, trace: bool = False):
    """Execute `mod["main"]` on numpy `inputs` (list, or dict by parameter name).

    Returns the result (an array, or a tuple for tuple outputs); with `trace`, also a dict of
    every bound variable's value by name (later bindings of the same name win)."""
    ex = Executor(mod)
    out = ex.run(inputs)
    if not trace:
        return out
    return out, {v.name: val for v, val in ex.values.items()}


def cut_at(mod, names: list[str]):
    """A copy of `mod` whose `main` returns the values bound to `names` (a tuple when more
    than one) instead of its result: how tests and scripts compare intermediate (integer)
    tensors of a compiled module with this executor. Later and unused bindings are dropped."""
    import tvm
    from tvm import relax

    func = mod["main"]
    bindings, found = [], {}
    for block in func.body.blocks:
        for b in block.bindings:
            bindings.append(b)
            if b.var.name in names and b.var.name not in found:
                found[b.var.name] = b.var
            if len(found) == len(names):
                break
        if len(found) == len(names):
            break
    missing = [n for n in names if n not in found]
    if missing:
        raise KeyError(f"cut_at: no binding named {missing}")
    if any(not isinstance(b.var, relax.DataflowVar) for b in bindings):
        raise NotImplementedError("cut_at: the cut crosses a non-dataflow binding")
    new_bindings = list(bindings)
    outs = [found[n] for n in names]
    ret = outs[0] if len(outs) == 1 else relax.Tuple(outs)
    gv = relax.Var("gv", ret.ty if len(outs) == 1 else relax.TupleType([o.ty for o in outs]))
    body = relax.SeqExpr([relax.DataflowBlock(new_bindings + [relax.VarBinding(gv, ret)])], gv)
    new = relax.Function(func.params, body, gv.ty, func.is_pure, func.attrs)
    out = tvm.IRModule({**{gv_: f for gv_, f in mod.functions.items()}})
    out["main"] = new
    return relax.transform.DeadCodeElimination()(out)
