"""numpy arrays <-> adaptd.v1.Tensor: a dtype, a shape and raw little-endian row-major bytes."""

import numpy as np

from adaptd_client._stubs import tensor_pb2

_TO_WIRE = {
    np.dtype(np.float32): tensor_pb2.DATA_TYPE_FLOAT32,
    np.dtype(np.float64): tensor_pb2.DATA_TYPE_FLOAT64,
    np.dtype(np.uint8): tensor_pb2.DATA_TYPE_UINT8,
    np.dtype(np.int64): tensor_pb2.DATA_TYPE_INT64,
}
_FROM_WIRE = {wire: dtype.newbyteorder("<") for dtype, wire in _TO_WIRE.items()}

SUPPORTED_DTYPES = tuple(str(dtype) for dtype in _TO_WIRE)


def to_tensor(array):
    """Encodes an array of float32, float64, uint8 or int64 as a Tensor.

    Other dtypes raise TypeError: convert explicitly (the client's methods do it where the API
    fixes the dtype, e.g. features to float32 and labels to int64).
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    wire = _TO_WIRE.get(native)
    if wire is None:
        raise TypeError(
            f"cannot send a {array.dtype} array: supported dtypes are {', '.join(SUPPORTED_DTYPES)}")
    little = array.astype(native.newbyteorder("<"), order="C", copy=False)
    return tensor_pb2.Tensor(dtype=wire, shape=little.shape, raw_data=little.tobytes())


def from_tensor(tensor):
    """Decodes a Tensor into a new, writable numpy array in native byte order.

    A Tensor that was never set (DATA_TYPE_UNSPECIFIED, no shape, no bytes) decodes to None.
    """
    if tensor.dtype == tensor_pb2.DATA_TYPE_UNSPECIFIED:
        if not tensor.shape and not tensor.raw_data:
            return None
        raise ValueError("tensor has data but no dtype")
    dtype = _FROM_WIRE.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"unknown tensor dtype {tensor.dtype}")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"tensor shape {list(shape)} has a negative dimension")
    count = int(np.prod(shape, dtype=np.int64))
    if len(tensor.raw_data) != count * dtype.itemsize:
        raise ValueError(
            f"tensor of shape {list(shape)} and dtype {dtype.newbyteorder('=')} needs "
            f"{count * dtype.itemsize} bytes, got {len(tensor.raw_data)}")
    array = np.frombuffer(tensor.raw_data, dtype=dtype, count=count).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def as_features(x, name="x"):
    """Examples for the server: uint8 stays uint8 (scaled by 1/255 there), numbers -> float32."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind in "fiub":
        return x.astype(np.float32, copy=False)
    raise TypeError(f"{name} must be numeric (float32 or uint8), got {x.dtype}")


def as_int64(values, name):
    """Labels and ids: any integer array -> int64; floats must hold whole numbers."""
    values = np.asarray(values)
    if values.dtype.kind in "iub":
        # Any byte order: ">u8" is not equal to np.uint64.
        if (values.dtype.kind == "u" and values.dtype.itemsize == 8 and values.size
                and values.max() > np.uint64(np.iinfo(np.int64).max)):
            raise ValueError(f"{name} holds values above the int64 range (largest {values.max()})")
        return values.astype(np.int64, copy=False)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        # 2^63 itself is out of range: a float64 cannot hold int64's largest value.
        if values.size and np.abs(values).max() >= 2.0 ** 63:
            raise ValueError(f"{name} holds values outside the int64 range")
        return values.astype(np.int64)
    raise TypeError(f"{name} must hold integers, got {values.dtype}")
