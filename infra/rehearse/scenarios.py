"""The rehearsed scenarios: votes, jobs, notifications, each through the deployed wiring."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request

from . import template as T
from .systems import StepFailed, Systems


def _stamp() -> str:
    return time.strftime("%Y%m%d%H%M", time.gmtime())


def _redis(port: int, *args: str) -> bytes:
    """One command in Redis's protocol; the raw reply (enough for the integers read here)."""
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), 5) as c:
        c.sendall(cmd.encode())
        return c.recv(65536)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def edge(s: Systems) -> None:
    """`ferry votes push` and `pull`, run by a region under the role README tells it to create."""
    s.say("edge: Redis -> ferry votes push -> data/ -> ... -> global/ -> ferry votes pull -> Redis (regional uploader's role)")
    ferry = s.bin_dir / "ferry"
    if not ferry.exists():
        raise StepFailed(f"{ferry} does not exist: build the binaries first (cargo build --workspace --bins)")
    port = _free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.time() + 10
        while True:
            try:
                _redis(port, "PING")
                break
            except OSError:
                if time.time() > end:
                    raise StepFailed("redis-server did not start")
                time.sleep(0.05)
        _redis(port, "ZADD", "votes:jp", "40", "k1", "25", "k2", "5", "k9")
        up = s.stack.uploader
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_ACCESS_KEY_ID": up["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": up["aws_secret_access_key"],
            "AWS_SESSION_TOKEN": up["aws_session_token"],
            "AWS_REGION": T.REGION,
            "AWS_ENDPOINT_URL": s.stack.endpoint,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "AWS_EC2_METADATA_DISABLED": "true",
            "FERRY_REDIS_URL": f"redis://127.0.0.1:{port}",
            "FERRY_BUCKET": s.bucket,
        }

        def ferry_cli(*args: str) -> str:
            out = subprocess.run([str(ferry), "votes", *args], env=env, capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise StepFailed(f"ferry votes {args[0]} exited {out.returncode}: {out.stderr.strip()}")
            return out.stdout

        with s.step("ferry votes push, under the regional uploader's role, uploads votes:jp for event 2"):
            said = ferry_cli("push", "--key", "votes:jp", "--evno", "2", "--locale", "jp", "--stage", "prod")
            key = said.rsplit(f"s3://{s.bucket}/", 1)[1].strip()
            assert key.startswith("data/2/jp-prod-"), said
        with s.step(f"S3 notifies regional-normalizer of {key}; global-merger merges its result"):
            assert s.deliver_s3(key) == ["regional-normalizer"], f"{key} reaches no function"
            assert s.deliver_s3("result/2/prod/result-jp.csv") == ["global-merger"], "result/2/prod/result-jp.csv reaches no function"
        with s.step("ferry votes pull, under the regional uploader's role, loads global/2/prod into Redis"):
            said = ferry_cli("pull", "--key", "ranking", "--evno", "2", "--stage", "prod")
            assert "loaded 3 members" in said, said
            assert _redis(port, "ZCARD", "ranking") == b":3\r\n", "the live ranking does not hold the three members"
    finally:
        redis.terminate()
        redis.wait(5)


def votes(s: Systems) -> None:
    s.say("votes: regional upload -> regional-normalizer -> result/ -> global-merger -> global/")
    up = s.stack.client("s3", s.stack.uploader)
    stamp = _stamp()
    uploads = {
        f"data/1/jp-prod-{stamp}.csv": b"kseq,score\nk1,10\nk2,30\n",
        f"/data/1/kr-prod-{stamp}.csv": b"kseq,score\nk1,5\nk3,15\n",
    }
    for key, body in uploads.items():
        with s.step(f"the regional uploader's role puts {key}"):
            up.put_object(Bucket=s.bucket, Key=key, Body=body)
        with s.step(f"S3 notifies regional-normalizer of {key}, which writes its locale result"):
            ran = s.deliver_s3(key)
            assert ran == ["regional-normalizer"], f"an upload under {key.split('1/')[0]} reaches {ran or 'no function'}: the bucket's notification filters"
    with s.step("an object outside the upload grammar's suffix (.txt) reaches no function"):
        up.put_object(Bucket=s.bucket, Key=f"data/1/notes-{stamp}.txt", Body=b"not a tally")
        assert s.notified(f"data/1/notes-{stamp}.txt") == [], "a .txt upload is delivered"
    results = [f"result/1/prod/result-{loc}.csv" for loc in ("jp", "kr")]
    for key in results:
        with s.step(f"S3 notifies global-merger of {key}, which writes the global result"):
            s.stack.client("s3").head_object(Bucket=s.bucket, Key=key)
            ran = s.deliver_s3(key)
            assert ran == ["global-merger"], f"{key} reaches {ran or 'no function'}"
    with s.step("global/1/prod/result-global.csv holds both locales and triggers nothing"):
        body = s.stack.client("s3").get_object(Bucket=s.bucket, Key="global/1/prod/result-global.csv")["Body"].read().decode()
        assert "jp" in body.splitlines()[0] and "kr" in body.splitlines()[0], body
        assert s.notified("global/1/prod/result-global.csv") == [], "global/ is notified: a merge would trigger itself"
    norm = s.stack.functions["regional-normalizer"]
    s.expect_denied(
        "regional-normalizer's role writing under data/ (its own trigger)",
        norm.creds,
        lambda c: c.put_object(Bucket=s.bucket, Key=f"data/1/xx-prod-{stamp}.csv", Body=b"kseq,score\n"),
        "s3",
    )
    s.expect_denied(
        "the regional uploader's role writing under result/",
        s.stack.uploader,
        lambda c: c.put_object(Bucket=s.bucket, Key="result/1/prod/result-jp.csv", Body=b"x"),
        "s3",
    )


def jobs(s: Systems) -> None:
    s.say("jobs: POST /jobs -> job-api -> Invoke(job-worker) -> job-worker (continued) -> download")
    admin_s3 = s.stack.client("s3")
    prefix = "datasets/rehearsal/"
    for name, ids in (("a.csv", (1, 2)), ("b.csv", (3, 4)), ("c.csv", (5, 6))):
        admin_s3.put_object(Bucket=s.bucket, Key=prefix + name, Body=("id,name\n" + "".join(f"{i},n{i}\n" for i in ids)).encode())
    worker_fn = s.stack.functions["job-worker"]
    s.function("job-api", {"AWS_ENDPOINT_URL_LAMBDA": s.invoke.url})
    s.function("job-worker", {"AWS_ENDPOINT_URL_LAMBDA": s.invoke.url})
    body = {"kind": "export", "params": {"source": {"type": "s3", "bucket": s.bucket, "prefix": prefix, "format": "csv"}, "format": "csv"}}
    with s.step("POST /jobs (owner seller-0001) through job-api, which invokes job-worker"):
        code, answer = s.http("POST /jobs", "apigw-http-jobs.json", sub="seller-0001", body=body)
        assert code == 202, f"POST /jobs answered {code}: {answer}"
        job_id = answer["job"]["id"]
        calls = [c for c in s.invoke.calls if c.function in (worker_fn.name, worker_fn.arn)]
        assert len(calls) == 1, f"job-api invoked {[c.function for c in s.invoke.calls]}, expected {worker_fn.name} once"
        assert calls[0].invocation_type == "Event", f"job-api invoked job-worker as {calls[0].invocation_type}, not Event"
    done = 0
    # Under the continue margin (README: 60 s by default): the first run hands over after its first
    # object, as one near its timeout would.
    remaining = float(worker_fn.env.get("FERRY_JOB_CONTINUE_MARGIN_SECS") or 60) - 1
    for attempt in range(6):
        payload = json.loads(s.invoke.calls[done].payload)
        done += 1
        with s.step(f"job-worker runs the payload job-api/job-worker sent (run {attempt + 1})"):
            s.call("job-worker", payload, remaining_s=remaining)
        remaining = float(worker_fn.config.get("Timeout", 900))
        if len(s.invoke.calls) == done:
            break
    if done < 2:
        s.notes.append("jobs: the worker finished in one run; no continuation was forced")
    else:
        s.say(f"  ok: job-worker continued itself {done - 1} time(s) through Invoke with its own role")
    with s.step("GET /jobs/{id} reads succeeded, and the presigned link downloads the export"):
        code, view = s.http("GET /jobs/{id}", "apigw-http-jobs.json", sub="seller-0001", path=f"/jobs/{job_id}")
        assert code == 200 and view.get("status") == "succeeded", f"GET /jobs/{job_id}: {code} {view}"
        url = view["download"]["url"]
        data = urllib.request.urlopen(url, timeout=10).read().decode()
        rows = [line for line in data.splitlines()[1:] if line]
        assert len(rows) == 6, f"the download holds {len(rows)} rows, expected 6: {data[:200]}"
    with s.step("another owner's GET /jobs/{id} is refused by job-api", hostile=True):
        code, answer = s.http("GET /jobs/{id}", "apigw-http-jobs.json", sub="seller-0002", path=f"/jobs/{job_id}")
        assert code in (403, 404), f"another owner read job {job_id}: {code} {answer}"
    export_key = urllib.request.urlparse(url).path.split(f"/{s.bucket}/", 1)[-1]
    s.expect_denied(
        f"job-worker's role reading a finished export ({export_key})",
        worker_fn.creds,
        lambda c: c.get_object(Bucket=s.bucket, Key=urllib.request.unquote(export_key)),
        "s3",
    )
    # IAM answers before S3 looks for the key, so it need not exist.
    stamp_key = "data/1/jp-prod-202601010000.csv"
    s.expect_denied(f"job-worker's role reading vote data ({stamp_key})", worker_fn.creds, lambda c: c.get_object(Bucket=s.bucket, Key=stamp_key), "s3")
    s.notes.append(
        "jobs: job-api's role may read every owner's exports/ (IAM cannot tell owners apart); "
        "only job-api's owner check refuses another owner's export"
    )


def notifications(s: Systems) -> None:
    s.say("notifications: POST /notifications -> queue -> notify-consumer -> DLQ -> dlq-redrive")
    consumer = s.stack.functions["notify-consumer"]
    s.function("notify-consumer", {"FERRY_PROVIDER_URL": s.provider.url})
    dlq_url = consumer.env.get("FERRY_NOTIFY_DLQ_URL", "")
    queue_url = s.stack.functions["notify-intake"].env.get("FERRY_NOTIFY_QUEUE_URL", "(unset)")
    admin_sqs = s.stack.client("sqs")
    mapped_url = admin_sqs.get_queue_url(QueueName=s.mapping_of("notify-consumer")["EventSourceArn"].split(":")[-1])["QueueUrl"]
    ok = {"notification_id": "rehearsal-ok", "channel": "sms", "recipient": "+821000000001", "template": "order.shipped", "variables": {}, "requested_at": "2026-11-22T15:30:00Z"}
    rejected = dict(ok, notification_id="rehearsal-rejected", recipient="+821000000002")
    s.provider.reject.add(rejected["recipient"])
    for n in (ok, rejected):
        with s.step(f"POST /notifications {n['notification_id']} through notify-intake"):
            code, answer = s.http("POST /notifications", "apigw-notify.json", body=n)
            assert code == 202, f"POST /notifications answered {code}: {answer}"
    with s.step("a poison message (no sender, not JSON) lands on the queue the mapping reads"):
        admin_sqs.send_message(QueueUrl=mapped_url, MessageBody="{not json")
    with s.step("the mapping's queue delivers the batch to notify-consumer (with its role): one sent, two dead-lettered"):
        handled = s.pump("notify-consumer")
        assert handled >= 3, (
            f"notify-consumer handled {handled} of 3 messages from {mapped_url.rsplit('/', 1)[-1]} (its mapping's queue); "
            f"notify-intake queues on {queue_url.rsplit('/', 1)[-1]}"
        )
        assert [r["notification_id"] for r in s.provider.received] == ["rehearsal-ok"], s.provider.received
        assert s.queue_count(dlq_url) == 2, f"the DLQ holds {s.queue_count(dlq_url)}, expected 2"
    body = {"filter": {"kinds": ["provider_rejected"]}, "mode": "selective"}
    with s.step("a non-admin's POST /admin/redrive is refused by dlq-redrive", hostile=True):
        code, answer = s.http("POST /admin/redrive", "apigw-redrive-non-admin.json", body=body)
        assert code == 403, f"a non-admin redrive answered {code}: {answer}"
        assert s.queue_count(dlq_url) == 2, "a refused redrive moved dead letters"
    s.provider.reject.clear()
    with s.step("an admin's selective POST /admin/redrive moves the rejected notification back; the consumer delivers it"):
        code, answer = s.http("POST /admin/redrive", "apigw-redrive.json", body=body)
        assert code == 200, f"the admin redrive answered {code}: {answer}"
        assert s.queue_count(dlq_url) == 1, f"the DLQ holds {s.queue_count(dlq_url)} after the redrive, expected the poison message only"
        s.pump("notify-consumer")
        got = sorted(r["notification_id"] for r in s.provider.received)
        assert got == ["rehearsal-ok", "rehearsal-rejected"], got
    intake = s.stack.functions["notify-intake"]
    s.expect_denied("notify-intake's role reading the DLQ", intake.creds, lambda c: c.receive_message(QueueUrl=dlq_url), "sqs")
    s.expect_denied("notify-consumer's role sending to the notify queue", consumer.creds, lambda c: c.send_message(QueueUrl=mapped_url, MessageBody="x"), "sqs")
    jobs_table = s.stack.physical["JobsTable"]
    s.expect_denied(
        f"notify-intake's role reading the jobs table ({jobs_table})",
        intake.creds,
        lambda c: c.get_item(TableName=jobs_table, Key={"pk": {"S": "JOB#x"}}),
        "dynamodb",
    )
    s.notes.append(
        "notifications: admin and non-admin redrives run under one role; only dlq-redrive's claim check "
        "refuses a non-admin (IAM cannot)"
    )


ALL = {"votes": votes, "edge": edge, "jobs": jobs, "notifications": notifications}


def run(s: Systems, names: list[str]) -> None:
    for name in names:
        try:
            ALL[name](s)
        except StepFailed:
            s.say(f"{name}: stopped at the failed step")
