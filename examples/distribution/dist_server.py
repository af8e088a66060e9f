# The tutorial's independent-mode server, on agentmesh. Run it first, then
# `python dist_main.py --independent` in the same directory.

from dist_main import WebAgent
import agentmesh
from agentmesh.server import RpcAgentServerLauncher

if __name__ == "__main__":
    agentmesh.init()
    assistant_server_launcher = RpcAgentServerLauncher(
        host="localhost",
        port=12345,
        custom_agent_classes=[WebAgent],
    )
    assistant_server_launcher.launch(in_subprocess=False)
    assistant_server_launcher.wait_until_terminate()
