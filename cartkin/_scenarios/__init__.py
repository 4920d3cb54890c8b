"""Virtual trials of the construct models (``scenarios/*.toml``; ``cartkin scenario``).

One module per trial kind, each with ``MODEL`` (the model it simulates), ``OPTIONS`` (its settings
and their defaults) and ``run(cfg, *, progress) -> ScenarioResult``.
"""

from . import aplasia, armored, cldn18, escape, mdsc_combination

KINDS = {
    "escape": escape,
    "armored": armored,
    "mdsc_combination": mdsc_combination,
    "aplasia": aplasia,
    "cldn18": cldn18,
}


def run_scenario(cfg, *, progress: bool = False):
    """Run the trial a :class:`~cartkin._scenarios.config.ScenarioConfig` describes."""
    return KINDS[cfg.kind].run(cfg, progress=progress)
