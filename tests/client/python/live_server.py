"""The real adaptd binary as a child process on a free port, for the live tests."""

import os
import pathlib
import re
import subprocess
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]

_LISTENING = re.compile(r"^adaptd listening on (\S+):(\d+)$")
_START_SECONDS = 60


def server_binary():
    path = os.environ.get("ADAPTD_SERVER_BIN")
    if path:
        if not os.access(path, os.X_OK):
            pytest.fail(f"ADAPTD_SERVER_BIN={path} is not an executable")
        return path
    path = REPO_ROOT / "build" / "server" / "adaptd"
    if not os.access(path, os.X_OK):
        pytest.skip("no server binary: set ADAPTD_SERVER_BIN or build the adaptd target")
    return str(path)


class ServerProcess:
    """A running adaptd: `target` is "host:port"; stop() ends it."""

    def __init__(self, workdir, extra_args=()):
        workdir = pathlib.Path(workdir)
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        command = [server_binary(), f"--data_dir={self.data_dir}", "--port=0", "--threads=1",
                   *extra_args]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=err)
        try:
            self.target = self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self):
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            text = self.stdout_path.read_text(errors="replace")
            if "\n" in text:
                first = text.split("\n", 1)[0]
                match = _LISTENING.match(first)
                if not match:
                    raise RuntimeError(f"unexpected first line from adaptd: {first!r}\n"
                                       f"{self.logs()}")
                return f"{match.group(1)}:{match.group(2)}"
            if self.process.poll() is not None:
                raise RuntimeError(f"adaptd exited with {self.process.returncode} before "
                                   f"listening\n{self.logs()}")
            time.sleep(0.05)
        raise RuntimeError(f"adaptd did not print its address in {_START_SECONDS} s\n{self.logs()}")

    def logs(self):
        out = self.stdout_path.read_text(errors="replace")
        err = self.stderr_path.read_text(errors="replace")
        return f"--- adaptd stdout ---\n{out}--- adaptd stderr ---\n{err[-8000:]}"

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
