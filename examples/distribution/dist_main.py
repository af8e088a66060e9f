# AgentScope's distribution tutorial, run on agentmesh: the only change is the
# package name (agentscope -> agentmesh).
# python dist_main.py                  child mode: agents on child servers
# python dist_main.py --independent    independent mode: start dist_server.py first
# python dist_main.py --init-form      the to_dist= constructor form (no double initialisation)

import sys
import time
import agentmesh
from agentmesh.agents import AgentBase
from agentmesh.message import Msg


class WebAgent(AgentBase):

    def __init__(self, name):
        super().__init__(name)

    def get_answer(self, url: str, query: str):
        time.sleep(5)
        return f"Answer from {self.name}"

    def reply(self, x: dict = None) -> dict:
        return Msg(
            name=self.name,
            content=self.get_answer(x.content["url"], x.content["query"])
        )


QUERY = "example query"
URLS = ["page_1", "page_2", "page_3", "page_4", "page_5"]


def init_without_dist():
    return [WebAgent(f"W{i}") for i in range(len(URLS))]


def init_with_dist():
    return [WebAgent(f"W{i}").to_dist() for i in range(len(URLS))]


def init_with_dist_independent():
    return [WebAgent(f"W{i}").to_dist(host="localhost", port=12345) for i in range(len(URLS))]


def init_with_dist_form():
    return [WebAgent(f"W{i}", to_dist=True) for i in range(len(URLS))]


def init_with_dist_independent_form():
    return [WebAgent(f"W{i}", to_dist={"host": "localhost", "port": "12345"}) for i in range(len(URLS))]


def run(agents):
    start = time.time()
    results = []
    for i, url in enumerate(URLS):
        results.append(agents[i].reply(
            Msg(
                name="system",
                role="system",
                content={
                    "url": url,
                    "query": QUERY
                }
            )
        ))
    for result in results:
        print(result.content)
    end = time.time()
    return end - start


if __name__ == "__main__":
    agentmesh.init()
    independent = "--independent" in sys.argv
    init_form = "--init-form" in sys.argv
    if independent:
        init_dist = init_with_dist_independent_form if init_form else init_with_dist_independent
    else:
        init_dist = init_with_dist_form if init_form else init_with_dist
    start = time.time()
    simple_agents = init_without_dist()
    dist_agents = init_dist()
    end = time.time()
    print(f"Initialization time: {end - start}")
    print(f"Runtime without distributed mode: {run(simple_agents)}")
    print(f"Runtime with distributed mode: {run(dist_agents)}")
