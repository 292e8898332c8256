"""The client against a live server: models, a two-task stream of blobs, jobs and queries."""

import grpc
import numpy as np
import pytest

from adaptd.v1 import learning_pb2, model_pb2
from adaptd_client import AdaptdError, Client, ids_from_ranges
from synthetic import blobs

PER_CLASS = 64
NUM_CLASSES = 4
TASKS = 2
CONFIG = {"epochs": 2, "batch_size": 32, "memory_points": 8, "seed": 7}


def status_code(call, *args, **kwargs):
    with pytest.raises(AdaptdError) as raised:
        call(*args, **kwargs)
    assert raised.value.message, "the server should say why"
    return raised.value.code


class Trained:
    """What the `trained` fixture streamed and what the server answered."""

    def __init__(self, name):
        self.name = name
        self.x = {}
        self.y = {}
        self.client_ids = {}
        self.responses = {}
        self.jobs = {}
        self.watched = []

    def all_ids(self):
        return np.concatenate([ids_from_ranges(r.ids) for r in self.responses.values()])

    def all_client_ids(self):
        return np.concatenate(list(self.client_ids.values()))


@pytest.fixture(scope="module")
def trained(client):
    """A class-incremental logreg taught two tasks of two blobs each: versions 0, 1 and 2."""
    state = Trained("blobs")
    client.create_model(state.name, architecture="logreg", input_shape=[2],
                        num_classes=NUM_CLASSES, config=CONFIG)
    for task in range(TASKS):
        # Evaluation examples first, so the version this task publishes is scored on them.
        x_eval, y_eval = blobs(task, 16, seed=100 + task)
        client.stream_examples(state.name, task, x_eval, y_eval, split="eval")
        x, y = blobs(task, PER_CLASS, seed=task)
        ids = 1000 * (task + 1) + np.arange(len(y))
        response = client.stream_examples(state.name, task, x, y, client_ids=ids, batch_size=50)
        state.x[task], state.y[task], state.client_ids[task] = x, y, ids
        state.responses[task] = response
        # Follow the first job as it runs; wait for the second.
        if task == 0:
            state.watched = list(client.watch_job(response.job_ids[0], timeout=120))
        state.jobs[task] = client.wait_jobs(response.job_ids, timeout=120)
    yield state
    client.delete_model(state.name)


def test_server_info(client):
    info = client.server_info()
    assert info.version
    assert info.torch_version
    assert info.device.startswith(("cpu", "cuda"))
    assert "logreg" in info.architectures and "mlp" in info.architectures
    assert "kprior" in info.methods
    assert info.intra_op_threads == 1
    assert info.max_message_bytes == 64 << 20


def test_model_lifecycle(client, model_name):
    created = client.create_model(model_name, architecture="logreg", input_shape=[3],
                                  num_classes=2)
    assert created.name == model_name
    assert created.current.version == 0
    assert created.version_count == 1
    assert created.num_parameters == 3 * 2 + 2
    assert list(created.spec.input_shape) == [3]

    fetched = client.get_model(model_name)
    assert fetched.name == model_name and fetched.current.version == 0
    assert model_name in [m.name for m in client.list_models()]
    versions = client.list_versions(model_name)
    assert [v.version for v in versions] == [0]
    assert versions[0].task_id == -1

    assert status_code(client.create_model, model_name, architecture="logreg", input_shape=[3],
                       num_classes=2) == grpc.StatusCode.ALREADY_EXISTS
    client.delete_model(model_name)
    assert status_code(client.get_model, model_name) == grpc.StatusCode.NOT_FOUND
    assert model_name not in [m.name for m in client.list_models()]


def test_create_model_from_dicts(client, model_name):
    spec = {"architecture": "mlp", "input_shape": [2], "num_classes": 4, "hidden": [8]}
    config = {"epochs": 1, "head_mode": "multi", "method": "replay", "ivon": {"lr": 0.05}}
    info = client.create_model(model_name, spec, config)
    try:
        assert list(info.spec.hidden) == [8]
        assert info.config.head_mode == model_pb2.HEAD_MODE_MULTI
        assert info.config.method == "replay"
        assert info.config.ivon.lr == pytest.approx(0.05)
    finally:
        client.delete_model(model_name)


def test_invalid_models_are_refused(client):
    assert status_code(client.create_model, "no spaces allowed", architecture="logreg",
                       input_shape=[2], num_classes=2) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(client.create_model, "no-arch", architecture="transformer",
                       input_shape=[2], num_classes=2) == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_responses(trained):
    seen = []
    for task, response in trained.responses.items():
        assert response.model == trained.name
        assert response.task_id == task
        assert response.examples == 2 * PER_CLASS
        assert response.batches == 3  # 128 examples in batches of 50
        assert len(ids_from_ranges(response.ids)) == 2 * PER_CLASS
        assert len(response.job_ids) == 1
        seen.extend(ids_from_ranges(response.ids))
    assert len(set(seen)) == len(seen), "example ids are unique"


def test_jobs_publish_versions(client, trained):
    published = []
    for task, statuses in trained.jobs.items():
        (status,) = statuses
        assert status.state == learning_pb2.JOB_STATE_SUCCEEDED
        assert status.model == trained.name
        assert status.task_id == task
        assert status.examples == 2 * PER_CLASS
        assert status.total_steps > 0 and status.step == status.total_steps
        published.append(status.version)
    assert published == [1, 2]

    info = client.get_model(trained.name)
    assert info.current.version == 2
    assert info.version_count == 3
    assert info.jobs_pending == 0
    assert [t.train_examples for t in info.tasks] == [2 * PER_CLASS] * TASKS
    assert [t.eval_examples for t in info.tasks] == [32] * TASKS
    assert all(t.pending_examples == 0 for t in info.tasks)

    versions = client.list_versions(trained.name)
    assert [v.version for v in versions] == [0, 1, 2]
    assert [v.task_id for v in versions] == [-1, 0, 1]
    assert [v.job_id for v in versions[1:]] == [s[0].job_id for s in trained.jobs.values()]
    assert versions[2].memory_size > 0

    jobs = client.list_jobs(trained.name)
    assert [j.job_id for j in jobs] == [s[0].job_id for s in trained.jobs.values()]
    assert [j.version for j in jobs] == [1, 2]


def test_watch_follows_a_job(trained):
    states = [s.state for s in trained.watched]
    assert states[-1] == learning_pb2.JOB_STATE_SUCCEEDED
    assert states.count(learning_pb2.JOB_STATE_SUCCEEDED) == 1, "nothing after the end"
    steps = [s.step for s in trained.watched]
    assert steps == sorted(steps)
    assert trained.watched[-1].version == 1
    assert all(s.job_id == trained.responses[0].job_ids[0] for s in trained.watched)


def test_watch_finished_job(client, trained):
    job_id = trained.responses[0].job_ids[0]
    statuses = list(client.watch_job(job_id, timeout=30))
    assert statuses, "a finished job still reports its final state"
    assert statuses[-1].state == learning_pb2.JOB_STATE_SUCCEEDED
    assert statuses[-1].version == 1
    assert client.wait_job(job_id, timeout=30).version == 1


def test_predict(client, trained):
    x = np.concatenate([trained.x[t][:10] for t in range(TASKS)])
    bayes = client.predict(trained.name, x, mode="bayes", samples=16, seed=3)
    assert bayes["version"] == 2
    probs = bayes["probs"]
    assert probs.dtype == np.float32 and probs.shape == (20, NUM_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert bayes["labels"].dtype == np.int64 and bayes["labels"].shape == (20,)
    np.testing.assert_array_equal(bayes["labels"], probs.argmax(axis=1))
    for name in ("total_entropy", "expected_entropy", "mutual_information"):
        assert bayes[name].shape == (20,), name
        assert np.all(bayes[name] >= -1e-5), name
    assert bayes["std"].shape == (20, NUM_CLASSES)

    again = client.predict(trained.name, x, mode="bayes", samples=16, seed=3)
    np.testing.assert_array_equal(again["probs"], probs)

    mean = client.predict(trained.name, x, mode="mean")
    assert mean["version"] == 2
    assert mean["probs"].shape == (20, NUM_CLASSES)
    assert mean["labels"].shape == (20,)
    np.testing.assert_allclose(mean["probs"].sum(axis=1), 1.0, atol=1e-4)

    linearized = client.predict(trained.name, x, mode="linearized", samples=16)
    assert linearized["probs"].shape == (20, NUM_CLASSES)

    # uint8 examples are accepted and scaled by 1/255 on the server: bytes of 255 and 51 predict
    # as the floats 1.0 and 0.2 do.
    pixels = np.array([[255, 51], [51, 255]], dtype=np.uint8)
    as_bytes = client.predict(trained.name, pixels, mode="mean")
    as_floats = client.predict(trained.name, pixels.astype(np.float32) / 255, mode="mean")
    assert as_bytes["probs"].shape == (2, NUM_CLASSES)
    np.testing.assert_allclose(as_bytes["probs"], as_floats["probs"], rtol=1e-6, atol=1e-7)
    unscaled = client.predict(trained.name, pixels.astype(np.float32), mode="mean")
    assert not np.allclose(as_bytes["probs"], unscaled["probs"], atol=1e-3)


def test_predict_splits_large_inputs(client, trained, server):
    x = np.concatenate([trained.x[t] for t in range(TASKS)])
    whole = client.predict(trained.name, x, mode="mean")
    split = client.predict(trained.name, x, mode="mean", batch_size=7)
    assert split["version"] == whole["version"]
    # Equal up to the rounding that a different batch size may give the matrix products.
    for name in ("probs", "std"):
        np.testing.assert_allclose(split[name], whole[name], rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(split["labels"], whole["labels"])
    # Sized by itself when the input outgrows the messages: a client with a small limit.
    # Sized by itself when the question or only the answer outgrows the messages.
    with Client(server.target, max_message_bytes=4096) as small:
        for copies in (20, 1):  # 20: a large question; 1: 200 rows whose answer is larger
            auto = small.predict(trained.name, np.repeat(x, copies, axis=0), mode="mean")
            np.testing.assert_allclose(auto["probs"], np.repeat(whole["probs"], copies, axis=0),
                                       rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        client.predict(trained.name, x, mode="mean", batch_size=0)


def test_predict_pinned_version(client, trained):
    x = trained.x[0][:5]
    first = client.predict(trained.name, x, mode="mean", version=1)
    assert first["version"] == 1
    prior = client.predict(trained.name, x, mode="mean", version=0)
    assert prior["version"] == 0
    assert not np.allclose(first["probs"], prior["probs"]), "training changed the model"


def test_predictions_learn_the_latest_task(client, trained):
    latest = TASKS - 1
    result = client.predict(trained.name, trained.x[latest], mode="mean")
    accuracy = np.mean(result["labels"] == trained.y[latest])
    assert accuracy > 0.8, f"accuracy {accuracy} on well-separated blobs the model just learnt"


def test_influence(client, trained):
    query = trained.x[1][:1]
    memory = client.influence(trained.name, query, top_k=5)
    assert memory["version"] == 2
    assert memory["examples_scored"] == client.get_model(trained.name).current.memory_size
    assert 0 < len(memory["example_ids"]) <= 5
    assert 0 <= memory["query_class"] < NUM_CLASSES
    assert 0 < memory["query_probability"] <= 1
    assert set(memory["example_ids"]) <= set(trained.all_ids())
    assert set(memory["client_ids"]) <= set(trained.all_client_ids())
    assert set(memory["task_ids"]) <= set(range(TASKS))
    assert set(memory["labels"]) <= set(range(NUM_CLASSES))
    assert np.all(np.isfinite(memory["scores"]))

    everything = client.influence(trained.name, query[0], top_k=7, scope="all")
    assert everything["examples_scored"] == TASKS * 2 * PER_CLASS
    assert len(everything["example_ids"]) == 7
    assert set(everything["example_ids"]) <= set(trained.all_ids())
    # The client ids the stream gave travel with the examples.
    lookup = dict(zip(trained.all_ids(), trained.all_client_ids()))
    for example_id, client_id in zip(everything["example_ids"], everything["client_ids"]):
        assert lookup[example_id] == client_id


def test_memory_map(client, trained):
    memory_size = client.get_model(trained.name).current.memory_size
    memory = client.memory_map(trained.name)
    assert memory["version"] == 2
    n = len(memory["example_ids"])
    assert n == memory_size > 0
    for name in ("client_ids", "labels", "task_ids", "sensitivity"):
        assert memory[name].shape == (n,), name
    for name in ("error", "variance", "lambda"):
        assert memory[name].shape == (n, NUM_CLASSES), name
        assert memory[name].dtype == np.float32, name
    assert set(memory["example_ids"]) <= set(trained.all_ids())
    assert 0 <= memory["loo_accuracy"] <= 1
    assert memory["loo_nll"] >= 0

    everything = client.memory_map(trained.name, scope="all")
    assert len(everything["example_ids"]) == TASKS * 2 * PER_CLASS
    assert set(everything["example_ids"]) == set(trained.all_ids())
    assert set(everything["client_ids"]) == set(trained.all_client_ids())
    np.testing.assert_allclose(everything["error"].sum(axis=1), 0.0, atol=1e-4)

    pinned = client.memory_map(trained.name, version=1)
    assert pinned["version"] == 1
    assert set(pinned["task_ids"]) <= {0}


def test_evaluate(client, trained):
    result = client.evaluate(trained.name)
    assert result["version"] == 2
    np.testing.assert_array_equal(result["versions"], [0, 1, 2])
    np.testing.assert_array_equal(result["task_ids"], [-1, 0, 1])
    accuracy = result["accuracy"]
    assert accuracy.shape == (3, TASKS)
    assert np.all(np.isfinite(accuracy[-1])), "the current version is scored on every task"
    finite = accuracy[np.isfinite(accuracy)]
    assert np.all((finite >= 0) & (finite <= 1))
    assert 0 <= result["average_accuracy"] <= 1
    assert result["average_accuracy"] == pytest.approx(accuracy[-1].mean())
    assert result["forgetting"].shape == (TASKS,)


def test_export_and_import(client, trained):
    data = client.export_model(trained.name)
    assert len(data) > 0
    copy = trained.name + "-copy"
    info = client.import_model(copy, data, chunk_bytes=4096)
    try:
        assert info.name == copy
        assert list(info.spec.input_shape) == [2]
        assert [t.train_examples for t in info.tasks] == [2 * PER_CLASS] * TASKS
        x = trained.x[1][:8]
        np.testing.assert_allclose(client.predict(copy, x, mode="mean")["probs"],
                                   client.predict(trained.name, x, mode="mean")["probs"],
                                   atol=1e-6)
        assert status_code(client.import_model, copy, data) == grpc.StatusCode.ALREADY_EXISTS
    finally:
        client.delete_model(copy)


def test_rollback(client, model_name):
    client.create_model(model_name, architecture="logreg", input_shape=[2], num_classes=2)
    try:
        info = client.rollback(model_name, 0)
        assert info.current.version == 1
        assert info.current.rolled_back_from == 0
        assert info.current.task_id == -1
        assert [v.version for v in client.list_versions(model_name)] == [0, 1]
        assert status_code(client.rollback, model_name, 7) == grpc.StatusCode.NOT_FOUND
    finally:
        client.delete_model(model_name)


def test_update_config_changes_only_the_named_fields(client, model_name):
    created = client.create_model(model_name, architecture="logreg", input_shape=[2],
                                  num_classes=2, config={"epochs": 3, "ivon": {"beta2": 0.999}})
    try:
        info = client.update_config(model_name, {"epochs": 7, "ivon": {"lr": 0.05}})
        expected = created.config
        expected.epochs = 7
        expected.ivon.lr = 0.05
        assert info.config == expected
        assert client.get_model(model_name).config == expected
        # A whole message named: its fields go back to their defaults.
        assert client.update_config(model_name, {"ivon": {}}).config.ivon.beta2 == 0.9999
        assert status_code(client.update_config, model_name,
                           {"method": "replay"}) == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(TypeError, match="non-empty dict"):
            client.update_config(model_name, {})
    finally:
        client.delete_model(model_name)


def test_keep_open_defers_adaptation(client, model_name):
    client.create_model(model_name, architecture="logreg", input_shape=[2], num_classes=2,
                        config={"epochs": 1})
    try:
        x, y = blobs(0, 20, seed=5)
        calls = []
        response = client.stream_examples(model_name, 0, x, y, keep_open=True, batch_size=16,
                                          progress=lambda sent, total: calls.append((sent, total)))
        assert calls == [(16, 40), (32, 40), (40, 40)]
        assert response.examples == 40
        assert list(response.job_ids) == []
        assert response.version == 0
        info = client.get_model(model_name)
        assert info.current.version == 0
        assert info.tasks[0].pending_examples == 40
    finally:
        client.delete_model(model_name)


def test_failed_progress_callback_stores_nothing(client, model_name):
    client.create_model(model_name, architecture="logreg", input_shape=[2], num_classes=2)
    try:
        x, y = blobs(0, 20, seed=6)

        def stop(sent, total):
            if sent >= 16:
                raise InterruptedError("stop")

        with pytest.raises(InterruptedError, match="stop"):
            client.stream_examples(model_name, 0, x, y, keep_open=True, batch_size=8,
                                   progress=stop)
        assert list(client.get_model(model_name).tasks) == []
    finally:
        client.delete_model(model_name)


def test_error_mapping(client, trained):
    assert status_code(client.get_model, "no-such-model") == grpc.StatusCode.NOT_FOUND
    assert status_code(client.predict, "no-such-model",
                       np.zeros((1, 2), np.float32)) == grpc.StatusCode.NOT_FOUND
    assert status_code(client.stream_examples, "no-such-model", 0, np.zeros((2, 2)),
                       [0, 1]) == grpc.StatusCode.NOT_FOUND
    assert status_code(client.wait_job, "no-such-job") == grpc.StatusCode.NOT_FOUND
    assert status_code(client.cancel_job, "no-such-job") == grpc.StatusCode.NOT_FOUND
    # Examples of the wrong shape: the model takes [B, 2].
    assert status_code(client.predict, trained.name,
                       np.zeros((3, 5), np.float32)) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_code(client.stream_examples, trained.name, 1, np.zeros((3, 5)),
                       [2, 3, 2]) == grpc.StatusCode.INVALID_ARGUMENT
    # Labels outside [0, num_classes).
    assert status_code(client.stream_examples, trained.name, 1, np.zeros((2, 2)),
                       [0, NUM_CLASSES]) == grpc.StatusCode.INVALID_ARGUMENT
    # A version that was never published.
    assert status_code(client.predict, trained.name, np.zeros((1, 2), np.float32),
                       version=99) == grpc.StatusCode.NOT_FOUND
    # Refused streams stored nothing.
    info = client.get_model(trained.name)
    assert [t.train_examples for t in info.tasks] == [2 * PER_CLASS] * TASKS
