"""Client: one method per adaptd RPC, numpy arrays in and out."""

import math
import numbers
import operator
import os
import threading
import time
import warnings

import grpc
import numpy as np

from adaptd_client._stubs import (admin_pb2, admin_pb2_grpc, learning_pb2, learning_pb2_grpc,
                                  model_pb2, query_pb2, query_pb2_grpc)
from adaptd_client.errors import AdaptdError, JobError, wrap_rpc_errors, wrap_rpc_stream
from adaptd_client.messages import enum_value, make_message
from adaptd_client.tensors import as_features, as_int64, from_tensor, to_tensor

TERMINAL_JOB_STATES = frozenset(
    {learning_pb2.JOB_STATE_SUCCEEDED, learning_pb2.JOB_STATE_FAILED, learning_pb2.JOB_STATE_CANCELLED})

# The shortest keepalive interval an adaptd server accepts from its clients.
MIN_KEEPALIVE_SECONDS = 10

# Room left in each message for everything but the tensors' bytes.
_MESSAGE_OVERHEAD = 64 << 10

# Import's chunk of snapshot bytes: with its framing under 1 MiB, the smallest message limit a
# server accepts (--max_message_mb).
_SNAPSHOT_CHUNK = (1 << 20) - _MESSAGE_OVERHEAD


def ids_from_ranges(ranges):
    """The example ids of a StreamExamplesResponse's `ids` ranges, in order, as int64 [N]."""
    parts = [np.arange(r.first, r.first + r.count, dtype=np.int64) for r in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _index(value, name):
    # An integer argument: Python or numpy integers; 1.7 is refused rather than sent as 1, and
    # True rather than sent as version or task 1.
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def _seed(value):
    # PredictRequest.seed is a uint64: a negative seed would fail in protobuf as "Value out of
    # range", naming no argument.
    seed = _index(value, "seed")
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
    return seed


def _optional_int(value, name):
    # None leaves a proto3 `optional` field unset.
    return None if value is None else _index(value, name)


def _leaf_paths(changes, prefix=""):
    # "epochs", "ivon.lr": the field paths of a nested dict's leaves (an empty dict is a leaf).
    for key, value in changes.items():
        path = prefix + key
        if isinstance(value, dict) and value:
            yield from _leaf_paths(value, path + ".")
        else:
            yield path


class Client:
    """A connection to an adaptd server.

    target: "host:port". token: sent as `authorization: Bearer <token>` on every call.
    root_certs: PEM bytes, or the path of a PEM file, of the CAs that sign the server's
    certificate; given, the channel uses TLS, else it is plaintext. max_message_bytes must match
    the server's --max_message_mb. timeout: the deadline in seconds of every unary call (methods
    take `timeout=` to override it); streams (stream_examples, watch_job, export/import) have no
    deadline unless given one. keepalive: seconds between pings on a call that carries no data
    (a watch of a queued job), so that a connection that died silently fails the call within
    keepalive + 20 s instead of leaving it waiting forever; 0 or None turns it off, and the server
    accepts no more often than every 10 s.

    Errors from the server raise AdaptdError (.code, a grpc.StatusCode, and .message); values
    the client can check itself raise TypeError or ValueError before anything is sent. Safe to
    share between threads. Use as a context manager, or call close().
    """

    def __init__(self, target, token=None, root_certs=None, max_message_bytes=64 << 20,
                 timeout=30, options=None, keepalive=60):
        self.target = target
        self.timeout = timeout
        self.max_message_bytes = int(max_message_bytes)
        channel_options = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]
        if token is not None and not isinstance(token, str):
            # bytes would go out as "Bearer b'...'", a token the server does not know.
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        if keepalive is not None and (isinstance(keepalive, (bool, np.bool_))
                                      or not isinstance(keepalive, numbers.Real)):
            raise TypeError(f"keepalive must be a number of seconds, got {keepalive!r}")
        if keepalive:
            # As a float first: numpy's integers wrap around when multiplied. gRPC takes the
            # interval as a C int of milliseconds.
            seconds = float(keepalive)
            if not math.isfinite(seconds) or seconds * 1000 > 2**31 - 1:
                raise ValueError(f"keepalive must be a finite number of seconds, at most "
                                 f"{(2**31 - 1) // 1000}, got {keepalive}")
            if seconds < MIN_KEEPALIVE_SECONDS:
                raise ValueError(f"keepalive must be 0 (off) or at least {MIN_KEEPALIVE_SECONDS} "
                                 f"seconds (the server refuses more frequent pings), got {keepalive}")
            channel_options += [
                ("grpc.keepalive_time_ms", int(seconds * 1000)),
                ("grpc.keepalive_timeout_ms", 20000),
                ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle call
            ]
        channel_options.extend(options or [])
        if root_certs is not None:
            if isinstance(root_certs, (str, os.PathLike)):
                with open(root_certs, "rb") as f:
                    root_certs = f.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certs)
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        else:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._admin = admin_pb2_grpc.AdminServiceStub(self._channel)
        self._learning = learning_pb2_grpc.LearningServiceStub(self._channel)
        self._query = query_pb2_grpc.QueryServiceStub(self._channel)
        self._closed = False

    def close(self):
        self._closed = True
        self._channel.close()

    def _check_open(self):
        if self._closed:
            raise AdaptdError(grpc.StatusCode.CANCELLED, "this Client is closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Client({self.target!r})"

    def _deadline(self, timeout):
        return self.timeout if timeout is None else timeout

    # --- AdminService -------------------------------------------------------------------------

    @wrap_rpc_errors
    def server_info(self, timeout=None):
        """GetServerInfoResponse: version, torch_version, device, architectures, methods, ..."""
        return self._admin.GetServerInfo(admin_pb2.GetServerInfoRequest(),
                                         timeout=self._deadline(timeout), metadata=self._metadata)

    @wrap_rpc_errors
    def create_model(self, name, spec=None, config=None, timeout=None, **spec_fields):
        """Creates a model at version 0 and returns its ModelInfo.

        spec: a ModelSpec or a dict of its fields; keyword arguments add to it, e.g.
        create_model("m", architecture="mlp", input_shape=[784], num_classes=10, hidden=[256]).
        config: a LearningConfig or a dict, e.g. {"epochs": 2, "head_mode": "multi",
        "ivon": {"lr": 0.05}}.
        """
        request = admin_pb2.CreateModelRequest(
            name=name,
            spec=make_message(model_pb2.ModelSpec, spec, **spec_fields),
            config=make_message(model_pb2.LearningConfig, config))
        return self._admin.CreateModel(request, timeout=self._deadline(timeout),
                                       metadata=self._metadata)

    @wrap_rpc_errors
    def get_model(self, name, timeout=None):
        """ModelInfo: spec, config, current version, tasks, jobs pending."""
        return self._admin.GetModel(admin_pb2.GetModelRequest(name=name),
                                    timeout=self._deadline(timeout), metadata=self._metadata)

    @wrap_rpc_errors
    def list_models(self, timeout=None):
        """A list of ModelInfo."""
        response = self._admin.ListModels(admin_pb2.ListModelsRequest(),
                                          timeout=self._deadline(timeout), metadata=self._metadata)
        return list(response.models)

    @wrap_rpc_errors
    def delete_model(self, name, timeout=None):
        self._admin.DeleteModel(admin_pb2.DeleteModelRequest(name=name),
                                timeout=self._deadline(timeout), metadata=self._metadata)

    @wrap_rpc_errors
    def list_versions(self, name, timeout=None):
        """A list of VersionInfo, oldest first (asked for a page at a time; `timeout` bounds each
        page)."""
        versions, _ = self._all_pages(
            self._admin.ListVersions,
            lambda first, page: admin_pb2.ListVersionsRequest(name=name, first_version=first,
                                                              max_versions=page),
            lambda response: response.versions, timeout)
        return versions

    def _all_pages(self, method, request, rows_of, timeout):
        # A versioned list (ListVersions' versions, Evaluate's rows) asked for a page at a time,
        # so that a long history fits the message limit: up to 1,000 versions a page, halved
        # while a page is refused as too large. Returns the rows and the last page. A server
        # that does not page answers the whole list at once, without a next version.
        rows, first, page = [], 0, 1000
        while True:
            try:
                response = method(request(first, page), timeout=self._deadline(timeout),
                                  metadata=self._metadata)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and page > 1:
                    page //= 2
                    continue
                raise
            rows.extend(rows_of(response))
            if not response.HasField("next_version"):
                return rows, response
            if response.next_version <= first:
                raise AdaptdError(grpc.StatusCode.INTERNAL,
                                  f"the server's next page starts at version "
                                  f"{response.next_version}, not after {first}")
            first = response.next_version

    @wrap_rpc_errors
    def rollback(self, name, version, timeout=None):
        """Publishes a copy of `version` as a new version; returns the ModelInfo."""
        return self._admin.Rollback(admin_pb2.RollbackRequest(name=name,
                                                              version=_index(version, "version")),
                                    timeout=self._deadline(timeout), metadata=self._metadata)

    @wrap_rpc_errors
    def update_config(self, name, changes, timeout=None):
        """Changes the learning settings that `changes` names, for the jobs that start from then
        on, and returns the ModelInfo with the new config.

        changes: a dict of LearningConfig fields, nested for IVON's, e.g.
        {"epochs": 20, "ivon": {"lr": 0.05}}. Each leaf is set and named in the update mask; an
        empty dict, e.g. {"ivon": {}}, or a message object resets that whole message to its
        defaults but for the fields it sets. A field set to 0 takes its default (memory_weight,
        an optional field, becomes 0). `method` and `head_mode` cannot change; see
        docs/api.md for when each change takes effect.
        """
        if not isinstance(changes, dict) or not changes:
            raise TypeError(f"changes must be a non-empty dict of LearningConfig fields; "
                            f"got {changes!r}")
        request = admin_pb2.UpdateConfigRequest(
            name=name, config=make_message(model_pb2.LearningConfig, changes))
        request.update_mask.paths.extend(_leaf_paths(changes))
        return self._admin.UpdateConfig(request, timeout=self._deadline(timeout),
                                        metadata=self._metadata)

    @wrap_rpc_errors
    def export_model(self, name, timeout=None):
        """The snapshot of the model's current version, as bytes."""
        chunks = self._admin.Export(admin_pb2.ExportRequest(name=name), timeout=timeout,
                                    metadata=self._metadata)
        return b"".join(chunk.data for chunk in chunks)

    @wrap_rpc_errors
    def import_model(self, name, data, chunk_bytes=_SNAPSHOT_CHUNK, timeout=None):
        """Creates model `name` from a snapshot (bytes from export_model); returns its ModelInfo."""
        view = memoryview(data).cast("B")
        step = max(1, min(int(chunk_bytes), self.max_message_bytes - _MESSAGE_OVERHEAD))

        def chunks():
            yield admin_pb2.SnapshotChunk(name=name, data=bytes(view[:step]))
            for start in range(step, len(view), step):
                yield admin_pb2.SnapshotChunk(data=bytes(view[start:start + step]))

        return self._admin.Import(chunks(), timeout=timeout, metadata=self._metadata)

    # --- LearningService ----------------------------------------------------------------------

    def stream_examples(self, model, task_id, x, y, split="train", classes=None, keep_open=False,
                        batch_size=1024, client_ids=None, progress=None, timeout=None):
        """Streams examples x [N, input_shape...] with labels y [N] to task `task_id`.

        x is sent as float32 (uint8 as is: the server scales it by 1/255); y and client_ids as
        int64. split: "train" or "eval". classes: the task's classes (multi-head models, first
        stream of a task). keep_open: more training streams of this task follow, do not adapt
        yet. Batches hold at most batch_size examples and fit max_message_bytes.
        progress(sent, total) is called as batches go out.

        Returns the StreamExamplesResponse: examples stored, their ids (ids_from_ranges) and
        the job_ids of the adaptation jobs that learn them (queued or joined; for a stream of no
        examples, possibly the task's running job). The stream is all-or-nothing, with one caveat: an
        error that comes after the end message went out (a timeout, an interrupt while waiting
        for the reply) may come after the server stored the examples. Check get_model's task
        counts before resending, or the examples are stored twice. If the examples were
        stored but no job could be queued to learn them (a full disk, say), the response's
        no_job_reason says why, a RuntimeWarning repeats it, and job_ids lacks the job.
        """
        self._check_open()
        x = as_features(x)
        y = as_int64(y, "y")
        if x.ndim < 1:
            raise ValueError("x must be [N, input_shape...]")
        n = x.shape[0]
        if y.shape != (n,):
            raise ValueError(f"y must have shape [{n}] to match x {list(x.shape)}, "
                             f"got {list(y.shape)}")
        if client_ids is not None:
            client_ids = as_int64(client_ids, "client_ids")
            if client_ids.shape != (n,):
                raise ValueError(f"client_ids must have shape [{n}], got {list(client_ids.shape)}")
        if _index(batch_size, "batch_size") < 1:
            raise ValueError("batch_size must be positive")
        per_example = x.itemsize * int(np.prod(x.shape[1:], dtype=np.int64)) + 16
        fits = max(1, (self.max_message_bytes - _MESSAGE_OVERHEAD) // per_example)
        step = int(min(_index(batch_size, "batch_size"), fits))
        header = learning_pb2.StreamHeader(
            model=model, task_id=_index(task_id, "task_id"),
            split=enum_value(learning_pb2.Split.DESCRIPTOR, split),
            classes=[_index(c, "classes") for c in (classes if classes is not None else [])],
            keep_open=bool(keep_open))
        failure = []
        started = threading.Event()
        calls = []

        def report(sent):
            # progress(sent, n); False when it raised. The exception is re-raised below, in the
            # caller, and the stream is cancelled rather than ended: a cancelled stream stores
            # nothing. (gRPC's request thread would log an exception that escaped the generator
            # and fail the call with UNKNOWN, losing it.)
            if progress is None:
                return True
            try:
                progress(sent, n)
            except BaseException as error:
                failure.append(error)
                started.wait()
                calls[0].cancel()
                return False
            return True

        def requests():
            yield learning_pb2.StreamExamplesRequest(header=header)
            if n == 0 and not report(0):  # nothing to send: the upload is complete at once
                return
            for start in range(0, n, step):
                end = min(n, start + step)
                batch = learning_pb2.ExampleBatch(x=to_tensor(x[start:end]),
                                                  y=to_tensor(y[start:end]))
                if client_ids is not None:
                    batch.client_ids.CopyFrom(to_tensor(client_ids[start:end]))
                yield learning_pb2.StreamExamplesRequest(batch=batch)
                if not report(end):
                    return
            # The end message tells the server the stream is complete (see learning.proto).
            yield learning_pb2.StreamExamplesRequest(
                end=learning_pb2.StreamEnd(examples=n))

        call = self._learning.StreamExamples.future(requests(), timeout=timeout,
                                                    metadata=self._metadata)
        calls.append(call)
        started.set()
        try:
            response = call.result()
        except grpc.FutureCancelledError:
            if failure:
                raise failure[0] from None
            raise AdaptdError(grpc.StatusCode.CANCELLED, "stream cancelled") from None
        except grpc.RpcError as error:
            if failure:
                raise failure[0] from None
            raise AdaptdError.from_rpc_error(error) from None
        except BaseException:
            call.cancel()  # e.g. KeyboardInterrupt while waiting: store nothing
            raise
        if response.no_job_reason:
            # Stored (not to be sent again), but nothing learns them yet.
            warnings.warn(response.no_job_reason, RuntimeWarning, stacklevel=2)
        return response

    def watch_job(self, job_id, timeout=None):
        """Yields the job's JobStatus on every change until it reaches a terminal state."""
        self._check_open()
        call = self._learning.WatchJob(learning_pb2.WatchJobRequest(job_id=job_id),
                                       timeout=timeout, metadata=self._metadata)
        return wrap_rpc_stream(call)

    def wait_job(self, job_id, timeout=None, check=True):
        """Blocks until the job ends and returns its last JobStatus.

        With check, a job that FAILED or was CANCELLED raises JobError. timeout: seconds in all
        (DEADLINE_EXCEEDED raises AdaptdError).
        """
        last = None
        for status in self.watch_job(job_id, timeout=timeout):
            last = status
            if status.state in TERMINAL_JOB_STATES:
                break
        if last is None or last.state not in TERMINAL_JOB_STATES:
            state = "no status" if last is None else learning_pb2.JobState.Name(last.state)
            raise AdaptdError(grpc.StatusCode.UNKNOWN,
                              f"watch of job {job_id} ended before the job did ({state})")
        if check and last.state != learning_pb2.JOB_STATE_SUCCEEDED:
            raise JobError(last)
        return last

    def wait_jobs(self, job_ids, timeout=None, check=True):
        """wait_job for each id in turn; a list of their last JobStatus.

        timeout: seconds for all of them together (DEADLINE_EXCEEDED raises AdaptdError). Each
        job's wait gets at least 2 s, so that a job that has ended still reports it once the
        budget is spent: a job still running then raises up to 2 s past the budget (more only
        if earlier jobs ended within their 2 s).
        """
        if isinstance(job_ids, (str, bytes)):
            # A string would be waited on letter by letter ("no job with id 'j'").
            raise TypeError(f"job_ids must be a list of job ids; got the single id {job_ids!r} "
                            "(wait_job waits for one)")
        if timeout is None:
            return [self.wait_job(job_id, check=check) for job_id in job_ids]
        deadline = time.monotonic() + timeout
        # A job that has ended answers at once, so a spent budget still gets each later job a
        # short wait (one round trip, over any network) to report an end it has reached.
        return [self.wait_job(job_id, timeout=max(deadline - time.monotonic(), 2.0), check=check)
                for job_id in job_ids]

    @wrap_rpc_errors
    def cancel_job(self, job_id, timeout=None):
        """Cancels a queued or running job; returns its JobStatus."""
        return self._learning.CancelJob(learning_pb2.CancelJobRequest(job_id=job_id),
                                        timeout=self._deadline(timeout), metadata=self._metadata)

    @wrap_rpc_errors
    def list_jobs(self, model, timeout=None):
        """A model's jobs (JobStatus), oldest first."""
        return list(self._learning.ListJobs(learning_pb2.ListJobsRequest(model=model),
                                            timeout=self._deadline(timeout),
                                            metadata=self._metadata).jobs)

    # --- QueryService -------------------------------------------------------------------------

    @wrap_rpc_errors
    def predict(self, model, x, mode="bayes", samples=64, task_id=None, version=None, seed=0,
                timeout=None, batch_size=None):
        """Predictions for x [B, input_shape...] (float32, or uint8 scaled by 1/255).

        mode: "bayes" (average over posterior samples), "mean" or "linearized". Returns a dict:
        version (int), probs float32 [B, K], labels int64 [B], total_entropy,
        expected_entropy, mutual_information float32 [B] and std float32 [B, K]; None for
        any the server left out.

        Inputs too large for one message go as several requests of batch_size examples (by
        default as many as fit, question and answer, in half of max_message_bytes), all on the
        version the first one answered from (should --keep_versions delete it meanwhile, the
        prediction starts again once, unless `version` named it). Each request draws its own samples, so in bayes and linearized mode
        a split changes the draws (not their distribution).
        """
        x = as_features(x)
        if x.ndim == 0:
            raise ValueError("x must be [B, input_shape...]")
        if batch_size is not None and _index(batch_size, "batch_size") < 1:
            raise ValueError("batch_size must be positive")
        budget = self.max_message_bytes // 2
        features = max(1, int(np.prod(x.shape[1:])))
        if batch_size is None and len(x) * 4 * features > budget:
            batch_size = self._predict_rows(model, features, timeout)
        names = ("probs", "labels", "total_entropy", "expected_entropy", "mutual_information",
                 "std")

        def run(rows, again=True):
            parts, pinned = {name: [] for name in names}, version
            for start in range(0, max(len(x), 1), rows):
                request = query_pb2.PredictRequest(
                    model=model, x=to_tensor(x[start:start + rows]),
                    mode=enum_value(query_pb2.PredictMode.DESCRIPTOR, mode),
                    samples=_index(samples, "samples"), seed=_seed(seed),
                    task_id=_optional_int(task_id, "task_id"),
                    version=_optional_int(pinned, "version"))
                try:
                    response = self._query.Predict(request, timeout=self._deadline(timeout),
                                                   metadata=self._metadata)
                except grpc.RpcError as e:
                    # The version the first part pinned, deleted by --keep_versions before
                    # this part (an online model publishes often): once more, on the newest.
                    if (again and start > 0 and version is None
                            and e.code() == grpc.StatusCode.NOT_FOUND):
                        return run(rows, again=False)
                    raise
                pinned = response.version  # the rest on the same version
                for name in names:
                    parts[name].append(from_tensor(getattr(response, name)))
            return parts, pinned

        if batch_size is not None:
            parts, version = run(batch_size)
        else:
            try:
                parts, version = run(max(len(x), 1))
            except grpc.RpcError as e:
                # The question fitted; the answer (K numbers a row, two arrays of them) did not.
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                rows = self._predict_rows(model, features, timeout)
                if rows >= len(x):
                    raise  # the answer fits: another shortage (the server's memory), not size
                parts, version = run(rows)
        result = {"version": version}
        for name in names:
            pieces = parts[name]
            result[name] = None if any(p is None for p in pieces) else (
                pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
        return result

    def _predict_rows(self, model, features, timeout):
        """Rows per Predict request whose question and answer each fit in half a message."""
        classes = self.get_model(model, timeout=timeout).spec.num_classes
        # A row of the answer: probs and std (K floats each), a label, three entropies.
        return max(1, (self.max_message_bytes // 2) // (4 * features + 8 * classes + 20))

    @wrap_rpc_errors
    def influence(self, model, x, top_k=10, scope="memory", task_id=None, version=None,
                  timeout=None):
        """The training examples most influential on one query example x.

        scope: "memory" (the examples the model keeps) or "all". Returns a dict: version,
        query_class, query_probability, examples_scored, and per example (most influential
        first) example_ids, client_ids (-1: none given), task_ids, labels (int64) and
        scores (float64; negative = the example supports the prediction).
        """
        request = query_pb2.InfluenceRequest(
            model=model, x=to_tensor(as_features(x)), top_k=_index(top_k, "top_k"),
            scope=enum_value(query_pb2.Scope.DESCRIPTOR, scope),
            task_id=_optional_int(task_id, "task_id"), version=_optional_int(version, "version"))
        response = self._query.Influence(request, timeout=self._deadline(timeout),
                                         metadata=self._metadata)
        examples = response.examples
        return {
            "version": response.version,
            "query_class": response.query_class,
            "query_probability": response.query_probability,
            "examples_scored": response.examples_scored,
            "example_ids": np.array([e.example_id for e in examples], dtype=np.int64),
            "client_ids": np.array([e.client_id for e in examples], dtype=np.int64),
            "task_ids": np.array([e.task_id for e in examples], dtype=np.int64),
            "labels": np.array([e.label for e in examples], dtype=np.int64),
            "scores": np.array([e.score for e in examples], dtype=np.float64),
        }

    @wrap_rpc_errors
    def memory_map(self, model, scope="memory", version=None, timeout=None):
        """Per-example MPE coordinates and the leave-one-out estimate.

        Returns a dict: version, example_ids, client_ids, labels, task_ids (int64 [N]),
        error, variance, lambda (float32 [N, K]), sensitivity (float32 [N]), loo_nll and
        loo_accuracy (floats).
        """
        request = query_pb2.MemoryMapRequest(
            model=model, scope=enum_value(query_pb2.Scope.DESCRIPTOR, scope),
            version=_optional_int(version, "version"))
        response = self._query.MemoryMap(request, timeout=self._deadline(timeout),
                                         metadata=self._metadata)
        result = {"version": response.version}
        for name in ("example_ids", "client_ids", "labels", "task_ids", "error", "variance",
                     "lambda", "sensitivity"):
            result[name] = from_tensor(getattr(response, name))
        result["loo_nll"] = response.loo_nll
        result["loo_accuracy"] = response.loo_accuracy
        return result

    @wrap_rpc_errors
    def evaluate(self, model, timeout=None):
        """Accuracy of every version on every task's evaluation examples.

        Returns a dict: version (current), versions and task_ids (int64 [R], one per row;
        task -1: version 0 or a rollback), accuracy (float64 [R, T], NaN where a task had no
        evaluation examples), average_accuracy, forgetting (float64 [T]),
        average_forgetting, backward_transfer. The rows are asked for a page at a time (`timeout`
        bounds each page); the summaries come with the last page.
        """
        rows, response = self._all_pages(
            self._query.Evaluate,
            lambda first, page: query_pb2.EvaluateRequest(model=model, first_version=first,
                                                          max_versions=page),
            lambda response: response.rows, timeout)
        width = max((len(row.accuracy) for row in rows), default=0)
        accuracy = np.full((len(rows), width), math.nan, dtype=np.float64)
        for i, row in enumerate(rows):
            accuracy[i, :len(row.accuracy)] = row.accuracy
        return {
            "version": response.version,
            "versions": np.array([row.version for row in rows], dtype=np.int64),
            "task_ids": np.array([row.task_id for row in rows], dtype=np.int64),
            "accuracy": accuracy,
            "average_accuracy": response.average_accuracy,
            "forgetting": np.array(response.forgetting, dtype=np.float64),
            "average_forgetting": response.average_forgetting,
            "backward_transfer": response.backward_transfer,
        }
