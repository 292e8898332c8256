"""adaptd_client: a Python client for adaptd, the continual-learning training service.

    from adaptd_client import Client
    with Client("127.0.0.1:50051") as client:
        client.create_model("blobs", architecture="logreg", input_shape=[2], num_classes=2)
        response = client.stream_examples("blobs", 0, x, y)
        client.wait_jobs(response.job_ids)
        client.predict("blobs", x)["probs"]
"""

from adaptd_client.client import TERMINAL_JOB_STATES, Client, ids_from_ranges
from adaptd_client.errors import AdaptdError, JobError
from adaptd_client.messages import make_message
from adaptd_client.tensors import SUPPORTED_DTYPES, from_tensor, to_tensor

__version__ = "0.1.0"

__all__ = [
    "AdaptdError",
    "Client",
    "JobError",
    "SUPPORTED_DTYPES",
    "TERMINAL_JOB_STATES",
    "from_tensor",
    "ids_from_ranges",
    "make_message",
    "to_tensor",
]
