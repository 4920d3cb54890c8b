"""Traced programs kept across runs (``jax.export``), beside JAX's compilation cache.

JAX's persistent compilation cache skips XLA, but not the tracing and lowering that produce the
program it is keyed on: on the 2-core CPU they were 2.5 s of a warm 7 s closed-form fit of the
bundled cohort (benchmarks/README.md, ninth session). :class:`Cached` keeps each traced and lowered
program as a serialized :class:`jax.export.Exported` and calls that in later runs.

The key of a program must name everything its trace depends on, since a wrong key gives a wrong
program. It is the digest (:func:`digest`) of the function with all that it closes over, walked
recursively (arrays by their bytes, functions by their code and closures, cartkin's objects by
their attributes), of its argument types and layouts, and of the environment: cartkin's source,
the versions of JAX and the libraries that trace, JAX's configuration, the devices. Anything the
walk does not know (a user's function, an object of a class from outside cartkin and the
numerical libraries) makes the program *unkeyable*: it is then traced as ``jax.jit`` traces it,
every run. The cache is on only where JAX's compilation cache is (the ``cartkin`` command);
``CARTKIN_TRACED=off`` turns it off there.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import importlib.metadata
import logging
import os
import sys
import tempfile
import types
from pathlib import Path

import jax
import numpy as np

log = logging.getLogger(__name__)

try:  # public in the jax versions this cache was tested with; without it the cache is off
    from jax.api_util import shaped_abstractify as _abstractify
except ImportError:  # pragma: no cover
    _abstractify = None

# modules whose functions and objects may appear in a key: cartkin's own (their source is in the
# key) and the libraries whose versions are
LIBRARIES = ("jax", "jaxlib", "equinox", "diffrax", "lineax", "optimistix", "numpy", "scipy")
_KNOWN = ("cartkin", "jax", "jaxlib", "equinox", "diffrax", "lineax", "optimistix", "numpy",
          "builtins", "functools", "operator", "math", "scipy")
# the parts of JAX's configuration that change a trace
CONFIG = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
          "jax_numpy_dtype_promotion", "jax_default_prng_impl", "jax_threefry_partitionable",
          "jax_enable_checks", "jax_debug_nans", "jax_debug_infs", "jax_disable_jit",
          "jax_use_shardy_partitioner", "jax_dynamic_shapes", "jax_default_dtype_bits")
_LEAVES = (type(None), bool, int, float, complex, str, bytes)
# what this process did (per program and argument signature): kept programs loaded, programs
# exported and kept, programs traced every run (unkeyable or not exportable)
COUNTS = {"loaded": 0, "exported": 0, "untraceable": 0}


class Unkeyable(TypeError):
    """A program closes over something that :func:`digest` cannot name."""


def _known(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in _KNOWN


def _code(h, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_name, code.co_qualname, code.co_names, code.co_varnames,
                   code.co_firstlineno)).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _code(h, c)
        else:
            h.update(_const_repr(c).encode())


def _const_repr(c) -> str:
    """repr of a code constant or a set, the same in every process (a set of strings iterates in
    an order that changes with the interpreter's string hashing)."""
    if isinstance(c, frozenset):
        return "frozenset(" + ",".join(sorted(_const_repr(x) for x in c)) + ")"
    if isinstance(c, tuple):
        return "(" + ",".join(_const_repr(x) for x in c) + ")"
    return repr(c)


def _walk(obj, h, memo: dict) -> None:
    try:
        _walk_one(obj, h, memo)
    except Unkeyable as e:  # name the path to what could not be named
        raise Unkeyable(f"{type(obj).__qualname__} > {e}") from None


def _walk_one(obj, h, memo: dict) -> None:
    t = type(obj)
    if t in _LEAVES:
        h.update(f"{t.__name__}:{obj!r};".encode())
        return
    if id(obj) in memo:  # shared or cyclic: its first place
        h.update(f"ref:{memo[id(obj)][0]};".encode())
        return
    memo[id(obj)] = (len(memo), obj)  # kept alive: an id is unique only while its object lives
    h.update(f"<{t.__module__}.{t.__qualname__}>".encode())
    if isinstance(obj, jax.core.Tracer):
        raise Unkeyable("a traced value")
    if t is object:  # a library's sentinel: no state
        return
    if hasattr(obj, "__digest_parts__"):  # an object that names what its behaviour depends on
        _walk(obj.__digest_parts__(), h, memo)
        return
    if isinstance(obj, (slice, range, np.dtype, jax.tree_util.PyTreeDef)) or obj is Ellipsis:
        h.update(f"{obj!r};".encode())
        return
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):
        a = np.asarray(obj)
        if a.dtype.hasobject:
            raise Unkeyable("an object array")
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    elif isinstance(obj, (tuple, list)):
        h.update(f"{len(obj)}".encode())
        for x in obj:
            _walk(x, h, memo)
        if t not in (tuple, list):  # a subclass (a PartitionSpec) may hold more than its items
            _walk(_fields(obj), h, memo)
    elif isinstance(obj, dict):  # in order: a trace may iterate over it
        for k, v in obj.items():
            _walk(k, h, memo)
            _walk(v, h, memo)
        if t is not dict:
            _walk(_fields(obj), h, memo)
    elif t in (set, frozenset):
        h.update(_const_repr(frozenset(obj)).encode())
    elif isinstance(obj, types.FunctionType):
        if not _known(obj.__module__):
            raise Unkeyable(f"function {obj.__module__}.{obj.__qualname__}")
        _code(h, obj.__code__)
        _walk(obj.__defaults__, h, memo)
        _walk(obj.__kwdefaults__, h, memo)
        _walk([c.cell_contents for c in obj.__closure__ or ()], h, memo)
    elif isinstance(obj, functools.partial):
        _walk((obj.func, obj.args, obj.keywords), h, memo)
    elif isinstance(obj, types.MethodType):
        _walk((obj.__func__, obj.__self__), h, memo)
    elif isinstance(obj, (types.BuiltinFunctionType, np.ufunc, type, types.ModuleType)):
        name = getattr(obj, "__module__", None) or ""
        if isinstance(obj, types.ModuleType):
            name = obj.__name__
        if not _known(name):
            raise Unkeyable(f"{obj!r}")
        h.update(f"{name}.{getattr(obj, '__qualname__', getattr(obj, '__name__', ''))}".encode())
    elif isinstance(obj, enum.Enum):
        _walk((t.__qualname__, obj.name), h, memo)
    elif isinstance(obj, jax.sharding.Mesh):
        _walk((obj.axis_names, [d.id for d in obj.devices.flat]), h, memo)
    elif isinstance(obj, jax.sharding.NamedSharding):
        # the layout, not the attributes it caches as it is used (those differ between a
        # program's outputs and the same layout read from its compiled form)
        _walk((obj.mesh, obj.spec, obj.memory_kind), h, memo)
    elif t.__module__.startswith("jaxlib") and hasattr(obj, "platform") and hasattr(obj, "id"):
        h.update(f"device:{obj.platform}:{obj.id}".encode())  # a Device
    elif _known(t.__module__) and (hasattr(obj, "__dict__") or hasattr(t, "__slots__")):
        # an object of cartkin or of a tracing library (an equinox Module, a dataclass)
        _walk(_fields(obj), h, memo)
    else:
        raise Unkeyable(f"an object of {t.__module__}.{t.__qualname__}")


def _fields(obj) -> list:
    """An object's attributes (its ``__dict__`` and ``__slots__``), sorted by name."""
    fields = dict(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        slots = getattr(cls, "__slots__", ())
        for s in (slots,) if isinstance(slots, str) else slots:
            if s not in fields and s not in ("__dict__", "__weakref__") and hasattr(obj, s):
                fields[s] = getattr(obj, s)
    return sorted(fields.items(), key=lambda kv: kv[0])


def digest(*objs) -> str:
    """The hex digest of ``objs`` and all they close over; raises :class:`Unkeyable`."""
    h = hashlib.sha256()
    _walk(objs, h, {})
    return h.hexdigest()


@functools.cache
def _source_digest() -> str:
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}={importlib.metadata.version(lib)};".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{lib}=none;".encode())
    h.update(sys.version.encode())
    return h.hexdigest()


def _environment() -> str:
    """cartkin's source, library versions, JAX's configuration, devices, equinox's checks."""
    cfg = tuple((k, repr(jax.config.values.get(k))) for k in CONFIG)
    devices = tuple((d.platform, d.device_kind, d.id) for d in jax.devices())
    # equinox's error mode as equinox read it at import (the environment may have changed since)
    on_error = getattr(sys.modules.get("equinox._config"), "EQX_ON_ERROR",
                       os.environ.get("EQX_ON_ERROR", "raise"))
    return digest(_source_digest(), cfg, devices, on_error)


def directory() -> Path | None:
    """Where traced programs are kept: beside JAX's compilation cache, when that is on."""
    values = getattr(jax.config, "values", None)  # (the key needs JAX's configuration)
    root = values.get("jax_compilation_cache_dir") if values is not None else None
    if not root or _abstractify is None or os.environ.get("CARTKIN_TRACED", "") == "off":
        return None
    return Path(root) / "cartkin-traced"


def _signature(leaves, tree) -> tuple[tuple, tuple]:
    """The key part of the argument types and layouts (a new one is a new program, as for
    ``jax.jit``), and the device of each array committed to one device (where the program runs;
    not part of the program), from the flattened arguments. Called on every call: a few
    attribute reads per argument."""
    sig, placed = [], []
    for x in leaves:
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None:
            # an example argument laid out as an array will be (:mod:`cartkin._compile`'s
            # programs compiled ahead): the same key as that array's, never committed
            one = len(x.sharding.device_set) == 1
            sig.append((x.shape, x.dtype, x.weak_type, None if one else x.sharding))
            placed.append(None)
        elif isinstance(x, jax.Array):
            aval, devices = x.aval, x.sharding.device_set
            one = len(devices) == 1
            # a layout over several devices is part of the program
            sig.append((aval.shape, aval.dtype, aval.weak_type, None if one else x.sharding))
            placed.append(next(iter(devices)).id if one and x.committed else None)
        else:
            aval = _abstractify(x)
            sig.append((aval.shape, aval.dtype, aval.weak_type, None))
            placed.append(None)
    return (tree, tuple(sig)), tuple(placed)


class Cached:
    """``jitted`` (``jax.jit(fun, ...)``), whose traced programs are kept in :func:`directory`.

    Per argument signature: the kept program when there is one for its key, else ``jitted``
    exported, kept and called. Called under a trace (inside another program), or where the
    function is unkeyable or cannot be exported, it is ``jitted`` itself.
    """

    def __init__(self, fun, jitted, compiler_options=None):
        self.fun, self.jitted, self.compiler_options = fun, jitted, compiler_options
        self._programs: dict = {}  # signature -> Exported, or None: ``jitted``
        self._calls: dict = {}  # (signature, placement) -> the function to call
        self._closure: str | None = None
        functools.update_wrapper(self, fun)

    def __digest_parts__(self):
        return self.fun, self.compiler_options

    def __call__(self, *args):
        return self._call_for(args)(*args)

    def lower(self, *args):
        """The program that a call with ``args`` (arrays, or ``jax.ShapeDtypeStruct`` examples)
        runs, lowered (``jax.jit``'s ``lower``)."""
        return self._call_for(args).lower(*args)

    def _call_for(self, args):
        leaves, tree = jax.tree.flatten(args)
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            return self.jitted
        sig, placed = _signature(leaves, tree)
        call = self._calls.get((sig, placed))
        if call is None:
            if sig not in self._programs:
                self._programs[sig] = self._program(sig)
            exported = self._programs[sig]
            call = self.jitted if exported is None else _caller(
                exported, args, placed, self.compiler_options)
            self._calls[(sig, placed)] = call
        return call

    def _program(self, sig):
        """The kept program of ``sig``, exported now if there is none; None where it cannot
        be kept."""
        where = directory()
        if where is None or jax.process_count() > 1:  # (one process: its devices are all)
            return None
        try:
            if self._closure is None:
                self._closure = digest(self.fun)
        except Unkeyable as e:
            log.debug("%s traced every run: it closes over %s", self.fun.__qualname__, e)
            COUNTS["untraceable"] += 1
            return None
        key = digest(_environment(), self._closure, sig)
        path = where / f"{self.fun.__name__}-{key[:40]}"
        from jax import export

        if path.exists():
            try:
                exported = export.deserialize(bytearray(path.read_bytes()))
                COUNTS["loaded"] += 1
                return exported
            except Exception as e:  # noqa: BLE001 - a damaged entry is exported again
                log.debug("%s: unreadable kept program (%s)", path, e)
        elif path.with_suffix(".no").exists():
            COUNTS["untraceable"] += 1
            return None

        tree, avals = sig
        specs = [jax.ShapeDtypeStruct(shape, dtype, weak_type=weak)
                 for shape, dtype, weak, _ in avals]
        try:
            exported = export.export(self.jitted)(*jax.tree.unflatten(tree, specs))
            data = exported.serialize()
        except ImportError as e:  # flatbuffers missing: not kept, and not marked as unkeepable
            log.debug("%s not kept (%s)", self.fun.__qualname__, e)
            COUNTS["untraceable"] += 1
            return None
        except Exception as e:  # noqa: BLE001 - e.g. a host callback: traced every run
            log.debug("%s cannot be exported (%s)", self.fun.__qualname__, e)
            _write(path.with_suffix(".no"), b"")
            COUNTS["untraceable"] += 1
            return None
        _write(path, bytes(data))
        COUNTS["exported"] += 1
        return exported


def _caller(exported, args, placed, compiler_options=None):
    """``exported.call`` as a jitted function for arguments laid out as ``args``, with explicit
    input layouts (so that whether an array is committed to its device does not make another
    program): on one device, the device an argument is committed to (else the first); on several,
    arrays already split over them keep their layout, the others are replicated."""
    n = exported.nr_devices
    if n == 1:
        ids = [i for i in placed if i is not None]
        device = ({d.id: d for d in jax.local_devices()}[ids[0]] if ids
                  else jax.local_devices()[0])
        return jax.jit(exported.call, in_shardings=jax.sharding.SingleDeviceSharding(device),
                       compiler_options=compiler_options)
    devices = jax.local_devices()[:n]
    ids = sorted(d.id for d in devices)
    mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def layout(x):
        sharding = getattr(x, "sharding", None)  # (an array, or an example with a layout)
        if sharding is not None and sorted(d.id for d in sharding.device_set) == ids:
            return sharding
        return whole

    return jax.jit(exported.call, in_shardings=jax.tree.map(layout, args),
                   compiler_options=compiler_options)


def _write(path: Path, data: bytes) -> None:
    """Write atomically (a concurrent run reads a whole entry or none)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        log.debug("cannot keep %s (%s)", path, e)
