"""The package dbintel lives in services/: services/coordinator is dbintel.coordinator, and so on."""

from setuptools import find_packages, setup

setup(
    package_dir={"dbintel": "services"},
    packages=["dbintel"] + [f"dbintel.{name}" for name in find_packages("services")],
)
