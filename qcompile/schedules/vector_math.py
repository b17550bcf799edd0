"""Vectorizable f32 `exp`, `erf`, `sigmoid`, `tanh` and `softmax` for the exact (default, not `--fast-math`) build.

TVM lowers `tirx.exp` / `tirx.erf` to `llvm.exp.*` / `erff`, which LLVM can only scalarize
into one libm call per element: BERT's GELU ran its `erf` as scalar calls in the FFN1
epilogue (3.6-4 ms of a 20 ms block, measured on AVX-512 VNNI), and every softmax's `exp`
likewise. The functions here are plain f32 arithmetic, `Select` and `reinterpret` (all
vectorized by TIR's VectorizeLoop), accurate to the stated bound against the correctly
rounded result, so the default build stays accurate while running 16 lanes at a time:

* `exp(x)`: Cody-Waite reduction `x = n ln2 + r` (ln2 split in two), Cephes' degree-7
  polynomial for `e^r`, `2^n` built in the exponent bits. Max error **<= 2 ulp** on
  [-87.3, 88.7] (tests/test_vector_math.py measures it); 0 below, +inf above.
* `erf(x)`: odd; `|x| < 0.5`: `x * c0 + x * t * Q(t)`, `t = x^2` (degree 4); then three
  polynomials in `|x| - centre` on [0.5, 1.4), [1.4, 2.5), [2.5, 3.92) (degrees 12, 12, 10,
  least-squares fits on Chebyshev nodes); 1 beyond. Max error **<= 2 ulp** over the whole
  range (measured: 1.6 ulp near 0.5, <= 1.1 ulp elsewhere).
* `sigmoid(x)` = `1 / (1 + exp(-x))` with that `exp`: **<= 3 ulp** where the result is a
  normal f32 (x >= -87.3; measured 2.4), 0 below (YOLOv8's 58 SiLUs ran one libm `expf` per element).
* `tanh(x)`: Cephes' odd degree-11 polynomial for |x| < 0.625, `1 - 2 / (exp(2|x|) + 1)`
  above (clamped at |x| = 9, where tanh is 1 in f32): **<= 2 ulp** (measured 1.3; LSTM / GRU
  gates).
* `softmax(x, axis)`: max-subtracted, with this `exp`, summed in f32 and divided (the same
  formula as TVM's `topi.nn.softmax`); over the last axis the max and the sum are
  lane-split (`_lane_reduce`), so the generic schedule vectorizes along the row instead of
  gathering across rows (BERT's 12x128x128 softmax: 287 -> 105 us on AVX-512).
* `layer_norm(x, gamma, beta)` over the last axis: mean, variance of `x - mean` (two passes,
  lane-split sums), normalized, scaled, shifted.

`legalize_map(fast_math)` gives the `relax.transform.LegalizeOps` overrides; `codegen`
installs softmax / layer norm / sigmoid for every CPU build and exp / erf / tanh unless
`--fast-math` (which uses TVM's own, less accurate approximations of those).
"""
from __future__ import annotations

from tvm import te, tirx

_F32 = "float32"

# erf: (centre, coefficients highest degree first); "small" is Q(t) then c0 (see above)
ERF_SMALL = (0.004730060696601868, -0.026763595640659332, 0.11282932758331299,
             -0.37612614035606384, 1.128379225730896)
ERF_PIECES = (  # (upper bound of |x|, centre, coefficients)
    (1.4, 0.949999988079071, (
        -0.00018814232316799462, 0.00020774493168573827, 0.0011406773701310158,
        -0.0024808438029140234, -0.00379243609495461, 0.01687767170369625,
        -0.0010048995027318597, -0.06974079459905624, 0.0865853801369667, 0.1227944940328598,
        -0.43473830819129944, 0.4576192796230316, 0.8208907842636108)),
    (2.5, 1.9500000476837158, (
        1.935082400450483e-05, 7.981472299434245e-05, -0.0003194774326402694,
        0.0001018240800476633, 0.001582115306518972, -0.004016823600977659,
        0.0017533920472487807, 0.012762866914272308, -0.03768454119563103, 0.05543726310133934,
        -0.049100376665592194, 0.025179680436849594, 0.9941793084144592)),
    (3.92, 3.2100000381469727, (
        2.3602419787494e-06, 2.0644120013457723e-05, -9.291635797126219e-05,
        0.0002007039583986625, -0.0003144553629681468, 0.0003823682782240212,
        -0.00035610434133559465, 0.00024709702120162547, -0.00012132147821830586,
        3.7794012314407155e-05, 0.9999943375587463)),
)
ERF_SMALL_BOUND = 0.5

# exp (Cephes expf)
_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
             1.6666665459e-1, 5.0000001201e-1)
EXP_MIN, EXP_MAX = -87.33654, 88.72283


def _c(v: float):
    return tirx.const(v, _F32)


def _fma(a, b, c):
    return tirx.call_intrin(_F32, "tirx.fma", a, b, c)


def _horner(coefs, u):
    acc = _c(coefs[0])
    for c in coefs[1:]:
        acc = _fma(acc, u, _c(c))
    return acc


# The functions below build one expression tree; intermediate values are Python variables
# reused in it, not `tirx.Let`s: MetaSchedule's flop estimator (task extraction of `qcompile
# tune`) has no rule for Let and raises. LLVM's CSE merges the repeated pure subexpressions.
def exp(x):
    """f32 `e^x` (<= 2 ulp on [EXP_MIN, EXP_MAX]) from vectorizable operations."""
    xc = tirx.max(tirx.min(x, _c(EXP_MAX)), _c(EXP_MIN))
    n = tirx.floor(xc * _c(_LOG2E) + _c(0.5))
    r = xc - n * _c(_LN2_HI)
    r = r - n * _c(_LN2_LO)
    p = _horner(_EXP_POLY, r) * (r * r) + r + _c(1.0)
    # 2^n with n in [-126, 128]: split as 2^(n - n//2) * 2^(n//2) so n = 128 (x near
    # EXP_MAX) stays finite in each factor
    ni = n.astype("int32")
    half = tirx.shift_right(ni, tirx.const(1, "int32"))
    s1 = tirx.reinterpret(_F32, tirx.shift_left(half + 127, tirx.const(23, "int32")))
    s2 = tirx.reinterpret(_F32, tirx.shift_left(ni - half + 127, tirx.const(23, "int32")))
    y = tirx.Select(x < _c(EXP_MIN), _c(0.0), p * s1 * s2)
    return tirx.Select(x > _c(EXP_MAX), _c(float("inf")), y)


def erf(x):
    """f32 `erf(x)` (<= 2 ulp) from vectorizable operations."""
    a = tirx.abs(x)
    t = x * x
    q = _horner(ERF_SMALL[:-1], t)
    # one rounding for the leading term (explicit fma, not left to FP contraction)
    small = _fma(x, _c(ERF_SMALL[-1]), x * (t * q))
    big = _c(1.0)
    for bound, centre, coefs in reversed(ERF_PIECES):
        big = tirx.Select(a < _c(bound), _horner(coefs, a - _c(centre)), big)
    big = tirx.Select(x < _c(0.0), _c(0.0) - big, big)
    return tirx.Select(a < _c(ERF_SMALL_BOUND), small, big)


def sigmoid(x):
    """f32 `1 / (1 + e^-x)` with the `exp` above (<= 3 ulp where the result is a normal
    f32, x >= -87.3; 0 below, where the true value is under 1.2e-38)."""
    return _c(1.0) / (_c(1.0) + exp(_c(0.0) - x))


# tanh (Cephes tanhf): odd polynomial below 0.625, 1 - 2 / (e^2|x| + 1) above
TANH_SMALL_BOUND = 0.625
_TANH_POLY = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
              -3.33332819422e-1)


def tanh(x):
    """f32 `tanh(x)` (<= 2 ulp) from vectorizable operations; +-1 beyond |x| = 9."""
    a = tirx.abs(x)
    z = x * x
    small = _fma(x * z, _horner(_TANH_POLY, z), x)
    big = _c(1.0) - _c(2.0) / (exp(tirx.min(a, _c(9.0)) * _c(2.0)) + _c(1.0))
    big = tirx.Select(x < _c(0.0), _c(0.0) - big, big)
    return tirx.Select(a < _c(TANH_SMALL_BOUND), small, big)


# cosh / sinh: TVM 0.27 has no lowering rule for tirx.cosh / tirx.sinh on LLVM targets (the
# build stopped with "unknown intrinsic"), so they are always qcompile's: e^a / 2 + e^-a / 2
# with a = |x| (e^(a - 88) * e^88 / 2 above 88, where e^a alone overflows but cosh stays
# finite), and for sinh below |x| = 1 Cephes' odd polynomial (no cancellation between e^x
# and e^-x)
_SINH_POLY = (2.03721912945e-4, 8.33028376239e-3, 1.66667160211e-1)
_HALF_EXP_SWITCH = 88.0


def _half_exp_pair(a, sign):
    """e^a / 2 + sign * e^-a / 2 for a >= 0 (finite up to a = 89.4)."""
    ea = exp(tirx.min(a, _c(_HALF_EXP_SWITCH)))
    near = _c(0.5) * ea + _c(sign * 0.5) / ea
    # above the switch e^-a / 2 is below f32's resolution of the result: e^(a - 88) * e^88 / 2
    # (a - 88 is exact for a in [88, 176])
    return tirx.Select(a < _c(_HALF_EXP_SWITCH), near,
                       exp(a - _c(_HALF_EXP_SWITCH)) * _c(8.258181330680653e+37))


def cosh(x):
    """f32 `cosh(x)` from vectorizable operations (the exp above: a few ulp)."""
    return _half_exp_pair(tirx.abs(x), 1.0)


def sinh(x):
    """f32 `sinh(x)`: Cephes' odd polynomial below |x| = 1, e^|x| / 2 - e^-|x| / 2 with the
    sign of x above."""
    a = tirx.abs(x)
    z = x * x
    small = _fma(_horner(_SINH_POLY, z) * z, x, x)
    big = _half_exp_pair(a, -1.0)
    big = tirx.Select(x < _c(0.0), _c(0.0) - big, big)
    return tirx.Select(a <= _c(1.0), small, big)


def _elementwise_te(fn, name: str):
    """The TE compute applying the scalar function `fn` to every element (block `name`)."""
    def compute(x: te.Tensor) -> te.Tensor:
        return te.compute(x.shape, lambda *i: fn(x[i]), name=name)

    compute.__name__ = f"{fn.__name__}_te"
    return compute


exp_te = _elementwise_te(exp, "vexp")
erf_te = _elementwise_te(erf, "verf")
sigmoid_te = _elementwise_te(sigmoid, "vsigmoid")
tanh_te = _elementwise_te(tanh, "vtanh")
cosh_te = _elementwise_te(cosh, "vcosh")
sinh_te = _elementwise_te(sinh, "vsinh")


# partial reductions keep this many lanes (a multiple of every x86 vector width in f32)
REDUCE_LANES = 16


def _lane_reduce(x: te.Tensor, reducer, name: str) -> te.Tensor:
    """Reduce the last axis of `x` in two steps: first `REDUCE_LANES` partial results, each
    over every `REDUCE_LANES`-th element (a spatial lane axis over contiguous memory, which
    the generic schedule vectorizes), then those lanes. A one-step reduction over the last
    axis gets vectorized across rows instead: a gather per vector (BERT's softmax rows)."""
    *lead, n = x.shape
    n = int(n)
    lanes = REDUCE_LANES
    ko = te.reduce_axis((0, n // lanes), f"{name}_ko")
    part = te.compute(tuple(lead) + (lanes,),
                      lambda *i: reducer(x[i[:-1] + (ko * lanes + i[-1],)], axis=ko),
                      name=f"{name}_part")
    kl = te.reduce_axis((0, lanes), f"{name}_kl")
    return te.compute(tuple(lead), lambda *i: reducer(part[i + (kl,)], axis=kl), name=name)


def softmax_te(x: te.Tensor, axis: int = -1) -> te.Tensor:
    """max-subtracted softmax over `axis`. Over the last axis, when its length is a multiple
    of `REDUCE_LANES`, the max and the sum are lane-split (`_lane_reduce`): the sum's
    association then differs from a sequential one (f32 rounding, within ~1e-7 relative)."""
    nd = len(x.shape)
    axis = axis % nd

    def outer(idx):
        return idx[:axis] + idx[axis + 1:]

    if axis == nd - 1 and int(x.shape[axis]) % REDUCE_LANES == 0 \
            and int(x.shape[axis]) > REDUCE_LANES:
        mx = _lane_reduce(x, te.max, "softmax_max")
        ex = te.compute(x.shape, lambda *i: exp(x[i] - mx[outer(i)]), name="softmax_exp")
        sm = _lane_reduce(ex, te.sum, "softmax_sum")
        return te.compute(x.shape, lambda *i: ex[i] / sm[outer(i)], name="softmax_norm")

    k1 = te.reduce_axis((0, x.shape[axis]), "k1")
    k2 = te.reduce_axis((0, x.shape[axis]), "k2")

    def at(idx, k):  # an index over the reduced shape, with `k` inserted at `axis`
        return idx[:axis] + (k,) + idx[axis:]

    red_shape = tuple(x.shape[:axis]) + tuple(x.shape[axis + 1:])
    mx = te.compute(red_shape, lambda *i: te.max(x[at(i, k1)], axis=k1), name="softmax_max")
    ex = te.compute(x.shape, lambda *i: exp(x[i] - mx[outer(i)]), name="softmax_exp")
    sm = te.compute(red_shape, lambda *i: te.sum(ex[at(i, k2)], axis=k2), name="softmax_sum")
    return te.compute(x.shape, lambda *i: ex[i] / sm[outer(i)], name="softmax_norm")


def layer_norm_te(x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, eps: float,
                  center: bool = True, scale: bool = True) -> te.Tensor:
    """Layer norm over the last axis: mean, then the variance of `x - mean` (two passes,
    lane-split sums as in `_lane_reduce`), `(x - mean) / sqrt(var + eps) * gamma + beta`."""
    n = int(x.shape[-1])
    inv_n = _c(1.0 / n)
    mean_sum = _lane_reduce(x, te.sum, "ln_sum")
    mean = te.compute(mean_sum.shape, lambda *i: mean_sum[i] * inv_n, name="ln_mean")
    dev = te.compute(x.shape, lambda *i: x[i] - mean[i[:-1]], name="ln_dev")
    sq = te.compute(x.shape, lambda *i: dev[i] * dev[i], name="ln_sq")
    var_sum = _lane_reduce(sq, te.sum, "ln_varsum")
    rstd = te.compute(var_sum.shape,
                      lambda *i: _c(1.0) / tirx.sqrt(var_sum[i] * inv_n + _c(eps)),
                      name="ln_rstd")

    def fn(*i):
        y = dev[i] * rstd[i[:-1]]
        if scale:
            y = y * gamma[i[-1]]
        if center:
            y = y + beta[i[-1]]
        return y

    return te.compute(x.shape, fn, name="layer_norm")


def _legalize_layer_norm(bb, call):
    x = call.args[0]
    shape = x.ty.shape
    axes = [int(a) for a in call.attrs.axes]
    nd = len(shape) if shape is not None else 0
    ok = (_is_f32(call) and nd >= 1 and [a % nd for a in axes] == [nd - 1]
          and isinstance(shape[-1], tirx.IntImm) and int(shape[-1]) % REDUCE_LANES == 0
          and int(shape[-1]) > REDUCE_LANES
          and len(call.args[1].ty.shape) == 1 and len(call.args[2].ty.shape) == 1)
    if not ok:
        return _tvm_default(bb, call)
    return bb.call_te(layer_norm_te, x, call.args[1], call.args[2], float(call.attrs.epsilon),
                      bool(call.attrs.center), bool(call.attrs.scale),
                      primfunc_name_hint="layer_norm")


def _is_f32(call) -> bool:
    from qcompile.relay_passes._common import loose_dtype

    return loose_dtype(call) == _F32


def _tvm_default(bb, call):
    """TVM's own legalization (other dtypes than f32)."""
    import tvm

    return tvm.ir.Op.get(call.op.name).get_attr("FLegalize")(bb, call)


def _unary_legalizer(te_fn, name: str):
    """A legalization of a unary f32 op as `te_fn` (PrimFunc `name`); TVM's own otherwise."""
    def legalize(bb, call):
        if not _is_f32(call):
            return _tvm_default(bb, call)
        return bb.call_te(te_fn, call.args[0], primfunc_name_hint=name)

    return legalize


_legalize_exp = _unary_legalizer(exp_te, "vexp")
_legalize_erf = _unary_legalizer(erf_te, "verf")
_legalize_sigmoid = _unary_legalizer(sigmoid_te, "vsigmoid")
_legalize_tanh = _unary_legalizer(tanh_te, "vtanh")
_legalize_cosh = _unary_legalizer(cosh_te, "vcosh")
_legalize_sinh = _unary_legalizer(sinh_te, "vsinh")


def _legalize_softmax(bb, call):
    if not _is_f32(call):
        return _tvm_default(bb, call)
    return bb.call_te(softmax_te, call.args[0], int(call.attrs.axis),
                      primfunc_name_hint="softmax")


def legalize_map(fast_math: bool = False) -> dict:
    """`LegalizeOps(customize_legalize_map=...)` entries for CPU builds: softmax, layer
    norm (lane-split reductions), sigmoid, cosh and sinh always; exp, erf and tanh for the
    exact build
    only (`--fast-math` keeps TVM's own approximations of those)."""
    out = {"relax.nn.softmax": _legalize_softmax, "relax.nn.layer_norm": _legalize_layer_norm,
           # TVM's fast-math transform has no sigmoid: ours in both builds
           "relax.sigmoid": _legalize_sigmoid,
           # TVM has no LLVM lowering of cosh / sinh at all: ours in both builds
           "relax.cosh": _legalize_cosh, "relax.sinh": _legalize_sinh}
    if not fast_math:
        out.update({"relax.exp": _legalize_exp, "relax.erf": _legalize_erf,
                    "relax.tanh": _legalize_tanh})
    return out
