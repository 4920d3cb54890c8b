"""The ``cartkin`` command line: one module per command.

User errors (bad input, bad configuration) print one message and exit with status 2, without a
traceback; outputs are written to a temporary folder and moved into place only when complete.
"""

from __future__ import annotations

import argparse
import os
import sys


def _use_all_cores() -> None:
    # XLA runs one while_loop per device on one core: expose each core as a host device so that
    # batched solves are sharded over them. Must happen before JAX creates its CPU client.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        n = os.cpu_count() or 1
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _compilation_cache() -> None:
    # compiled programs are reused across runs (CARTKIN_CACHE=off disables it). diffrax's
    # solves are cached only with EQX_ON_ERROR=nan in the environment (equinox reads it at
    # import): their outcome is reported per patient anyway. Every program is cached, however
    # short its compile: a fit runs about a hundred small ones (10-40 ms each on the CPU), and
    # caching only those over 0.5 s left the bundled closed-form fit 2.2 s slower from a warm
    # cache (benchmarks/README.md, ninth session); the whole cache of the main command is a few MB.
    import jax

    cache = os.environ.get("CARTKIN_CACHE", os.path.expanduser("~/.cache/cartkin/jax"))
    if cache != "off":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv: list[str] | None = None) -> int:
    _use_all_cores()
    _compilation_cache()
    import importlib
    import pkgutil

    parser = argparse.ArgumentParser(
        prog="cartkin", description="Population pharmacology of CAR-T cell therapy."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # one module per command: every module of this package with an add_parser()
    order = ["simulate", "fit", "bayes", "crs_risk", "report", "pipeline"]
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    for name in sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n)):
        mod = importlib.import_module(f"{__name__}.{name}")
        if hasattr(mod, "add_parser"):
            mod.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"cartkin {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
