"""Messages exchanged by agents."""
from ._msg import Msg

__all__ = ["Msg"]
