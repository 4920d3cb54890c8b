"""Shared test helpers."""

import numpy as np
from scipy.integrate import solve_ivp


def scipy_reference(model, theta, times, regimen=None, rtol=1e-11, atol=1e-14, method="LSODA"):
    """Independent reference: the same model integrated segment by segment with scipy.

    Doses and interventions are applied at their times; model switch times are boundaries.
    Returns the outputs dict {name: (T,)}.
    """
    import jax.numpy as jnp

    names = list(model.parameters)
    th = {k: float(v) for k, v in theta.items()}
    events = []
    if regimen is not None:
        for d in regimen.doses:
            events.append((d.time, d.amount, {}))
        for iv in regimen.interventions:
            events.append((iv.time, 0.0, dict(iv.effects)))
    for s in np.atleast_1d(np.asarray(model.switch_times({k: jnp.asarray(v) for k, v in th.items()}))):
        events.append((float(s), 0.0, {}))
    events.sort(key=lambda e: e[0])
    times = np.asarray(times, float)
    t_start = min(0.0, times[0])
    y = np.asarray(model.initial_state({k: jnp.asarray(v) for k, v in th.items()}), float)
    mult = {k: 1.0 for k in names}
    bounds = [t_start] + [min(max(e[0], t_start), times[-1]) for e in events] + [times[-1]]
    ys = np.zeros((len(times), len(y)))
    for k in range(len(bounds) - 1):
        if k > 0:
            t_ev, amount, eff = events[k - 1]
            if t_ev <= times[-1]:
                if amount:
                    y = y + np.asarray(model.dose_vector(jnp.asarray(amount)))
                for p, f in eff.items():
                    mult[p] *= f
        ta, tb = bounds[k], bounds[k + 1]
        cur = {p: jnp.asarray(th[p] * mult[p]) for p in names}
        cur = model.at_segment(cur, jnp.asarray(0.5 * (ta + tb)))

        def f(t, yy, cur=cur):
            return np.asarray(model.vector_field(jnp.asarray(t), jnp.asarray(yy), cur))

        mask = times >= ta
        if tb > ta:
            inside = times[(times >= ta) & (times <= tb)]
            sol = solve_ivp(f, (ta, tb), y, method=method, rtol=rtol, atol=atol,
                            t_eval=np.unique(np.r_[inside, tb]), dense_output=False)
            assert sol.success, sol.message
            for i in np.where((times >= ta) & (times <= tb))[0]:
                ys[i] = sol.y[:, np.searchsorted(sol.t, times[i])]
            y = sol.y[:, -1]
        else:
            ys[mask & (times == ta)] = y
    th_j = {k: jnp.asarray(v) for k, v in th.items()}
    out = {k: [] for k in model.outputs}
    for t, yy in zip(times, ys):
        o = model.observe(jnp.asarray(t), jnp.asarray(yy), th_j)
        for k in out:
            out[k].append(float(o[k]))
    return {k: np.asarray(v) for k, v in out.items()}


def spawn(cmd, env=None):
    """A child process running ``cmd`` with its stdout and stderr as text pipes, for
    :func:`wait_all`."""
    import subprocess

    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_all(children, timeout=400):
    """The stdout of each child process (:func:`spawn`), waited for in turn; each must exit 0
    (else its stderr is shown), and children still running when one fails are killed (and
    reaped)."""
    try:
        out = []
        for child in children:
            stdout, stderr = child.communicate(timeout=timeout)
            assert child.returncode == 0, (stderr or "")[-3000:]
            out.append(stdout)
        return out
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()


def child_results(children, timeout=400):
    """The ``RESULT <json>`` line of each child process, as :func:`wait_all` waits for them."""
    import json

    out = []
    for stdout in wait_all(children, timeout):
        line = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
        assert line, stdout[-3000:]
        out.append(json.loads(line[-1][len("RESULT "):]))
    return out
