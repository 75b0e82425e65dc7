"""tensorgrade: the HTTP service that computes reference answers and checks students' answers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tensorgrade")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
