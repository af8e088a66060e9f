"""What a test needs to speak the wire protocol by hand (raw gRPC): metadata, versions, pickling."""
from .._codec import dumps, loads
from .._config import DEFAULT_MAX_MESSAGE_SIZE
from .._protocol import (CLOUDPICKLE_MAJOR, MD_PICKLE, MD_PROTOCOL, MD_PYTHON, MD_STATUS, MD_TOKEN, PROTOCOL_VERSION,
                         PYTHON_VERSION, SERVICE_NAME, call_metadata)

__all__ = ["dumps", "loads", "DEFAULT_MAX_MESSAGE_SIZE", "CLOUDPICKLE_MAJOR", "MD_PICKLE", "MD_PROTOCOL", "MD_PYTHON",
           "MD_STATUS", "MD_TOKEN", "PROTOCOL_VERSION", "PYTHON_VERSION", "SERVICE_NAME", "call_metadata"]
