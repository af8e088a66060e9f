"""Discovery: servers registering in etcd, and placement of new agents."""
