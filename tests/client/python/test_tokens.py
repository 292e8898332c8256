"""Bearer tokens and roles on a live server started with --tokens_file."""

import grpc
import numpy as np
import pytest

from adaptd_client import AdaptdError, Client
from live_server import ServerProcess
from synthetic import blobs

TOKENS = {"admin": "admin-token-1", "writer": "writer-token-2", "reader": "reader-token-3"}
MODEL = "guarded"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("adaptd-tokens")
    tokens_file = workdir / "tokens"
    tokens_file.write_text("".join(f"{token} {role}\n" for role, token in TOKENS.items()))
    server = ServerProcess(workdir, [f"--tokens_file={tokens_file}"])
    clients = {role: Client(server.target, token=token, timeout=60)
               for role, token in TOKENS.items()}
    clients[None] = Client(server.target, timeout=60)
    clients["wrong"] = Client(server.target, token="not-a-token", timeout=60)
    clients["admin"].create_model(MODEL, architecture="logreg", input_shape=[2], num_classes=2,
                                  config={"epochs": 1})
    yield clients
    for c in clients.values():
        c.close()
    code = server.stop()
    assert code == 0, f"adaptd exited with {code}\n{server.logs()}"


def refused(call, *args, **kwargs):
    with pytest.raises(AdaptdError) as raised:
        call(*args, **kwargs)
    return raised.value.code


@pytest.mark.parametrize("who", [None, "wrong"])
def test_unknown_callers_are_unauthenticated(secured, who):
    client = secured[who]
    assert refused(client.list_models) == grpc.StatusCode.UNAUTHENTICATED
    assert refused(client.server_info) == grpc.StatusCode.UNAUTHENTICATED
    assert refused(client.predict, MODEL,
                   np.zeros((1, 2), np.float32)) == grpc.StatusCode.UNAUTHENTICATED


def test_reader_queries_but_cannot_write(secured):
    reader = secured["reader"]
    assert reader.server_info().version
    assert MODEL in [m.name for m in reader.list_models()]
    assert reader.get_model(MODEL).current.version == 0
    assert [v.version for v in reader.list_versions(MODEL)] == [0]
    assert reader.predict(MODEL, np.zeros((2, 2), np.float32), mode="mean")["probs"].shape == (2, 2)
    assert reader.evaluate(MODEL)["version"] == 0

    x, y = blobs(0, 8, seed=1)
    assert refused(reader.stream_examples, MODEL, 0, x, y) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(reader.create_model, "mine", architecture="logreg", input_shape=[2],
                   num_classes=2) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(reader.delete_model, MODEL) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(reader.rollback, MODEL, 0) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(reader.update_config, MODEL,
                   {"epochs": 1}) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(reader.cancel_job, "any-job") == grpc.StatusCode.PERMISSION_DENIED
    assert refused(reader.export_model, MODEL) == grpc.StatusCode.PERMISSION_DENIED


def test_writer_streams_but_cannot_administer(secured):
    writer = secured["writer"]
    x, y = blobs(0, 8, seed=2)
    response = writer.stream_examples(MODEL, 0, x, y, keep_open=True)
    assert response.examples == 16
    assert writer.get_model(MODEL).tasks[0].pending_examples >= 16
    assert refused(writer.create_model, "mine", architecture="logreg", input_shape=[2],
                   num_classes=2) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(writer.delete_model, MODEL) == grpc.StatusCode.PERMISSION_DENIED
    assert refused(writer.rollback, MODEL, 0) == grpc.StatusCode.PERMISSION_DENIED


def test_admin_does_everything(secured):
    admin = secured["admin"]
    admin.create_model("scratch", architecture="logreg", input_shape=[2], num_classes=2)
    data = admin.export_model("scratch")
    admin.import_model("scratch-copy", data)
    admin.rollback("scratch", 0)
    admin.delete_model("scratch")
    admin.delete_model("scratch-copy")
    assert MODEL in [m.name for m in admin.list_models()]
