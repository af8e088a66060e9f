"""The client transport: one multiplexed session per server, the pool of them, the child servers.

Below the proxies and above the wire: a call goes out as a CallSlot on a
Connection, and what comes back is told to the call's owner (CallOwner).
"""
