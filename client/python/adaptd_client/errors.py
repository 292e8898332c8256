"""Exceptions raised by the client."""

import functools

import grpc


class AdaptdError(Exception):
    """A call the server (or the channel) refused: a gRPC status code and its message.

    ``code`` is a ``grpc.StatusCode`` (e.g. ``grpc.StatusCode.NOT_FOUND``); ``message`` is the
    server's explanation.
    """

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self):
        name = self.code.name if isinstance(self.code, grpc.StatusCode) else str(self.code)
        return f"{name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error):
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        return cls(code, details or "")


class JobError(Exception):
    """An adaptation job that ended FAILED or CANCELLED; ``status`` is its last JobStatus."""

    def __init__(self, status):
        from adaptd.v1 import learning_pb2

        state = learning_pb2.JobState.Name(status.state)
        super().__init__(f"job {status.job_id} on {status.model!r} ended {state}: {status.message}")
        self.status = status

    def __reduce__(self):
        # Pickled (a worker process's error) and copied from its status, not from its message.
        return (type(self), (self.status,))


def wrap_rpc_errors(method):
    """Re-raises grpc.RpcError from a call as AdaptdError."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        check_open = getattr(args[0], "_check_open", None) if args else None
        if check_open is not None:
            check_open()
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as error:
            raise AdaptdError.from_rpc_error(error) from None

    return wrapper


def wrap_rpc_stream(iterator):
    """Yields from a response stream, re-raising grpc.RpcError as AdaptdError."""
    try:
        yield from iterator
    except grpc.RpcError as error:
        raise AdaptdError.from_rpc_error(error) from None
    finally:
        cancel = getattr(iterator, "cancel", None)
        if cancel is not None:
            cancel()
