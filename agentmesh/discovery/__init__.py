"""Discovery: servers registering in etcd, the watch-backed view of them, the registry's key layout."""
from ._view import ServerView
from .records import ServerRecord

__all__ = ["ServerView", "ServerRecord"]
