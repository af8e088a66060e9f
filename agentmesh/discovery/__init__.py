"""Discovery: servers registering in etcd, the watch-backed view of them, the registry's key layout."""
from ._view import ServerView

__all__ = ["ServerView"]
