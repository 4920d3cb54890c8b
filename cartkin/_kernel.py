"""The batched Rosenbrock solve as one GPU kernel: each patient's step stays in registers.

:func:`cartkin._batched.solve_batch` writes a step as array operations over the whole batch, and
XLA runs each of its loop iterations as some thirty kernels that pass the stages through the
GPU's memory (``benchmarks/README.md``: 0.8 ms per iteration for 262,144 patients on an H200).
Here the same method runs inside one Pallas (Triton) kernel: a program takes a block of
patients (lanes), loads its parameters once, and runs its own adaptive loop to the last saved
time, so memory is touched only for the inputs and the saved states, and a block waits only for
its own slowest patient.

The model's vector field is written for one patient, on a state vector. To run it on lanes,
:func:`lanewise` traces it once for one patient and evaluates the trace element by element: an
array of the trace is a numpy array of lane vectors (or of constants), elementwise primitives
apply to each element, and slicing, stacking and reshaping move the elements. So the kernel only
ever sees vectors over lanes, which is what Triton compiles well.

Semantics are those of :func:`cartkin._batched.solve_batch` with ``interpolate=False`` and one
grid of saved times for all patients (the same segments, step-size control, status codes and
``max_steps`` per segment), and ``tests/test_kernel.py`` checks that both give the same numbers.
On a CPU the kernel runs in Pallas's interpreter (for tests only: it is slow).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.extend.core import Var as _Var

from ._batched import (
    _ELEMENTWISE,
    _FAC_MAX,
    _FAC_MIN,
    _SAFETY,
    _STRUCTURAL,
    RODAS5,
    RosenbrockTableau,
    _colour_columns,
    _depends_on_t,
    _extends,
    _inverse,
    _matvec,
    iteration_matrix,
    jacobian_pattern,
    observed,
    pick_rows,
    segments,
)
from ._models.base import ODEModel
from ._solve import Status

# ---------------------------------------------------------------------------------------------
# a one-patient function evaluated on lanes


_CALLS = ("pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "remat", "checkpoint")


_REDUCE = {"reduce_sum": jax.lax.add_p, "reduce_max": jax.lax.max_p, "reduce_min": jax.lax.min_p}


class NotLanewise(NotImplementedError):
    """The model uses an operation that :func:`lanewise` cannot split into lanes."""


def _is_const(x) -> bool:
    return isinstance(x, (np.generic, np.ndarray, int, float, bool))


def _move(eqn, ins):
    """Data movement (:data:`cartkin._batched._STRUCTURAL`) on object arrays: the primitive
    itself applied to the elements' numbers (as :func:`cartkin._batched.jacobian_pattern`
    applies it to indicator arrays), then the elements gathered by number."""
    offsets = np.cumsum([0] + [x.size for x in ins[:-1]])
    with jax.ensure_compile_time_eval():  # concrete even inside a jit trace
        numbers = [np.arange(x.size, dtype=np.int32).reshape(x.shape) + o
                   for x, o in zip(ins, offsets, strict=True)]
        moved = np.asarray(eqn.primitive.bind(*numbers, **eqn.params))
    return np.concatenate([x.ravel() for x in ins])[moved.ravel()].reshape(moved.shape)


def lanewise(fn, *example):
    """``fn`` (written for one patient: scalars and small arrays) as a function of lane vectors.

    Returns ``run(*args)`` taking the same pytree structure as ``example`` with every array
    replaced by a numpy object array of the same shape whose elements are JAX arrays of shape
    ``(B,)`` (one value per lane), and returning the outputs in the same form. Raises
    :class:`NotLanewise` for a primitive it does not know.
    """
    closed = jax.make_jaxpr(fn)(*example)
    out_tree = jax.tree.structure(jax.eval_shape(fn, *example))

    def lanes_of(elements):
        for e in elements:
            if not _is_const(e):
                return e.shape
        return None

    def elementwise(prim, params, ins, avals, out_aval):
        shape = out_aval.shape
        ins = [np.broadcast_to(x, shape) for x in ins]
        out = np.empty(shape, object)
        for idx in np.ndindex(*shape):
            args = [x[idx] for x in ins]
            lane_shape = lanes_of(args)
            if lane_shape is None:  # constants only: fold now
                with jax.ensure_compile_time_eval():
                    vals = [np.asarray(a, av.dtype) for a, av in zip(args, avals, strict=True)]
                    out[idx] = np.asarray(prim.bind(*vals, **params))[()]
            else:
                vals = [
                    jnp.full(lane_shape, a, av.dtype) if _is_const(a) else a
                    for a, av in zip(args, avals, strict=True)
                ]
                out[idx] = prim.bind(*vals, **params)
        return out

    def reduce(prim, x, axes, in_aval, out_aval):
        # a left fold of the reduced elements with the matching binary primitive
        x = np.moveaxis(x, tuple(axes), tuple(range(-len(axes), 0)))
        x = x.reshape(x.shape[: x.ndim - len(axes)] + (-1,))
        acc = x[..., 0]
        av = jax.core.ShapedArray((), in_aval.dtype)
        for i in range(1, x.shape[-1]):
            acc = elementwise(prim, {}, [acc, x[..., i]], [av, av], out_aval)
        return np.asarray(acc, object).reshape(out_aval.shape)

    def run_jaxpr(jaxpr, consts, args):
        env = {}

        def read(v):
            if not isinstance(v, _Var):
                return np.asarray(np.asarray(v.val), object)
            return env[v]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = np.asarray(np.asarray(c), object)
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            ins = [read(v) for v in eqn.invars]
            if all(_is_const(e) for x in ins for e in x.flat) and not eqn.params.get("jaxpr"):
                # no lane in it (iota, constants): evaluate now
                with jax.ensure_compile_time_eval():
                    vals = [np.asarray(x.tolist(), v.aval.dtype).reshape(x.shape)
                            for x, v in zip(ins, eqn.invars, strict=True)]
                    res = eqn.primitive.bind(*vals, **eqn.params)
                res = res if eqn.primitive.multiple_results else [res]
                outs = [np.asarray(np.asarray(r), object) for r in res]
            elif name in _ELEMENTWISE and len(eqn.outvars) == 1:
                outs = [elementwise(eqn.primitive, eqn.params, ins,
                                    [v.aval for v in eqn.invars], eqn.outvars[0].aval)]
            elif name in _REDUCE and len(eqn.outvars) == 1:
                outs = [reduce(_REDUCE[name], ins[0], eqn.params["axes"],
                               eqn.invars[0].aval, eqn.outvars[0].aval)]
            elif name in _CALLS:
                sub = next(p for p in eqn.params.values()
                           if hasattr(p, "eqns") or hasattr(getattr(p, "jaxpr", None), "eqns"))
                inner = sub if hasattr(sub, "eqns") else sub.jaxpr
                inner_consts = [] if hasattr(sub, "eqns") else sub.consts
                outs = run_jaxpr(inner, inner_consts, ins[len(ins) - len(inner.invars):])
            elif name in _STRUCTURAL and len(eqn.outvars) == 1:  # reductions: above
                outs = [_move(eqn, ins)]
            else:
                raise NotLanewise(
                    f"the batched GPU kernel cannot split the primitive {name!r} into lanes"
                )
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = np.asarray(o, object) if not isinstance(o, np.ndarray) else o
        return [read(v) for v in jaxpr.outvars]

    def run(*args):
        flat = jax.tree.leaves(args, is_leaf=_is_obj)
        outs = run_jaxpr(closed.jaxpr, closed.consts, flat)
        return jax.tree.unflatten(out_tree, outs)

    return run


def _obj(values, shape=()):
    """A numpy object array of ``shape`` holding ``values`` (lane vectors, possibly tracers)."""
    out = np.empty(shape, object)
    if shape == ():
        out[()] = values
    else:
        for i, v in enumerate(values):
            out[i] = v
    return out


def _is_obj(x) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == object


def _vec(x, like):
    """A lane vector (a constant is broadcast like ``like``)."""
    return jnp.full(like.shape, x, like.dtype) if _is_const(x) else x


# ---------------------------------------------------------------------------------------------
# the Rosenbrock step on lanes


def _lane_step(vf, tab: RosenbrockTableau, n: int, pattern, timed: bool):
    """``step(t, y, h, th, rtol, atol) -> (y_new, scaled RMS error)`` with ``y`` a list of ``n``
    lane vectors; the same arithmetic as :func:`cartkin._batched.make_step`."""
    groups = _colour_columns(pattern)

    def jac(t, y, th):
        J = [[0.0] * n for _ in range(n)]
        ones = jnp.ones_like(t)
        for cols in groups:
            def f(*yc, cols=cols):
                u = list(y)
                for j, v in zip(cols, yc, strict=True):
                    u[j] = v
                return vf(t, u, th)

            col = jax.jvp(f, tuple(y[j] for j in cols), tuple(ones for _ in cols))[1]
            for j in cols:
                for i in range(n):
                    if pattern[i][j]:
                        J[i][j] = col[i]
        return J

    def step(t, y, h, th, rtol, atol):
        J = jac(t, y, th)
        inv_h = 1.0 / h
        Winv = _inverse(iteration_matrix(J, inv_h * (1.0 / tab.gamma), pattern))
        ft = jax.jvp(lambda s: vf(s, y, th), (t,), (jnp.ones_like(t),))[1] if timed else None
        ks, us = [], []
        for i in range(tab.stages):
            if i > 0 and _extends(tab.a[i], tab.a[i - 1]):
                u = [a + b for a, b in zip(us[-1], ks[-1], strict=True)]
            else:
                u = list(y)
                for aij, kj in zip(tab.a[i], ks, strict=True):
                    if aij != 0.0:
                        u = [a + aij * b for a, b in zip(u, kj, strict=True)]
            us.append(u)
            rhs = vf(t + tab.c[i] * h, u, th)
            for cij, kj in zip(tab.C[i], ks, strict=True):
                if cij != 0.0:
                    rhs = [a + (cij * inv_h) * b for a, b in zip(rhs, kj, strict=True)]
            if timed and tab.d[i] != 0.0:
                rhs = [a + (tab.d[i] * h) * b for a, b in zip(rhs, ft, strict=True)]
            ks.append(_matvec(Winv, rhs))
        if _extends(tab.b, tab.a[-1]):
            y_new = [a + b for a, b in zip(us[-1], ks[-1], strict=True)]
        else:
            y_new = list(y)
            for bj, kj in zip(tab.b, ks, strict=True):
                if bj != 0.0:
                    y_new = [a + bj * b for a, b in zip(y_new, kj, strict=True)]
        err = None
        for r in range(n):
            v = sum(ej * kj[r] for ej, kj in zip(tab.e, ks, strict=True) if ej != 0.0)
            sc = atol + rtol * jnp.maximum(jnp.abs(y[r]), jnp.abs(y_new[r]))
            q = (v / sc) ** 2
            err = q if err is None else err + q
        return y_new, jnp.sqrt(err * (1.0 / n))

    return step


def _any(mask):
    return jnp.max(mask.astype(jnp.int32)) > 0


# ---------------------------------------------------------------------------------------------
# the solver


def _segment_names(model: ODEModel) -> tuple[str, ...]:
    """The names of the parameters the vector field reads (after :meth:`at_segment`)."""
    th = {k: jnp.zeros(()) for k in model.parameters}
    return tuple(jax.eval_shape(model.at_segment, th, jnp.zeros(())))


def kernel_supported(model: ODEModel) -> bool:
    """Whether :func:`solve_batch_kernel` can run ``model`` (its vector field splits into lanes)."""
    try:
        _lanes_vf(model, _segment_names(model))
    except NotLanewise:
        return False
    return True


def _lanes_vf(model, names: tuple[str, ...]):
    try:
        return _vector_field_on_lanes(model, names)
    except TypeError:  # a model that cannot be hashed: not cached
        return _vector_field_on_lanes.__wrapped__(model, names)


@functools.lru_cache(maxsize=32)
def _vector_field_on_lanes(model, names: tuple[str, ...]):
    """``vf(t, y, th)`` on lane vectors: ``y`` a list of ``n``, ``th`` one per name of ``names``."""
    n = len(model.states)

    def one(t, y, th):
        return model.vector_field(t, y, dict(zip(names, th, strict=True)))

    zeros = tuple(jnp.zeros(()) for _ in names)
    run = lanewise(one, jnp.zeros(()), jnp.zeros(n), zeros)
    # check every primitive once, on a symbolic lane shape
    jax.eval_shape(
        lambda t, y, th: [_vec(o, t) for o in run(_obj(t), _obj(y, (n,)),
                                                   tuple(_obj(x) for x in th))],
        jax.ShapeDtypeStruct((8,), float), [jax.ShapeDtypeStruct((8,), float)] * n,
        tuple(jax.ShapeDtypeStruct((8,), float) for _ in names),
    )

    def vf(t, y, th):
        out = run(_obj(t), _obj(y, (n,)), tuple(_obj(x) for x in th))
        return [_vec(o, t) for o in out]

    return vf


def solve_batch_kernel(
    model: ODEModel,
    theta,
    times,
    ev_time,
    ev_dose,
    ev_log_effect,
    *,
    rtol,
    atol,
    max_steps: int,
    tableau: RosenbrockTableau = RODAS5,
    block: int = 32,
    num_warps: int = 1,
    interpret: bool | None = None,
):
    """:func:`cartkin._batched.solve_batch` (``interpolate=False``, one grid of saved times) as a
    Pallas kernel; same arguments and results ``(states (N, T, n), outputs, status (N,),
    {"accepted", "rejected"} per patient)``.

    ``block``: patients per program (a power of two); ``num_warps``: Triton warps per program.
    ``interpret``: run in Pallas's interpreter (default: on a CPU backend).
    """
    names = list(model.parameters)
    theta = {k: jnp.asarray(theta[k], float) for k in names}
    times = jnp.asarray(times, float)
    if times.ndim != 1:
        raise ValueError("the kernel solve takes one grid of saved times (T,) for all patients")
    N = theta[names[0]].shape[0]
    T = times.shape[0]
    n = len(model.states)
    dtype = times.dtype
    seg = segments(model, theta, times, ev_time, ev_dose, ev_log_effect, rtol, atol)
    n_seg, K = seg.n_seg, seg.K
    Kd = seg.dose_vec.shape[0]
    seg_names = tuple(seg.th_seg)
    P = len(seg_names)
    timed = _depends_on_t(model, n, seg.th_seg)
    pattern = jacobian_pattern(model, seg.th_seg)
    step = _lane_step(_lanes_vf(model, seg_names), tableau, n, pattern, timed)
    order = float(tableau.err_order)
    OK, MAXS = int(Status.OK), int(Status.MAX_STEPS)
    max_it = n_seg * (max_steps + 2) + 8

    B = block
    Np = -(-N // B) * B

    def lanes_last(x):
        pad = [(0, 0)] * (x.ndim - 1) + [(0, Np - N)]
        return jnp.pad(x, pad, mode="edge")

    th_in = lanes_last(jnp.stack([seg.th_seg[k] for k in seg_names], axis=1))  # (n_seg, P, Np)
    end_in = lanes_last(seg.seg_end)  # (n_seg, Np)
    dose_in = lanes_last(seg.dose_vec)  # (Kd, n, Np)
    init_in = lanes_last(jnp.concatenate([seg.y0, seg.t0[None], seg.h0[None]], axis=0))
    tols = jnp.stack([jnp.asarray(rtol, dtype), jnp.asarray(atol, dtype)])
    tol_in = jnp.broadcast_to(tols[:, None], (2, B))
    grid_in = jnp.broadcast_to(times[:, None], (T, B))

    def kernel(th_ref, end_ref, dose_ref, init_ref, tol_ref, grid_ref, ys_ref, info_ref):
        rtol_v, atol_v = tol_ref[0, :], tol_ref[1, :]
        y = [init_ref[i, :] for i in range(n)]
        t, h = init_ref[n, :], init_ref[n + 1, :]
        zero = jnp.zeros((B,), jnp.int32)
        th = [th_ref[0, p, :] for p in range(P)]
        end = end_ref[0, :]
        state = (t, h, y, zero, th, end, zero + OK, zero, zero, zero)

        def interval(j, state):
            t_save = grid_ref[j, :]

            def need(s):
                t, h, y, k, th, end, status, nseg, acc, rej = s
                pending = (k < n_seg - 1) & (t >= end)
                return (status == OK) & (pending | (t < t_save))

            def cond(c):
                return (c[0] < max_it) & _any(need(c[1]))

            def body(c):
                it, (t, h, y, k, th, end, status, nseg, acc, rej) = c
                live = status == OK
                # 1. an event that ends the current segment at t: jump, next segment
                fire = live & (k < n_seg - 1) & (t >= end)

                def on_fire(a):
                    y, k, th, end, nseg = a
                    kd = jnp.minimum(k, K - 1) if K > 0 else k
                    y = [jnp.where(fire, y[i] + pick_rows(lambda s, i=i: dose_ref[s, i, :], kd, Kd),
                                   y[i]) for i in range(n)]
                    k = k + fire.astype(jnp.int32)
                    th = [jnp.where(fire, pick_rows(lambda s, p=p: th_ref[s, p, :], k, n_seg),
                                    th[p]) for p in range(P)]
                    end = jnp.where(fire, pick_rows(lambda s: end_ref[s, :], k, n_seg), end)
                    nseg = jnp.where(fire, 0, nseg)
                    return y, k, th, end, nseg

                y, k, th, end, nseg = jax.lax.cond(
                    _any(fire), on_fire, lambda a: a, (y, k, th, end, nseg))
                pending = (k < n_seg - 1) & (t >= end)
                # 2. one step attempt, shortened to end on the next boundary or saved time
                go = live & ~pending & (t < t_save)
                status = jnp.where(go & (nseg >= max_steps), MAXS, status)
                go = go & (nseg < max_steps)
                target = jnp.minimum(jnp.minimum(t + h, end), t_save)
                h_eff = jnp.where(go, target - t, 1.0)
                y_new, err = step(t, y, h_eff, th, rtol_v, atol_v)
                finite = jnp.isfinite(err)
                for v in y_new:
                    finite = finite & jnp.isfinite(v)
                err = jnp.where(finite, err, jnp.inf)
                accept = go & (err <= 1.0)
                t = jnp.where(accept, target, t)
                y = [jnp.where(accept, a, b) for a, b in zip(y_new, y, strict=True)]
                fac = _SAFETY * jnp.where(err > 0, err, 1e-10) ** (-1.0 / order)
                fac = jnp.minimum(jnp.maximum(fac, _FAC_MIN), jnp.where(accept, _FAC_MAX, 1.0))
                h_new = h_eff * fac
                shortened = target < t + h  # t has advanced: as in _batched.solve_batch
                h_new = jnp.where(accept & shortened, jnp.maximum(h_new, h), h_new)
                collapsed = go & ~accept & (h_new < 1e-14 * jnp.maximum(1.0, jnp.abs(t)))
                status = jnp.where(collapsed, int(Status.SOLVER_FAILED), status)
                h = jnp.where(go, h_new, h)
                acc = acc + accept.astype(jnp.int32)
                rej = rej + (go & ~accept).astype(jnp.int32)
                nseg = nseg + go.astype(jnp.int32)
                return it + 1, (t, h, y, k, th, end, status, nseg, acc, rej)

            _, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
            t, h, y, k, th, end, status, nseg, acc, rej = state
            status = jnp.where(need(state), MAXS, status)  # out of iterations
            ok = status == OK
            for r in range(n):
                ys_ref[j, r, :] = jnp.where(ok, y[r], jnp.nan)
            return (t, h, y, k, th, end, status, nseg, acc, rej)

        state = jax.lax.fori_loop(0, T, interval, state)
        status, acc, rej = state[6], state[8], state[9]
        info_ref[0, :] = status
        info_ref[1, :] = acc
        info_ref[2, :] = rej

    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    extra = {}
    if not interpret:
        from jax.experimental.pallas import triton as plt

        extra["compiler_params"] = plt.CompilerParams(num_warps=num_warps, num_stages=1)
    ys, info = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((T, n, Np), dtype),
                   jax.ShapeDtypeStruct((3, Np), jnp.int32)),
        grid=(Np // B,),
        in_specs=[
            pl.BlockSpec((n_seg, P, B), lambda i: (0, 0, i)),
            pl.BlockSpec((n_seg, B), lambda i: (0, i)),
            pl.BlockSpec((Kd, n, B), lambda i: (0, 0, i)),
            pl.BlockSpec((n + 2, B), lambda i: (0, i)),
            pl.BlockSpec((2, B), lambda i: (0, 0)),
            pl.BlockSpec((T, B), lambda i: (0, 0)),
        ],
        out_specs=[
            pl.BlockSpec((T, n, B), lambda i: (0, 0, i)),
            pl.BlockSpec((3, B), lambda i: (0, i)),
        ],
        interpret=interpret,
        **extra,
    )(th_in, end_in, dose_in, init_in, tol_in, grid_in)

    ys = jnp.transpose(ys[:, :, :N], (2, 0, 1))  # (N, T, n)
    status, acc, rej = info[0, :N], info[1, :N], info[2, :N]
    out, status = observed(model, times, ys, theta, status)
    return ys, out, status, {"accepted": acc, "rejected": rej}
