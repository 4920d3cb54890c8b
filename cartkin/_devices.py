"""Work split over the local devices.

XLA runs each device's program on one thread, and an adaptive solve is a ``while_loop``: on a CPU
the second core does work only as a second host device
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which the ``cartkin`` command sets to the
number of cores). :func:`over_subjects` splits a per-subject computation inside a jitted program
over the local devices with ``shard_map``; with one device it is the computation itself.
"""

from __future__ import annotations

import jax
import numpy as np

try:  # jax >= 0.6
    from jax import shard_map as _shard_map

    _NO_CHECK = {"check_vma": False}
except ImportError:  # jax < 0.6
    from jax.experimental.shard_map import shard_map as _shard_map

    _NO_CHECK = {"check_rep": False}


def shard_map(fn, mesh, in_specs, out_specs):
    """``jax.shard_map`` without replication checks (each device runs its own adaptive loops)."""
    return _shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **_NO_CHECK)


def subject_devices(split: bool = True) -> list:
    """The devices a fit splits its subjects over: the local ones in a single-process run, one
    device when ``split`` is false (a computation that must not be split)."""
    if split and jax.process_count() == 1:
        return jax.local_devices()
    return jax.local_devices()[:1]


def pad_subjects(tree, n_dev: int):
    """Numpy arrays with their leading (subject) axis padded to a multiple of ``n_dev`` with
    copies of the last subject."""
    def pad(a):
        a = np.asarray(a)
        extra = -a.shape[0] % n_dev
        return np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) if extra else a

    return jax.tree.map(pad, tree)


def over_subjects(fn, per_subject, shared=(), devices=None):
    """``fn(*per_subject, *shared)`` with the leading (subject) axis of every array in
    ``per_subject`` split over ``devices`` (default :func:`subject_devices`; the length a
    multiple of their number: :func:`pad_subjects`); outputs have the same leading axis and stay
    split.

    Meant to be the whole of a jitted program, so that XLA adds no collectives, and ``fn`` must
    make no LAPACK call on a batch (a triangular solve under ``vmap``, an implicit diffrax
    solver's linear solves): jaxlib runs such a batch on the CPU thread pool and waits for it,
    and with every core a device that wait has hung a split program (jax 0.10, two cores; see
    :func:`cartkin._likelihood.forward_substitution`). Random numbers inside ``fn`` must come
    from per-subject keys, so that they do not depend on the split.
    """
    devices = subject_devices() if devices is None else devices
    if len(devices) == 1:
        return fn(*per_subject, *shared)
    n = jax.tree.leaves(per_subject)[0].shape[0]
    if n % len(devices):
        raise ValueError(f"{n} subjects do not split over {len(devices)} devices: pad them")
    mesh = jax.sharding.Mesh(np.asarray(devices), ("subjects",))
    split, whole = jax.sharding.PartitionSpec("subjects"), jax.sharding.PartitionSpec()
    return shard_map(
        lambda p, s: fn(*p, *s), mesh,
        in_specs=(jax.tree.map(lambda _: split, tuple(per_subject)),
                  jax.tree.map(lambda _: whole, tuple(shared))),
        out_specs=split,
    )(tuple(per_subject), tuple(shared))
