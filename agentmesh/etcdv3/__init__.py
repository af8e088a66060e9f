"""Generated from proto/agentmesh/etcdv3/etcd.proto by grpc_tools.protoc; do not edit."""
