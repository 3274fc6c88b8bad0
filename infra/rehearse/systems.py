"""The three systems, driven through the deployed wiring with the real binaries and their own roles.

Each step that a deployment relies on must pass without a single IAM denial; each hostile step must
be refused, by the code and, where the template scopes the call, by IAM too.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

from . import template as T
from .lambda_local import FunctionFailed, InvokeEndpoint, LocalFunction
from .stack import Function, Stack

ROOT = T.ROOT
EVENTS = ROOT / "events"


class StepFailed(Exception):
    pass


class ProviderStub:
    """The notification provider on loopback: accepts, except recipients listed in `reject`."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.reject: set[str] = set()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if body.get("recipient") in stub.reject:
                    code, answer = 400, {"error": "recipient rejected"}
                else:
                    stub.received.append(body)
                    code, answer = 200, {"status": "sent", "provider_message_id": f"p-{len(stub.received)}"}
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()


def _event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def _filters_match(rules: list[dict], key: str) -> bool:
    for r in rules:
        name, value = r["Name"].lower(), r["Value"]
        if name == "prefix" and not key.startswith(value):
            return False
        if name == "suffix" and not key.endswith(value):
            return False
    return True


class Systems:
    def __init__(self, stack: Stack, bin_dir: Path, workdir: Path, say: Callable[[str], None]) -> None:
        self.stack = stack
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.say = say
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.provider = ProviderStub()
        self.invoke = InvokeEndpoint(self._authorize_invoke)
        self.local: dict[str, LocalFunction] = {}
        self.bucket = stack.physical["DataBucket"]
        self._denial_mark = 0

    # -- plumbing ------------------------------------------------------------------------------

    def _authorize_invoke(self, access_key: str, function: str) -> str | None:
        caller = self.stack.role_of_key(access_key)
        if caller is None:
            return f"unknown credentials {access_key} calling Invoke"
        arn = function if function.startswith("arn:") else f"arn:aws:lambda:{T.REGION}:{T.ACCOUNT}:function:{function}"
        if self.stack.allowed(caller.role_name, "lambda:InvokeFunction", arn):
            return None
        return f"AccessDenied: role {caller.role_logical_id} ({caller.role_name}) may not lambda:InvokeFunction on {arn}"

    def env_of(self, f: Function, overrides: dict[str, str]) -> dict[str, str]:
        """What Lambda hands the process: the deployed variables, then its own."""
        c = f.config
        logging = c.get("LoggingConfig") or {}
        env = dict(f.env)
        env.update(
            {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "TZ": ":UTC",
                "LANG": "en_US.UTF-8",
                "_HANDLER": c.get("Handler", "bootstrap"),
                "AWS_REGION": T.REGION,
                "AWS_DEFAULT_REGION": T.REGION,
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{c.get('Runtime', 'provided.al2023')}",
                "AWS_LAMBDA_FUNCTION_NAME": f.name,
                "AWS_LAMBDA_FUNCTION_VERSION": c.get("Version", "$LATEST"),
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(c.get("MemorySize", 128)),
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "AWS_LAMBDA_LOG_GROUP_NAME": logging.get("LogGroup") or f"/aws/lambda/{f.name}",
                "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]rehearsal",
                "AWS_ACCESS_KEY_ID": f.creds["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": f.creds["aws_secret_access_key"],
                "AWS_SESSION_TOKEN": f.creds["aws_session_token"],
                # Not Lambda's: where AWS is, and no credentials but the role's.
                "AWS_ENDPOINT_URL": self.stack.endpoint,
                "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        if logging.get("LogFormat"):
            env["AWS_LAMBDA_LOG_FORMAT"] = logging["LogFormat"]
        env.update(overrides)
        return env

    def function(self, binary: str, overrides: dict[str, str] | None = None) -> LocalFunction:
        if binary not in self.local:
            f = self.stack.functions[binary]
            path = self.bin_dir / binary
            if not path.exists():
                raise StepFailed(f"{path} does not exist: build the binaries first (cargo build --workspace --bins)")
            self.local[binary] = LocalFunction(f.name, f.arn, path, self.env_of(f, overrides or {}), self.workdir)
            if overrides:
                self.say(f"  {binary}: the deployed environment, but {', '.join(f'{k}={v}' for k, v in overrides.items())} (a local stand-in)")
        return self.local[binary]

    def call(self, binary: str, event: Any, remaining_s: float | None = None, timeout_s: float = 90) -> Any:
        fn = self.function(binary)
        timeout = float(self.stack.functions[binary].config.get("Timeout", 60))
        return fn.invoke(event, timeout_s=timeout_s, remaining_s=remaining_s if remaining_s is not None else timeout)

    def stop(self) -> None:
        for f in self.local.values():
            f.stop()
        self.provider.stop()
        self.invoke.stop()

    @contextlib.contextmanager
    def step(self, name: str, hostile: bool = False) -> Iterator[None]:
        """A legitimate step: it must succeed without a single IAM denial. A hostile step's denials
        are what it expects, so they are not failures."""
        before = len(self.stack.denials())
        invoke_before = len(self.invoke.denials)
        try:
            yield
        except (StepFailed, FunctionFailed, AssertionError) as e:
            self._fail(name, str(e), before, invoke_before)
            raise StepFailed(name) from e
        except Exception as e:  # an SDK error of the rehearsal's own calls
            self._fail(name, f"{type(e).__name__}: {e}", before, invoke_before)
            raise StepFailed(name) from e
        if not hostile:
            denied = self.stack.denials()[before:]
            if denied or self.invoke.denials[invoke_before:]:
                self._fail(name, "", before, invoke_before)
                raise StepFailed(name)
        self.say(f"  ok: {name}")

    def _fail(self, name: str, detail: str, before: int, invoke_before: int) -> None:
        lines = [self.stack.explain(d) for d in self.stack.denials()[before:]] + self.invoke.denials[invoke_before:]
        seen = list(dict.fromkeys(lines))
        msg = f"FAILED: {name}"
        if seen:
            msg += "\n    " + "\n    ".join(seen)
        if detail:
            msg += "\n    " + detail.strip().replace("\n", "\n    ")
        self.failures.append(msg)
        self.say(msg)

    def expect_denied(self, what: str, creds: dict, call: Callable[[Any], Any], service: str) -> None:
        """A call the template's scoping must refuse."""
        before = len(self.stack.denials())
        try:
            call(self.stack.client(service, creds))
        except Exception as e:  # noqa: BLE001 - any refusal counts, the denial log says which
            if "AccessDenied" in str(e) or any("error" not in d for d in self.stack.denials()[before:]):
                self.say(f"  ok: IAM refuses {what}")
                return
            raise StepFailed(f"{what}: expected AccessDenied, got {type(e).__name__}: {e}") from e
        msg = f"FAILED: IAM allows {what}"
        self.failures.append(msg)
        self.say(msg)

    # -- S3 notifications ----------------------------------------------------------------------

    def notified(self, key: str) -> list[Function]:
        """The functions the deployed bucket's notification configuration sends an ObjectCreated:Put of `key` to."""
        conf = self.stack.client("s3").get_bucket_notification_configuration(Bucket=self.bucket)
        by_arn = {f.arn: f for f in self.stack.functions.values()}
        out = []
        for c in conf.get("LambdaFunctionConfigurations", []):
            events = c.get("Events", [])
            if not any(e in ("s3:ObjectCreated:*", "s3:ObjectCreated:Put") for e in events):
                continue
            if _filters_match(c.get("Filter", {}).get("Key", {}).get("FilterRules", []), key):
                target = by_arn.get(c["LambdaFunctionArn"])
                if target is None:
                    raise StepFailed(f"the bucket notifies {c['LambdaFunctionArn']}, which is no function of the stack")
                if target not in out:
                    out.append(target)
        return out

    def s3_event(self, key: str) -> dict:
        head = self.stack.client("s3").head_object(Bucket=self.bucket, Key=key)
        ev = _event("s3-put.json")
        rec = ev["Records"][0]
        rec["s3"]["bucket"] = {"name": self.bucket, "ownerIdentity": {"principalId": "EXAMPLE"}, "arn": f"arn:aws:s3:::{self.bucket}"}
        rec["s3"]["object"] = {
            "key": urllib.parse.quote_plus(key, safe="/"),
            "size": head["ContentLength"],
            "eTag": head["ETag"].strip('"'),
            "sequencer": f"{int(time.time() * 1000):016X}",
        }
        return ev

    def deliver_s3(self, key: str) -> list[str]:
        """What S3 would do after `key` is created: invoke every function the filters name."""
        ran = []
        for f in self.notified(key):
            bucket_arn = f"arn:aws:s3:::{self.bucket}"
            if not self.stack.may_invoke(f.binary, "s3.amazonaws.com", bucket_arn):
                raise StepFailed(f"{f.binary}: no Lambda permission lets s3.amazonaws.com invoke it for {bucket_arn}")
            self.call(f.binary, self.s3_event(key))
            ran.append(f.binary)
        return ran

    # -- SQS event source mapping --------------------------------------------------------------

    def mapping_of(self, binary: str) -> dict:
        f = self.stack.functions[binary]
        maps = [m for m in self.stack.mappings if m["FunctionArn"] == f.arn and ":sqs:" in m["EventSourceArn"]]
        if len(maps) != 1:
            raise StepFailed(f"{binary}: {len(maps)} SQS event source mappings, expected 1")
        return maps[0]

    def pump(self, binary: str, rounds: int = 3) -> int:
        """What the SQS event source mapping does, with the function's own role: receive a batch of
        the mapping's size from the mapping's queue, invoke, delete all but the reported failures."""
        f = self.stack.functions[binary]
        m = self.mapping_of(binary)
        queue_name = m["EventSourceArn"].split(":")[-1]
        sqs = self.stack.client("sqs", f.creds)
        url = self.stack.client("sqs").get_queue_url(QueueName=queue_name)["QueueUrl"]
        handled = 0
        for _ in range(rounds):
            got = sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=min(int(m["BatchSize"]), 10), MessageAttributeNames=["All"], AttributeNames=["All"], WaitTimeSeconds=0
            ).get("Messages", [])
            if not got:
                break
            records = [
                {
                    "messageId": msg["MessageId"],
                    "receiptHandle": msg["ReceiptHandle"],
                    "body": msg["Body"],
                    "attributes": msg.get("Attributes", {}),
                    "messageAttributes": {
                        k: {"stringValue": v.get("StringValue"), "stringListValues": [], "binaryListValues": [], "dataType": v["DataType"]}
                        for k, v in msg.get("MessageAttributes", {}).items()
                    },
                    "md5OfBody": msg["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": m["EventSourceArn"],
                    "awsRegion": T.REGION,
                }
                for msg in got
            ]
            answer = self.call(binary, {"Records": records}) or {}
            failed = {x["itemIdentifier"] for x in answer.get("batchItemFailures", [])}
            if "ReportBatchItemFailures" not in m.get("FunctionResponseTypes", []) and failed:
                raise StepFailed(f"{binary} reported item failures, but its mapping does not take ReportBatchItemFailures")
            for msg in got:
                if msg["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])
            handled += len(got) - len(failed)
        return handled

    def queue_count(self, url: str) -> int:
        a = self.stack.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        return int(a["Attributes"]["ApproximateNumberOfMessages"]) + int(a["Attributes"]["ApproximateNumberOfMessagesNotVisible"])

    # -- HTTP routes ---------------------------------------------------------------------------

    def routes(self) -> dict[str, str]:
        """Route key -> the binary its integration invokes, from the translated template (moto
        creates no HTTP API)."""
        res = self.stack.cfn["Resources"]
        by_logical = self.stack.functions_by_logical()
        out = {}
        for r in res.values():
            if r["Type"] != "AWS::ApiGatewayV2::Route":
                continue
            target = r["Properties"]["Target"]
            text = target["Fn::Sub"] if isinstance(target, dict) else target
            integration = text.split("${")[-1].rstrip("}") if "${" in text else text.split("/")[-1]
            uri = res[integration]["Properties"]["IntegrationUri"]
            fn_logical = uri["Fn::GetAtt"][0]
            out[r["Properties"]["RouteKey"]] = by_logical[fn_logical].binary
        return out

    def http(self, route: str, base: str, sub: str | None = None, body: Any = None, path: str | None = None, claims: dict | None = None) -> tuple[int, Any]:
        routes = self.routes()
        if route not in routes:
            raise StepFailed(f"the template has no route {route!r} (routes: {', '.join(sorted(routes))})")
        ev = copy.deepcopy(_event(base))
        method, template_path = route.split(" ", 1)
        ev["routeKey"] = route
        ev["requestContext"]["routeKey"] = route
        ev["requestContext"]["http"]["method"] = method
        real = path or template_path
        ev["rawPath"] = real
        ev["requestContext"]["http"]["path"] = real
        if "{id}" in template_path:
            ev["pathParameters"] = {"id": real.rsplit("/", 1)[-1]}
        c = ev["requestContext"]["authorizer"]["jwt"]["claims"]
        if claims is not None:
            ev["requestContext"]["authorizer"]["jwt"]["claims"] = claims
        elif sub is not None:
            c["sub"] = sub
        ev["body"] = json.dumps(body) if body is not None and not isinstance(body, str) else body
        if method in ("GET", "DELETE") and body is None:
            ev.pop("body", None)
        ev["requestContext"]["requestId"] = f"rehearsal-{time.time_ns()}"
        source = f"arn:aws:execute-api:{T.REGION}:{T.ACCOUNT}:api/$default/{method}{real}"
        if not self.stack.may_invoke(routes[route], "apigateway.amazonaws.com", source):
            raise StepFailed(f"{routes[route]}: no Lambda permission lets apigateway.amazonaws.com invoke it for {route} ({source})")
        answer = self.call(routes[route], ev)
        text = answer.get("body") or ""
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return int(answer.get("statusCode", 0)), parsed
