"""The package version, apart so that no module imports it back from agentmesh/__init__."""
__version__ = "0.1.0"
