"""``python -m agentmesh.server``: a server process started by its parent (config on stdin)."""
from ._child import child_main

child_main()
