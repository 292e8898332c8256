"""The client's own logic, no server: tensors, request building, errors."""

import copy
import math
import pickle

import grpc
import numpy as np
import pytest

from adaptd.v1 import learning_pb2, model_pb2, query_pb2, tensor_pb2
from adaptd_client import AdaptdError, Client, JobError, from_tensor, ids_from_ranges, to_tensor
from adaptd_client.messages import enum_value, make_message


@pytest.mark.parametrize("dtype, wire", [
    (np.float32, tensor_pb2.DATA_TYPE_FLOAT32),
    (np.float64, tensor_pb2.DATA_TYPE_FLOAT64),
    (np.uint8, tensor_pb2.DATA_TYPE_UINT8),
    (np.int64, tensor_pb2.DATA_TYPE_INT64),
])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (2, 1, 4, 3)])
def test_tensor_round_trip(dtype, wire, shape):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    tensor = to_tensor(array)
    assert tensor.dtype == wire
    assert list(tensor.shape) == list(shape)
    assert len(tensor.raw_data) == array.size * array.itemsize
    # Through the wire format too.
    decoded = from_tensor(tensor_pb2.Tensor.FromString(tensor.SerializeToString()))
    assert decoded.dtype == np.dtype(dtype)
    assert decoded.shape == tuple(shape)
    np.testing.assert_array_equal(decoded, array)
    decoded[...] = 0  # a writable copy


def test_tensor_bytes_are_little_endian_row_major():
    tensor = to_tensor(np.array([[1, 2], [3, 256]], dtype=np.int64))
    assert tensor.raw_data == b"".join(v.to_bytes(8, "little") for v in (1, 2, 3, 256))
    tensor = to_tensor(np.array([1.0], dtype=np.float32))
    assert tensor.raw_data == bytes.fromhex("0000803f")


def test_big_endian_and_strided_arrays_are_normalised():
    big = np.arange(6, dtype=">f4").reshape(2, 3)
    np.testing.assert_array_equal(from_tensor(to_tensor(big)), big)
    assert to_tensor(big).raw_data == np.arange(6, dtype="<f4").tobytes()
    strided = np.arange(24, dtype=np.int64).reshape(4, 6)[::2, ::3]
    np.testing.assert_array_equal(from_tensor(to_tensor(strided)), strided)
    transposed = np.arange(6, dtype=np.float64).reshape(2, 3).T
    np.testing.assert_array_equal(from_tensor(to_tensor(transposed)), transposed)


@pytest.mark.parametrize("dtype", [np.int32, np.float16, np.bool_, np.complex64, object])
def test_unsupported_dtypes_are_refused(dtype):
    with pytest.raises(TypeError, match="supported dtypes"):
        to_tensor(np.zeros(3, dtype=dtype))


def test_malformed_tensors_are_refused():
    with pytest.raises(ValueError, match="needs 24 bytes, got 23"):
        from_tensor(tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT64, shape=[3],
                                      raw_data=b"\0" * 23))
    with pytest.raises(ValueError, match="negative"):
        from_tensor(tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_UINT8, shape=[-1]))
    with pytest.raises(ValueError, match="unknown tensor dtype"):
        from_tensor(tensor_pb2.Tensor(dtype=99, shape=[1], raw_data=b"\0"))
    with pytest.raises(ValueError, match="no dtype"):
        from_tensor(tensor_pb2.Tensor(shape=[1], raw_data=b"\0"))
    assert from_tensor(tensor_pb2.Tensor()) is None


def test_enum_names():
    mode = query_pb2.PredictMode.DESCRIPTOR
    assert enum_value(mode, "bayes") == query_pb2.PREDICT_MODE_BAYES
    assert enum_value(mode, "MEAN") == query_pb2.PREDICT_MODE_MEAN
    assert enum_value(mode, "PREDICT_MODE_LINEARIZED") == query_pb2.PREDICT_MODE_LINEARIZED
    assert enum_value(mode, 2) == query_pb2.PREDICT_MODE_MEAN
    assert enum_value(mode, np.int64(2)) == query_pb2.PREDICT_MODE_MEAN  # as integer fields take
    with pytest.raises(TypeError, match="PredictMode expects a name or a number, got float"):
        enum_value(mode, 2.0)
    assert enum_value(learning_pb2.Split.DESCRIPTOR, "eval") == learning_pb2.SPLIT_EVAL
    assert enum_value(query_pb2.Scope.DESCRIPTOR, "all") == query_pb2.SCOPE_ALL
    with pytest.raises(ValueError, match=r"\['bayes', 'mean', 'linearized'\]"):
        enum_value(mode, "median")
    with pytest.raises(ValueError):
        enum_value(mode, 17)


def test_messages_from_dicts_and_keywords():
    spec = make_message(model_pb2.ModelSpec, {"architecture": "mlp", "input_shape": [2]},
                        num_classes=np.int64(4), hidden=np.array([8, 8]))
    assert spec == model_pb2.ModelSpec(architecture="mlp", input_shape=[2], num_classes=4,
                                       hidden=[8, 8])
    config = make_message(model_pb2.LearningConfig,
                          {"epochs": 2, "head_mode": "multi", "ivon": {"lr": 0.05},
                           "memory_weight": 0.0})
    assert config.head_mode == model_pb2.HEAD_MODE_MULTI
    assert config.ivon.lr == 0.05
    assert config.HasField("memory_weight")
    original = model_pb2.LearningConfig(epochs=3)
    assert make_message(model_pb2.LearningConfig, original) == original
    assert make_message(model_pb2.LearningConfig, None) == model_pb2.LearningConfig()
    with pytest.raises(ValueError, match="ModelSpec has no field 'layers'"):
        make_message(model_pb2.ModelSpec, {"layers": [3]})
    with pytest.raises(TypeError, match="LearningConfig.epochs"):
        make_message(model_pb2.LearningConfig, {"epochs": "ten"})
    with pytest.raises(ValueError, match="unknown HeadMode 'dual'"):
        make_message(model_pb2.LearningConfig, {"head_mode": "dual"})
    with pytest.raises(TypeError, match="expected a ModelSpec or a dict"):
        make_message(model_pb2.ModelSpec, [1, 2])


def test_ids_from_ranges():
    ranges = [learning_pb2.IdRange(first=10, count=3), learning_pb2.IdRange(first=40, count=2)]
    np.testing.assert_array_equal(ids_from_ranges(ranges), [10, 11, 12, 40, 41])
    assert ids_from_ranges([]).dtype == np.int64


def test_errors_carry_code_and_message():
    error = AdaptdError(grpc.StatusCode.NOT_FOUND, "model 'x' not found")
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.message == "model 'x' not found"
    assert str(error) == "NOT_FOUND: model 'x' not found"
    status = learning_pb2.JobStatus(job_id="j1", model="m", state=learning_pb2.JOB_STATE_FAILED,
                                    message="diverged")
    assert "j1" in str(JobError(status)) and "JOB_STATE_FAILED: diverged" in str(JobError(status))
    # Both survive a trip to another process (pickle) and a copy, status and all.
    for original in (error, JobError(status)):
        for copied in (pickle.loads(pickle.dumps(original)), copy.copy(original)):
            assert type(copied) is type(original) and str(copied) == str(original)
    assert pickle.loads(pickle.dumps(JobError(status))).status == status


def test_unreachable_server_raises_unavailable():
    # Port 1 is privileged and unused: the connection is refused at once.
    with Client("127.0.0.1:1", timeout=5) as client:
        with pytest.raises(AdaptdError) as raised:
            client.list_models()
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def test_arguments_are_checked_before_sending():
    with Client("127.0.0.1:1") as client:
        x = np.zeros((4, 2), dtype=np.float32)
        with pytest.raises(ValueError, match=r"y must have shape \[4\]"):
            client.stream_examples("m", 0, x, np.zeros(3, dtype=np.int64))
        with pytest.raises(TypeError, match="y must hold integers"):
            client.stream_examples("m", 0, x, np.full(4, 0.5))
        with pytest.raises(TypeError, match="x must be numeric"):
            client.stream_examples("m", 0, x.astype(np.complex64), np.zeros(4))
        with pytest.raises(ValueError, match=r"client_ids must have shape \[4\]"):
            client.stream_examples("m", 0, x, np.zeros(4), client_ids=[1, 2])
        with pytest.raises(ValueError, match="unknown Split 'test'"):
            client.stream_examples("m", 0, x, np.zeros(4), split="test")
        with pytest.raises(ValueError, match="unknown PredictMode"):
            client.predict("m", x, mode="vote")


def test_integer_arguments_are_not_truncated():
    with Client("127.0.0.1:1") as client:
        x = np.zeros((4, 2), dtype=np.float32)
        with pytest.raises(TypeError, match="task_id must be an integer"):
            client.stream_examples("m", 1.7, x, np.zeros(4))
        with pytest.raises(TypeError, match="classes must be an integer"):
            client.stream_examples("m", 0, x, np.zeros(4), classes=[0, 1.5])
        with pytest.raises(TypeError, match="version must be an integer"):
            client.rollback("m", 2.5)
        with pytest.raises(TypeError, match="top_k must be an integer"):
            client.influence("m", x[:1], top_k=3.2)
        with pytest.raises(TypeError, match="batch_size must be an integer"):
            client.stream_examples("m", 0, x, np.zeros(4), batch_size=1.7)
        with pytest.raises(TypeError, match="batch_size must be an integer"):
            client.predict("m", x, batch_size=1.5)
        # A bool is an int to Python, but True is no version number.
        with pytest.raises(TypeError, match="version must be an integer, got True"):
            client.rollback("m", True)
        with pytest.raises(TypeError, match="task_id must be an integer, got np.True_|"
                                            "task_id must be an integer, got True"):
            client.stream_examples("m", np.bool_(True), x, np.zeros(4))


def test_wait_jobs_refuses_a_single_id():
    with Client("127.0.0.1:1") as client:
        with pytest.raises(TypeError, match="job_ids must be a list of job ids; got the single id"):
            client.wait_jobs("j0123", timeout=1)


def test_ids_outside_int64_are_refused():
    with Client("127.0.0.1:1") as client:
        x = np.zeros((2, 2), dtype=np.float32)
        with pytest.raises(ValueError, match="client_ids holds values above the int64 range"):
            client.stream_examples("m", 0, x, np.zeros(2),
                                   client_ids=np.array([1, 2**63], dtype=np.uint64))
        # In either byte order (">u8" is not np.uint64): refused, not wrapped to a negative id.
        with pytest.raises(ValueError, match="client_ids holds values above the int64 range"):
            client.stream_examples("m", 0, x, np.zeros(2),
                                   client_ids=np.array([1, 2**63 + 5], dtype=">u8"))
        with pytest.raises(ValueError, match="client_ids holds values outside the int64 range"):
            client.stream_examples("m", 0, x, np.zeros(2), client_ids=np.array([1.0, 1e19]))


def test_a_closed_client_says_so():
    client = Client("127.0.0.1:1")
    client.close()
    for call in (client.list_models, lambda: client.watch_job("j1"),
                 lambda: client.stream_examples("m", 0, np.zeros((1, 2)), [0])):
        with pytest.raises(AdaptdError, match="this Client is closed") as raised:
            call()
        assert raised.value.code == grpc.StatusCode.CANCELLED


def test_root_certs_may_be_a_path(tmp_path):
    # Not a valid certificate: the point is that a pathlib.Path is read as a file, which grpc
    # then refuses when it parses the PEM (at the first call), not at construction.
    pem = tmp_path / "ca.pem"
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    Client("127.0.0.1:1", root_certs=pem).close()


def test_keepalive_below_what_the_server_accepts_is_refused():
    with pytest.raises(ValueError, match="keepalive must be 0 .off. or at least 10 seconds"):
        Client("127.0.0.1:1", keepalive=5)
    Client("127.0.0.1:1", keepalive=0).close()
    Client("127.0.0.1:1", keepalive=10).close()
    Client("127.0.0.1:1", keepalive=12.5).close()
    Client("127.0.0.1:1", keepalive=np.int64(30)).close()
    Client("127.0.0.1:1", keepalive=None).close()  # off, as 0
    for wrong in (math.nan, math.inf, 2**31, np.int64(18446744073709562)):
        with pytest.raises(ValueError, match="keepalive must be a finite number of seconds, "
                                             "at most 2147483"):
            Client("127.0.0.1:1", keepalive=wrong)
    for wrong in ("60", True):
        with pytest.raises(TypeError, match="keepalive must be a number of seconds"):
            Client("127.0.0.1:1", keepalive=wrong)


def test_a_token_must_be_text():
    # bytes would go out as "Bearer b'...'" and be refused as an unknown token.
    with pytest.raises(TypeError, match="token must be a str, got bytes"):
        Client("127.0.0.1:1", token=b"secret")
    Client("127.0.0.1:1", token="secret").close()


def test_a_seed_outside_uint64_names_the_seed():
    with Client("127.0.0.1:1") as client:
        x = np.zeros((2, 2), dtype=np.float32)
        with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*64\), got -1"):
            client.predict("m", x, seed=-1)
        with pytest.raises(ValueError, match="seed must lie in"):
            client.predict("m", x, seed=2**64)
