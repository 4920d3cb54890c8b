"""Build step: ship the repository's ``data/`` folder (the bundled datasets) inside the package as
``cartkin/_data/bundled/``, so that ``cartkin.data.load`` works from an installed wheel as it does
from a checkout. Everything else is configured in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = Path(__file__).resolve().parent / "data"
SUFFIXES = {".csv", ".json", ".toml", ".md"}


class BuildPyWithData(build_py):
    """build_py, then copy data/*.{csv,json,toml,md} to cartkin/_data/bundled/ in the build."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads data/ from the checkout
        target = Path(self.build_lib) / "cartkin" / "_data" / "bundled"
        shutil.rmtree(target, ignore_errors=True)  # no stale files from an earlier build
        target.mkdir(parents=True)
        for f in sorted(DATA.iterdir()):
            if f.is_file() and f.suffix in SUFFIXES:
                shutil.copyfile(f, target / f.name)


setup(cmdclass={"build_py": BuildPyWithData})
