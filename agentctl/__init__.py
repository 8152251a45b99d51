"""agentctl: run an AI agent as a service — server, terminal client, load tests and evaluation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agentctl")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
