"""The generated adaptd.v1 modules, with a clear message when the build has not made them."""

try:
    from adaptd.v1 import admin_pb2, admin_pb2_grpc
    from adaptd.v1 import learning_pb2, learning_pb2_grpc
    from adaptd.v1 import model_pb2, query_pb2, query_pb2_grpc, tensor_pb2
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "adaptd_client needs the generated adaptd.v1 stubs: build the adaptd_python target and "
        "put build/python on PYTHONPATH, or pip install build/python (see client/python/README.md)"
    ) from error

__all__ = ["admin_pb2", "admin_pb2_grpc", "learning_pb2", "learning_pb2_grpc", "model_pb2",
           "query_pb2", "query_pb2_grpc", "tensor_pb2"]
