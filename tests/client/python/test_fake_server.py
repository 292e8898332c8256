"""The client's wire behaviour against an in-process stand-in server (no adaptd binary needed):
metadata, batching, chunking, cancellation and error mapping."""

import threading
from concurrent import futures

import grpc
import numpy as np
import pytest

from adaptd.v1 import (admin_pb2, admin_pb2_grpc, learning_pb2, learning_pb2_grpc, model_pb2,
                       query_pb2, query_pb2_grpc)
from adaptd_client import AdaptdError, Client, JobError, from_tensor, to_tensor

SNAPSHOT = bytes(range(256)) * 40


class Recorder:
    def __init__(self):
        self.metadata = []
        self.streams = []
        self.cancelled = threading.Event()
        self.imported = []
        self.version_pages = []


class Admin(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, recorder):
        self.recorder = recorder

    def ListModels(self, request, context):
        self.recorder.metadata.append(dict(context.invocation_metadata()))
        return admin_pb2.ListModelsResponse()

    def GetModel(self, request, context):
        if request.name == "oom":
            return model_pb2.ModelInfo(name="oom", spec=model_pb2.ModelSpec(num_classes=3))
        context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.name}' not found")

    def Export(self, request, context):
        for start in range(0, len(SNAPSHOT), 1000):
            yield admin_pb2.SnapshotChunk(data=SNAPSHOT[start:start + 1000])

    def Import(self, request_iterator, context):
        chunks = list(request_iterator)
        self.recorder.imported = chunks
        return model_pb2.ModelInfo(name=chunks[0].name)

    def ListVersions(self, request, context):
        # 2,345 versions, of which a message holds at most 600, as a server's limit would.
        self.recorder.version_pages.append((request.first_version, request.max_versions))
        if request.max_versions == 0 or request.max_versions > 600:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the answer would take too many bytes")
        end = min(request.first_version + request.max_versions, 2345)
        response = admin_pb2.ListVersionsResponse(
            versions=[model_pb2.VersionInfo(version=v) for v in range(request.first_version, end)])
        if end < 2345:
            response.next_version = end
        return response


class Learning(learning_pb2_grpc.LearningServiceServicer):
    def __init__(self, recorder):
        self.recorder = recorder

    def StreamExamples(self, request_iterator, context):
        context.add_callback(self.recorder.cancelled.set)
        requests = list(request_iterator)
        batches = [r.batch for r in requests[1:] if r.HasField("batch")]
        examples = sum(from_tensor(b.y).shape[0] for b in batches)
        ends = [r.end.examples for r in requests if r.HasField("end")]
        if ends != [examples]:
            # As the real server: a stream without its end message (cancelled, or cut short)
            # stores nothing, even when its half-close arrives before the cancellation.
            context.abort(grpc.StatusCode.ABORTED, "the stream lacks its end message")
        self.recorder.streams.append(requests)
        response = learning_pb2.StreamExamplesResponse(
            model=requests[0].header.model, task_id=requests[0].header.task_id,
            examples=examples, batches=len(batches),
            ids=[learning_pb2.IdRange(first=0, count=examples)], job_ids=["job-1"])
        if requests[0].header.model == "nojob":  # stored, but the catalog took no job
            del response.job_ids[:]
            response.no_job_reason = "the examples are stored, but no job was queued"
        return response

    def WatchJob(self, request, context):
        final = (learning_pb2.JOB_STATE_FAILED if request.job_id == "bad"
                 else learning_pb2.JOB_STATE_SUCCEEDED)
        for step, state in enumerate([learning_pb2.JOB_STATE_QUEUED,
                                      learning_pb2.JOB_STATE_RUNNING, final]):
            yield learning_pb2.JobStatus(job_id=request.job_id, state=state, step=step,
                                         total_steps=2, version=1, message="done")


class Query(query_pb2_grpc.QueryServiceServicer):
    def __init__(self):
        self.retiring_calls = 0
        self.oom_calls = 0

    def Predict(self, request, context):
        x = from_tensor(request.x)
        if x.ndim != 2 or x.shape[1] != 2:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"x has shape {list(x.shape)}")
        current = 4
        if request.model == "oom":  # a server short of memory, whatever the size
            self.oom_calls += 1
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "CUDA out of memory")
        if request.model == "retiring":  # version 7, deleted after one answer; then 8
            self.retiring_calls += 1
            current = 7 if self.retiring_calls == 1 else 8
            if request.HasField("version") and request.version == 7 and self.retiring_calls > 1:
                context.abort(grpc.StatusCode.NOT_FOUND, "version 7's checkpoint was deleted")
        probs = np.full((x.shape[0], 3), 1 / 3, dtype=np.float32)
        version = request.version if request.HasField("version") else current
        return query_pb2.PredictResponse(version=version, probs=to_tensor(probs),
                                         labels=to_tensor(np.zeros(x.shape[0], np.int64)))

    def Evaluate(self, request, context):
        return query_pb2.EvaluateResponse(version=2, rows=[
            query_pb2.AccuracyRow(version=0, task_id=-1, accuracy=[0.5]),
            query_pb2.AccuracyRow(version=1, task_id=0, accuracy=[0.9, 0.4]),
        ], forgetting=[0.1, 0.0])


@pytest.fixture(scope="module")
def fake():
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    admin_pb2_grpc.add_AdminServiceServicer_to_server(Admin(recorder), server)
    learning_pb2_grpc.add_LearningServiceServicer_to_server(Learning(recorder), server)
    recorder.query = Query()
    query_pb2_grpc.add_QueryServiceServicer_to_server(recorder.query, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    recorder.target = f"127.0.0.1:{port}"
    yield recorder
    server.stop(None)


def test_token_travels_as_bearer_metadata(fake):
    with Client(fake.target, token="s3cret") as client:
        client.list_models()
    with Client(fake.target) as client:
        client.list_models()
    assert fake.metadata[-2]["authorization"] == "Bearer s3cret"
    assert "authorization" not in fake.metadata[-1]


def test_stream_sends_header_then_batches(fake):
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    with Client(fake.target) as client:
        response = client.stream_examples("m", 3, x, np.arange(10) % 2, split="eval",
                                          classes=[4, 5], batch_size=4,
                                          client_ids=np.arange(100, 110, dtype=np.int32))
    assert response.examples == 10 and response.batches == 3
    header, *batches, end = fake.streams[-1]
    assert end.end.examples == 10
    assert header.header == learning_pb2.StreamHeader(model="m", task_id=3,
                                                      split=learning_pb2.SPLIT_EVAL,
                                                      classes=[4, 5])
    assert [list(b.batch.x.shape) for b in batches] == [[4, 2], [4, 2], [2, 2]]
    xs = np.concatenate([from_tensor(b.batch.x) for b in batches])
    assert xs.dtype == np.float32
    np.testing.assert_array_equal(xs, x)
    ids = np.concatenate([from_tensor(b.batch.client_ids) for b in batches])
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, np.arange(100, 110))


def test_a_stream_whose_job_was_not_queued_warns(fake):
    with Client(fake.target) as client:
        with pytest.warns(RuntimeWarning, match="the examples are stored, but no job was queued"):
            response = client.stream_examples("nojob", 0, np.zeros((3, 2)), [0, 1, 0])
    assert response.examples == 3 and not response.job_ids


def test_a_long_history_is_listed_a_page_at_a_time(fake):
    with Client(fake.target) as client:
        versions = client.list_versions("m")
    assert [v.version for v in versions] == list(range(2345))
    # A page of 1,000 is refused as too large; 500 fit, and the rest follow from where each
    # page ended.
    assert fake.version_pages == [(0, 1000), (0, 500), (500, 500), (1000, 500), (1500, 500),
                                  (2000, 500)]


def test_batches_fit_the_message_limit(fake):
    x = np.zeros((10, 40000), dtype=np.float32)  # 160 kB per example
    with Client(fake.target, max_message_bytes=1 << 20) as client:
        client.stream_examples("m", 0, x, np.zeros(10), batch_size=1024)
    sizes = [b.batch.x.shape[0] for b in fake.streams[-1][1:-1]]
    assert sum(sizes) == 10 and max(sizes) * 160000 < 1 << 20


def test_failing_progress_cancels_the_stream(fake):
    fake.cancelled.clear()
    before = len(fake.streams)

    def progress(sent, total):
        if sent >= 4:
            raise InterruptedError("user stopped")

    with Client(fake.target) as client:
        with pytest.raises(InterruptedError, match="user stopped"):
            client.stream_examples("m", 0, np.zeros((12, 2)), np.zeros(12), batch_size=2,
                                   progress=progress)
    assert fake.cancelled.wait(5), "the server saw the stream cancelled, not closed"
    assert len(fake.streams) == before, "a cancelled stream never completes on the server"


def test_export_and_import_chunks(fake):
    with Client(fake.target) as client:
        data = client.export_model("m")
        assert data == SNAPSHOT
        info = client.import_model("copy", data, chunk_bytes=3000)
    assert info.name == "copy"
    assert [c.name for c in fake.imported] == ["copy", "", "", ""]
    assert b"".join(c.data for c in fake.imported) == SNAPSHOT
    with Client(fake.target) as client:
        client.import_model("empty", b"")
    assert [c.name for c in fake.imported] == ["empty"]
    # By default each chunk and its framing fit the smallest limit a server takes, 1 MiB.
    with Client(fake.target) as client:
        client.import_model("big", b"x" * (2 << 20))
    assert len(fake.imported) == 3
    assert max(c.ByteSize() for c in fake.imported) < 1 << 20


def test_wait_job(fake):
    with Client(fake.target) as client:
        states = [s.state for s in client.watch_job("ok")]
        assert states == [learning_pb2.JOB_STATE_QUEUED, learning_pb2.JOB_STATE_RUNNING,
                          learning_pb2.JOB_STATE_SUCCEEDED]
        assert client.wait_job("ok").version == 1
        with pytest.raises(JobError) as raised:
            client.wait_job("bad")
        assert raised.value.status.state == learning_pb2.JOB_STATE_FAILED
        assert client.wait_job("bad", check=False).state == learning_pb2.JOB_STATE_FAILED
        # Jobs that have ended answer at once: a budget spent on the first still covers them.
        ended = client.wait_jobs(["ok"] * 5, timeout=1e-6)
        assert [s.state for s in ended] == [learning_pb2.JOB_STATE_SUCCEEDED] * 5


def test_an_empty_stream_reports_its_upload_complete(fake):
    seen = []
    with Client(fake.target) as client:
        client.stream_examples("m", 0, np.zeros((0, 2), np.float32), np.zeros(0, np.int64),
                               progress=lambda sent, total: seen.append((sent, total)))
    assert seen == [(0, 0)]


def test_a_progress_error_on_an_empty_stream_reaches_the_caller(fake):
    # The empty stream's one progress call fails: the caller gets that error (not gRPC's
    # UNKNOWN "Exception iterating requests!"), and the server stores nothing. (The cancel may
    # come before the server's handler starts, so no cancellation callback is awaited here.)
    before = len(fake.streams)

    def progress(sent, total):
        return sent / total  # 0 / 0

    with Client(fake.target) as client:
        with pytest.raises(ZeroDivisionError):
            client.stream_examples("m", 0, np.zeros((0, 2), np.float32), np.zeros(0, np.int64),
                                   progress=progress)
    assert len(fake.streams) == before


def test_a_predict_refused_for_memory_is_not_sent_again(fake):
    # RESOURCE_EXHAUSTED on a request whose answer fits a message is the server's shortage,
    # not the message limit: splitting cannot help, so the same request is not repeated.
    with Client(fake.target) as client:
        with pytest.raises(AdaptdError) as raised:
            client.predict("oom", np.zeros((5, 2), np.float32), mode="mean")
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fake.query.oom_calls == 1


def test_queries_decode_to_numpy(fake):
    with Client(fake.target) as client:
        result = client.predict("m", [[0.0, 1.0], [2.0, 3.0]], mode="mean")
        assert result["version"] == 4
        assert result["probs"].shape == (2, 3) and result["probs"].dtype == np.float32
        assert result["labels"].dtype == np.int64
        assert result["std"] is None
        table = client.evaluate("m")
        np.testing.assert_array_equal(table["versions"], [0, 1])
        np.testing.assert_array_equal(table["accuracy"][1], [0.9, 0.4])
        assert table["accuracy"][0, 0] == 0.5 and np.isnan(table["accuracy"][0, 1])


def test_a_split_predict_starts_again_when_its_version_is_deleted(fake):
    x = np.zeros((5, 2), np.float32)
    with Client(fake.target) as client:
        result = client.predict("retiring", x, mode="mean", batch_size=2)
        assert result["version"] == 8
        assert result["probs"].shape == (5, 3)
        # A version the caller named is not replaced.
        with pytest.raises(AdaptdError) as raised:
            client.predict("retiring", x, mode="mean", batch_size=2, version=7)
        assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_server_errors_become_adaptd_errors(fake):
    with Client(fake.target) as client:
        with pytest.raises(AdaptdError) as raised:
            client.get_model("ghost")
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
        assert raised.value.message == "model 'ghost' not found"
        with pytest.raises(AdaptdError) as raised:
            client.predict("m", np.zeros((1, 5)))
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(AdaptdError) as raised:
            client.rollback("m", 1)  # not implemented by the stand-in
        assert raised.value.code == grpc.StatusCode.UNIMPLEMENTED
