"""Package discovery for gcomp, whose repository root is the `gcomp` package itself.

Everything else (metadata, dependencies, package data) is in pyproject.toml. setuptools' declarative
`packages.find` cannot map the project root to a package name, and a hand-written package list
silently drops any subpackage it forgets (a wheel without gcomp.engine.backends once broke every
`gcomp complete`), so the packages are found here: every folder with an __init__.py under the root,
prefixed with `gcomp.`, except the tests and build outputs. tests/test_wheel.py checks the wheel.
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
EXCLUDE = ("tests", "tests.*", "build", "build.*", "dist", "dist.*")


class BuildPy(build_py):
    """The root package's modules are the root's .py files: all but this one."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) != ("gcomp", "setup")]


setup(
    package_dir={"gcomp": "."},
    packages=["gcomp"] + ["gcomp." + p for p in find_packages(str(ROOT), exclude=EXCLUDE)],
    cmdclass={"build_py": BuildPy},
)
