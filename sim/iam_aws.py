"""moto with IAM enforcement on, in a process of its own: moto's switch for it
(INITIAL_NO_AUTH_ACTION_COUNT) is one per process, and the simulators of every other test
run in the test process, where enforcement would refuse their made-up keys.

Once started, every request must be signed with the keys of an IAM user of that moto and
is allowed only by that user's policies. The simulator itself (tagging hosts, making
buckets, the hosts' S3) signs as an administrator made before enforcement is switched on.

What moto enforces and what it does not (moto 5): it checks the action of every request,
and for S3 also the resource (the bucket and key ARN). It checks EC2 requests against the
resource "*" only, so a statement naming EC2 ARNs never matches there; it evaluates no
condition key (aws:RequestTag, ec2:ResourceTag, iam:PassedToService, ...); and it does not
ask for iam:PassRole when RunInstances names an instance profile."""

import json
import logging
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3

from sim.aws import LaunchLog, MotoServer

ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
ROOT = Path(__file__).resolve().parent.parent


class EnforcingMotoServer:
    """MotoServer's interface (url, start, stop, log, credentials), moto in a child process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.log = LaunchLog()  # stays empty: the launches are counted in the child
        self.credentials = ("", "")
        self.inspector_credentials = ("", "")  # the admin's (this moto throttles nothing)
        self._child: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._child is not None:
            return
        self._child = subprocess.Popen(
            [sys.executable, "-m", "sim.iam_aws", str(self.port)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self._child.stdout is not None
        if self._child.stdout.readline().strip() != "serving":
            raise RuntimeError("the IAM-enforcing moto did not start")
        self.credentials = self.inspector_credentials = self._make_admin()
        self._post("/moto-api/reset-auth", b"0")  # from now on, every request is checked

    def stop(self) -> None:
        if self._child is None:
            return
        assert self._child.stdin is not None
        self._child.stdin.close()  # the child stops serving at the end of its stdin
        try:
            self._child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        self._child = None

    def _make_admin(self) -> tuple[str, str]:
        iam = boto3.client(
            "iam", region_name="us-east-1", endpoint_url=self.url,
            aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
        )  # fmt: skip
        iam.create_user(UserName="sim-admin")
        iam.put_user_policy(
            UserName="sim-admin", PolicyName="all", PolicyDocument=json.dumps(ADMIN_POLICY)
        )
        key = iam.create_access_key(UserName="sim-admin")["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def _post(self, path: str, body: bytes) -> None:
        # Not a form: moto reads the raw body, which werkzeug empties for form posts.
        headers = {"Content-Type": "text/plain"}
        request = urllib.request.Request(f"{self.url}{path}", body, headers, method="POST")
        urllib.request.urlopen(request).close()


def serve(port: int) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = MotoServer("127.0.0.1", port, LaunchLog())
    server.start()
    print("serving", flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
