"""Simulation: one patient -> a batch (vmap) -> chunks of fixed shape -> devices (sharding).

:func:`simulate` takes parameters for N patients and, optionally, D regimens (dose levels); it
runs the N x D solves in chunks of a fixed size (padded, so that a new N does not recompile), each
chunk split over the visible devices with ``jax.shard_map`` when there are several, and returns a
:class:`SimResult` with arrays and a tidy pandas frame.

Across processes (``jax.distributed.initialize``, ``jax.process_count() > 1``) the devices of
every process form one mesh: each process holds the same full inputs, gives its own devices their
slices (``jax.make_array_from_callback``) and gets the full result back
(``multihost_utils.process_allgather``), so every process returns what one process would.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Mapping, Sequence

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils

from ._compile import jit
from ._devices import shard_map
from ._models.base import ClosedFormModel, Model, ODEModel
from . import _batched, _kernel
from ._progress import progress_bar
from ._regimen import Regimen, check_weight, regimen_events
from ._solve import Status, solve_patient

_MIN_PAD = 8


@dataclasses.dataclass(frozen=True)
class SimResult:
    """Simulated outputs.

    ``outputs[name]`` and ``status`` have shape ``(N, T)`` / ``(N,)``, or ``(D, N, T)`` /
    ``(D, N)`` when several regimens (dose levels) were simulated.
    """

    model: Model
    times: np.ndarray
    outputs: dict[str, np.ndarray]
    states: np.ndarray | None
    status: np.ndarray
    doses: np.ndarray | None = None

    @property
    def ok(self) -> np.ndarray:
        return self.status == Status.OK

    def failures(self) -> pd.DataFrame:
        """One row per failed solve: its index (dose level, patient) and the reason."""
        idx = np.argwhere(self.status != Status.OK)
        rows = []
        for ix in idx:
            code = Status(int(self.status[tuple(ix)]))
            rows.append({"index": tuple(int(i) for i in ix), "status": code.name, "reason": code.reason})
        return pd.DataFrame(rows, columns=["index", "status", "reason"])

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame: patient, [dose,] time, output, value, unit, status."""
        frames = []
        for name, val in self.outputs.items():
            unit = self.model.outputs[name].unit
            if val.ndim == 2:
                val = val[None]
                status = self.status[None]
                doses = [np.nan]
            else:
                status = self.status
                doses = self.doses
            D, N, T = val.shape
            frame = pd.DataFrame(
                {
                    "patient": np.tile(np.repeat(np.arange(N), T), D),
                    "dose": np.repeat(np.asarray(doses, float), N * T),
                    "time": np.tile(self.times, D * N),
                    "output": name,
                    "value": val.reshape(-1),
                    "unit": unit,
                    "status": np.repeat(np.array([Status(int(s)).name for s in status.reshape(-1)]), T),
                }
            )
            frames.append(frame)
        df = pd.concat(frames, ignore_index=True)
        if self.doses is None:
            df = df.drop(columns="dose")
        return df


def default_solver(model: Model) -> dfx.AbstractSolver:
    """Tsit5 for non-stiff models (measured: 23-32x faster than Kvaerno5), Kvaerno5 if stiff."""
    return dfx.Kvaerno5() if getattr(model, "stiff", False) else dfx.Tsit5()


METHODS = ("auto", "diffrax", "batched", "kernel")


def resolve_method(model: Model, solver, method: str) -> str:
    """``"diffrax"``, ``"batched"`` or ``"kernel"`` for this model and solver (see
    :func:`simulate`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if not isinstance(model, ODEModel):
        return "diffrax"  # closed form: no solver at all
    if method in ("batched", "kernel"):
        if solver is not None:
            raise ValueError(
                f"method={method!r} uses cartkin's own Rosenbrock solver: pass solver=None, or "
                "method='diffrax' to use the given diffrax solver"
            )
        if method == "kernel" and not _kernel.kernel_supported(model):
            raise ValueError(
                f"method='kernel': the vector field of {model.name} uses an operation the "
                "kernel cannot split into patients; use method='batched'"
            )
        return method
    if method == "auto":
        return "batched" if solver is None and getattr(model, "stiff", False) else "diffrax"
    return "diffrax"


def default_chunk_size(solver=None) -> int:
    """Patients per device per call: small on the CPU (cache), large on accelerators."""
    if jax.default_backend() != "cpu":
        return _GPU_KERNEL_CHUNK if solver == "kernel" else _GPU_CHUNK
    return _BATCHED_CPU_CHUNK if solver in ("batched", "kernel") else 256


_BATCHED_CPU_CHUNK = 256
# measured on an H200 (benchmarks/README.md): 262,144 patients per call ran the Hardiansyah
# workload at 886,592 patients/s, 65,536 at 693,536, 524,288 at 481,128
_GPU_CHUNK = 262144
# the kernel: 10^7 patients in calls of 2^20 at 6.8 million patients/s on an H200. Its program
# takes about a minute to compile per shape, so on a GPU a call pads to one of two sizes only
_GPU_KERNEL_CHUNK = 1 << 20
_GPU_KERNEL_SMALL = 1 << 16


def _padded_size(m: int, chunk: int, solver=None) -> int:
    if solver == "kernel" and jax.default_backend() != "cpu":
        return min(chunk, _GPU_KERNEL_SMALL) if m <= _GPU_KERNEL_SMALL else chunk
    if m >= chunk:
        return chunk
    return max(_MIN_PAD, 1 << (m - 1).bit_length())


@eqx.filter_jit
def _solve_batch(model, solver, theta, ev, times, rtol, atol, max_steps_static, interpolate=False):
    if solver == "kernel":
        _, out, status, _ = _kernel.solve_batch_kernel(
            model, theta, times, *ev, rtol=rtol, atol=atol, max_steps=max_steps_static,
        )
        return out, status
    if solver == "batched":
        _, out, status = _batched.solve_batch(
            model, theta, times, *ev, rtol=rtol, atol=atol, max_steps=max_steps_static,
            interpolate=interpolate,
        )
        return out, status
    controller = dfx.PIDController(rtol=rtol, atol=atol)

    def one(th, et, ed, ee):
        _, out, status = solve_patient(
            model, th, times, et, ed, ee, solver=solver, controller=controller,
            max_steps=max_steps_static,
        )
        return out, status

    return jax.vmap(one)(theta, *ev)


_SHARDED_CACHE: dict = {}


def _sharded_solver(model, solver, max_steps, devices, interpolate=False):
    """The jitted, sharded solve; cached, so that a second call with the same model, solver and
    devices does not compile again (a fresh ``jax.jit`` per call recompiled every time)."""
    key = (model, solver, max_steps, tuple(devices), interpolate)
    try:
        return _SHARDED_CACHE[key]
    except TypeError:  # unhashable model or solver: build without caching
        return _build_sharded_solver(model, solver, max_steps, devices, interpolate)
    except KeyError:
        pass
    out = _SHARDED_CACHE[key] = _build_sharded_solver(
        model, solver, max_steps, devices, interpolate
    )
    return out


def _build_sharded_solver(model, solver, max_steps, devices, interpolate=False):
    mesh = jax.sharding.Mesh(np.asarray(devices), ("patients",))
    spec = jax.sharding.PartitionSpec("patients")
    rep = jax.sharding.PartitionSpec()

    def body(theta, et, ed, ee, times, rtol, atol):
        return _solve_batch(
            model, solver, theta, (et, ed, ee), times, rtol, atol, max_steps, interpolate
        )

    # each device runs its own adaptive solves
    fn = shard_map(body, mesh, in_specs=(spec, spec, spec, spec, rep, rep, rep),
                   out_specs=(spec, spec))
    return jit(fn, cpu_options=False), jax.sharding.NamedSharding(mesh, spec)


def _chunk_rows(xp, theta, ev_time, ev_dose, ev_eff, ev_kg, weights, perm, lo, n, m, size):
    """Rows ``lo .. lo + size - 1`` of :func:`simulate`'s D x n solves (row r: regimen r // n,
    patient ``perm[r % n]``; rows past m, the padding, repeat row 0), gathered with ``xp``
    (numpy on the host, jax.numpy on a device) from the population and the per-regimen event
    tables: ``(theta, (event times, doses in cells, log-effects))``. A parameter of one value
    (shape (1,)) is that value for every row."""
    r = lo + xp.arange(size)
    r = xp.where(r < m, r, 0)
    d, i = r // n, perm[r % n]
    dose = ev_dose[d]
    dose = xp.where(ev_kg[d], dose * weights[i][:, None], dose)
    rows = {k: xp.broadcast_to(v, (size,)) if v.shape[0] == 1 else v[i] for k, v in theta.items()}
    return rows, (ev_time[d], dose, ev_eff[d])


# the same gather on the device: a chunk's inputs are not copied from the host
_device_rows = jax.jit(functools.partial(_chunk_rows, jnp), static_argnames="size")


def _global_array(x: np.ndarray, sharding) -> jax.Array:
    """A global array laid out as ``sharding`` from ``x``, which every process holds in full:
    each process fills only its own devices' slices (no cross-process traffic, no check)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx], dtype=x.dtype)


def _check_same_inputs(theta: Mapping, ev: Sequence, times, rtol, atol) -> None:
    """Across processes every process must pass the same inputs (same seed, same regimen): a
    checksum of them is compared across processes (one all-gather of an integer), so that a
    mismatch fails here instead of returning a mixture of two populations or hanging."""
    h = 0
    for x in [*(theta[k] for k in sorted(theta)), *ev, times, rtol, atol]:
        x = np.ascontiguousarray(np.asarray(x, float))
        h = zlib.crc32(np.asarray(x.shape, np.int64).tobytes(), h)
        h = zlib.crc32(x.tobytes(), h)
    try:
        multihost_utils.assert_equal(np.uint32(h))
    except AssertionError:
        raise ValueError(
            f"simulate across {jax.process_count()} processes: the inputs (theta, regimen, "
            "weight, times, tolerances) differ between processes; every process must pass the "
            "same ones (e.g. sample the population with the same seed on every process)"
        ) from None


def _check_inputs(model: Model, theta: Mapping, times: np.ndarray) -> None:
    if not isinstance(model, Model):
        raise ValueError(f"model must be a cartkin model, got {type(model).__name__}")
    model.check_theta(theta)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times must be a non-empty 1-D array of days, got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise ValueError("times contain NaN or infinite values")
    if np.any(np.diff(times) <= 0):
        i = int(np.argmax(np.diff(times) <= 0))
        raise ValueError(
            f"times must be strictly increasing: times[{i}]={times[i]} is followed by "
            f"times[{i + 1}]={times[i + 1]}"
        )


def simulate(
    model: Model,
    theta: Mapping[str, object],
    times,
    regimen: Regimen | Sequence[Regimen] | None = None,
    *,
    weight=None,
    solver: dfx.AbstractSolver | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    max_steps: int = 16384,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool | None = None,
    method: str = "auto",
    interpolate: bool = False,
    outputs: Sequence[str] | None = None,
    on_device: bool = False,
    order_by: str | None = None,
) -> SimResult:
    """Simulate ``model`` for N patients (and D regimens) at ``times`` (days).

    Args:
        model: a cartkin model instance.
        theta: parameter dict; each value a scalar or an array of shape (N,).
        times: strictly increasing saved times in days, shared by all patients.
        regimen: ``None`` (no dose: empirical models), one :class:`Regimen` for every patient,
            or a sequence of D regimens (dose levels), each given to every patient.
        weight: body weight in kg, scalar or (N,), for doses in cells/kg.
        solver: a diffrax solver (implies ``method="diffrax"``); default Tsit5 (Kvaerno5 for
            models marked stiff).
        rtol, atol: tolerances of the PID step-size controller (passed as arrays: changing them
            does not recompile).
        max_steps: per segment between events; a patient that reaches it is flagged, not fatal.
        chunk_size: patients per device per compiled call (default 256 on CPU, 262144 on GPU,
            2^20 for ``method="kernel"`` on a GPU).
        devices: devices to shard the patient axis over (default: all visible devices; under
            ``jax.distributed``, those of every process: each process must then pass the same
            inputs, and each returns the full result).
        progress: show a progress bar (default: when there is more than one chunk).
        method: ``"diffrax"`` (a vmapped diffrax solve), ``"batched"`` (cartkin's Rosenbrock
            solver written for a batch, patients innermost: :mod:`cartkin._batched`; the faster
            one on the CPU for stiff models), ``"kernel"`` (the same solver as one GPU kernel per
            block of patients, :mod:`cartkin._kernel`; on a CPU it runs interpreted, for tests
            only) or ``"auto"`` (``"batched"`` for an ODE model marked
            stiff when no ``solver`` is given, else ``"diffrax"``).
        interpolate: batched solver only (diffrax always interpolates, whatever this says).
            ``False`` (default): every step is shortened to end
            on the next saved time, so saved values are step values. ``True``: steps end only on
            events; values at saved times inside a step come from Rodas5's continuous
            extension (as diffrax's ``SaveAt(ts=...)`` always does). Many saved times then cost
            far fewer steps (CRS grid of 145 times over 28 days: 91 loop iterations instead
            of 192).
        outputs: names of the model outputs to return (default: all); the others are not
            copied off the device.
        on_device: return ``outputs`` and ``status`` as JAX arrays left on the device that
            computed them, for further JAX computation (a GPU then copies nothing to the host);
            default: numpy arrays on the host. With several devices the outputs are collected
            through the host and returned as arrays on the default device; across processes
            (``jax.distributed``) they are numpy arrays on the host whatever this says.
        order_by: a parameter by whose value the patients are ordered into chunks (results
            come back in the input order). A chunk's solve runs until its slowest patient is
            done, so patients of like step counts should share a chunk: measured on the CRS
            scenario (tumour burden B0, 4,096 patients in chunks of 256), ordering by B0 raised
            the lanes' useful share of the loop iterations from 0.61-0.65 to 0.86-0.88.
    """
    times = np.asarray(times, dtype=float)
    _check_inputs(model, theta, times)
    keep = None if outputs is None else list(dict.fromkeys(outputs))
    if keep is not None:
        unknown = [k for k in keep if k not in model.outputs]
        if unknown:
            raise ValueError(
                f"unknown output(s) {unknown} of {model.name}; its outputs are {list(model.outputs)}"
            )
    theta = {k: np.asarray(v, dtype=float) for k, v in theta.items()}
    shapes = {k: v.shape for k, v in theta.items() if v.ndim > 0}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) > 1:
        raise ValueError(f"theta values must be scalars or 1-D arrays of one length N, got {shapes}")
    n = next(iter(shapes.values()))[0] if shapes else 1
    for k, v in theta.items():
        if not np.all(np.isfinite(v)):
            raise ValueError(f"parameter {k!r} has NaN or infinite values")
    # one value for every patient (given so, or an array of one value, as a population's
    # parameters without variability are)
    shared = {k for k, v in theta.items() if v.ndim == 0 or bool(np.all(v == v[0]))}
    theta = {k: np.broadcast_to(v, (n,)) for k, v in theta.items()}
    if order_by is not None and order_by not in theta:
        raise ValueError(
            f"order_by={order_by!r} is not a parameter of {model.name}; use one of {list(theta)}"
        )
    perm = None if order_by is None else np.argsort(theta[order_by], kind="stable")

    multi = regimen is not None and not isinstance(regimen, Regimen)
    regimens = list(regimen) if multi else [regimen]
    if isinstance(model, ClosedFormModel) or (isinstance(model, ODEModel) and model.dose_state is None):
        if any(r is not None and (r.doses or (isinstance(model, ClosedFormModel) and r.interventions)) for r in regimens):
            raise ValueError(
                f"{model.name} takes no dose (its initial state is a parameter): pass regimen=None"
                + ("" if isinstance(model, ClosedFormModel) else " or a regimen of interventions only")
            )
    weights = None if weight is None else np.broadcast_to(np.asarray(weight, float), (n,))
    names = list(model.parameters)
    n_ev = max(1, max(len(r.doses) + len(r.interventions) if r else 0 for r in regimens))
    per_kg = any(d.per_kg for r in regimens if r for d in r.doses)
    if per_kg and weights is None:
        raise ValueError("a dose is in cells/kg: pass weight= (kg, scalar or one per patient)")
    if per_kg:
        bad = ~(np.isfinite(weights) & (weights > 0))
        if bad.any():
            check_weight(weights[np.argmax(bad)])
    # one event table per regimen; a chunk's rows are gathered from these and theta (see
    # _chunk_rows), so memory grows with the chunk only
    tables = [regimen_events(r, names, n_events=n_ev) for r in regimens]
    ev_time, ev_dose, ev_eff = (np.stack([getattr(t, a) for t, _ in tables])
                                for a in ("time", "dose", "log_effect"))
    ev_kg = np.stack([kg for _, kg in tables])
    D = len(regimens)
    m = D * n
    gather_in = (
        # a parameter given as one value stays one value: it is broadcast per chunk, not copied
        # N times (nor copied to the device N times)
        {k: v[:1].copy() if k in shared else np.ascontiguousarray(v) for k, v in theta.items()},
        ev_time, ev_dose, ev_eff, ev_kg,
        np.ones(n) if weights is None else np.ascontiguousarray(weights),
        np.arange(n) if perm is None else perm,
    )

    resolved = resolve_method(model, solver, method)
    if resolved == "kernel" and interpolate:
        raise ValueError("method='kernel' saves step values only: pass interpolate=False, or "
                         "method='batched'")
    if resolved in ("batched", "kernel"):
        solver = resolved
    elif solver is None:
        solver = default_solver(model)
    devices = list(devices) if devices is not None else jax.devices()
    ndev = len(devices)
    per_dev = chunk_size or default_chunk_size(solver)
    size = _padded_size(math.ceil(m / ndev), per_dev, solver) * ndev
    n_chunks = math.ceil(m / size)

    rtol_a, atol_a = jnp.asarray(rtol, float), jnp.asarray(atol, float)
    times_j = jnp.asarray(times)
    # the devices span several processes (jax.distributed): global arrays in, gathered arrays out
    multiproc = False
    if ndev > 1:
        fn, sharding = _sharded_solver(model, solver, max_steps, devices, interpolate)
        multiproc = not sharding.is_fully_addressable
    if multiproc:
        ev_all = (ev_time, ev_dose, ev_eff, ev_kg, np.zeros(0) if weights is None else weights)
        _check_same_inputs(theta, ev_all, times, rtol, atol)
        rep = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        times_j = _global_array(times, rep)
        rtol_a = _global_array(np.asarray(rtol, float), rep)
        atol_a = _global_array(np.asarray(atol, float), rep)
    outs: list = []
    stats: list = []
    show = progress if progress is not None else (n_chunks > 1 and jax.process_index() == 0)
    # several devices: outputs come through the host (reordering or joining outputs sharded
    # over host devices runs collectives, which can deadlock on a CPU with few cores)
    to_host = multiproc or not on_device or ndev > 1

    def collect(out, status, count, advance):
        if to_host:  # waits for this chunk only: the next one is already running
            out, status = jax.tree.map(np.asarray, out), np.asarray(status)
        outs.append(out)
        stats.append(status)
        advance(count)

    if ndev == 1:
        # the population and the event tables go to the device once; chunks are gathered there
        # (and solved there: the other inputs are not committed to a device, so they follow)
        resident = jax.device_put(gather_in, devices[0])

    with progress_bar(total=m, description=f"simulating {model.name}", enabled=show) as advance:
        pending = None
        for c in range(n_chunks):
            if ndev == 1:
                th, evc = _device_rows(*resident, c * size, n, m, size=size)
            else:
                th, evc = _chunk_rows(np, *gather_in, c * size, n, m, size)
            if multiproc:
                th = {k: _global_array(v, sharding) for k, v in th.items()}
                evc = tuple(_global_array(x, sharding) for x in evc)
                out, status = fn(th, *evc, times_j, rtol_a, atol_a)
            elif ndev > 1:
                th = jax.device_put(th, sharding)
                evc = jax.device_put(evc, sharding)
                out, status = fn(th, *evc, times_j, rtol_a, atol_a)
            else:
                out, status = _solve_batch(
                    model, solver, th, evc, times_j, rtol_a, atol_a, max_steps, interpolate
                )
            if keep is not None:
                out = {k: out[k] for k in keep}
            if multiproc:
                # every process gets every patient (an all-gather across the processes)
                out, status = multihost_utils.process_allgather((out, status), tiled=True)
            elif to_host:
                # start this chunk's copy to the host; it overlaps the next chunk's solve
                for x in jax.tree.leaves((out, status)):
                    x.copy_to_host_async()
            if pending is not None:
                collect(*pending, advance)
            pending = (out, status, min(size, m - c * size))
        collect(*pending, advance)
    xp = np if to_host else jnp

    def joined(parts):
        return (parts[0] if len(parts) == 1 else xp.concatenate(parts))[:m]

    out = {k: joined([o[k] for o in outs]) for k in outs[0]}
    status = joined(stats).astype(xp.int8)
    if perm is not None:  # rows back to the input order of the patients
        inv = np.argsort(perm)
        out = {k: v.reshape(D, n, -1)[:, inv].reshape(m, -1) for k, v in out.items()}
        status = status.reshape(D, n)[:, inv].reshape(m)
    if on_device and to_host and not multiproc:
        out, status = jax.tree.map(jnp.asarray, (out, status))
    if multi:
        out = {k: v.reshape(D, n, -1) for k, v in out.items()}
        status = status.reshape(D, n)
        doses = np.array([r.total if r else 0.0 for r in regimens])
    else:
        doses = None
    return SimResult(model, times, out, None, status, doses)
