"""The package dbintel lives in services/: services/coordinator is dbintel.coordinator, and so on.

Packages are found namespace-aware, so a folder that lacks an ``__init__.py`` is still shipped;
tests/packaging/test_wheel.py compares the built wheel with the tree so that nothing is left out.
"""

from setuptools import find_namespace_packages, setup

setup(
    package_dir={"dbintel": "services"},
    packages=["dbintel"]
    + [f"dbintel.{name}" for name in find_namespace_packages("services", exclude=["*__pycache__*"])],
)
