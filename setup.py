"""The optional C extension (``monitor._speedups``); everything else is in pyproject.toml.

Optional: without a C compiler the package installs anyway and runs its pure-Python paths
(``monitor.native.speedups`` is then None, and the service says so at start).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "monitor._speedups",
            ["monitor/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall"],
        )
    ]
)
