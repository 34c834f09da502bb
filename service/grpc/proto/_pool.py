"""The descriptor pool of the service's generated stubs: their own, not protobuf's default pool, where a
client library in the same process (tritonclient.grpc, kserve) registers the same ``inference.*`` names
(scripts/grpc_protos.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
