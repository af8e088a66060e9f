"""The relocation wing: where agents go and how they move when their server is lost, in one room.

Placement (``_placement``: one routine for a new agent, a single move and an
evacuation), creation over the unary RPC (``_creation``), a proxy's binding and
its failover (``_binding``), a lost server's agents moved together
(``_evacuation``), the move log (``_moves``), and the wing's state in a runtime
(``_state``: :class:`Relocation`, in the runtime's extension slot).
"""
from ._binding import Binding
from ._creation import AgentSpec, check_size, create_on, creation_request
from ._evacuation import Evacuation
from ._moves import MoveLog
from ._placement import Placed, choose, counted, place
from ._state import Relocation

__all__ = ["AgentSpec", "Binding", "Evacuation", "MoveLog", "Placed", "Relocation", "check_size", "choose",
           "counted", "create_on", "creation_request", "place"]
