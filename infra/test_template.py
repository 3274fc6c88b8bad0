"""Invariants of infra/template.yaml that cfn-lint and checkov do not know: the wiring mistakes
that cost money or lose messages. Each check runs on the real template, and on a copy with one
deliberate mistake to show that it can fail."""

import copy
import re
import unittest

import check_functions as cf

TEMPLATE = cf.load_template(cf.DEFAULT_TEMPLATE)
# The only actions AWS offers no narrower resource for that the template uses.
NO_RESOURCE_LEVEL = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def target(value: object) -> str:
    """The logical id named by `!Ref X`, `!GetAtt X.Attr`, or the plain string itself."""
    if isinstance(value, cf._Tagged):
        if value.tag == "!Ref":
            return str(value.value)
        if value.tag == "!GetAtt":
            return str(value.value).split(".")[0]
        return str(value.value)
    return str(value)


def as_list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def resources(t: dict, type_: str) -> dict[str, dict]:
    return {k: r for k, r in t["Resources"].items() if r.get("Type") == type_}


def statements(role: dict) -> list[dict]:
    out = []
    for policy in role["Properties"].get("Policies", []):
        for s in policy["PolicyDocument"]["Statement"]:
            if isinstance(s, cf._Tagged) and s.tag == "!If":
                # Both branches of a condition count.
                out.extend(b for b in s.value[1:] if isinstance(b, dict))
            else:
                out.append(s)
    return out


def s3_key_patterns(statement: dict) -> list[str]:
    """Object-key patterns of a statement's S3 object ARNs (`arn:...:s3:::bucket/result/*` -> `result/*`)."""
    out = []
    for r in as_list(statement["Resource"]):
        m = re.search(r":s3:::[^/]*/(.*)$", target(r))
        if m:
            out.append(m.group(1))
    return out


def overlaps(pattern: str, prefix: str) -> bool:
    """Whether keys matching `pattern` (a literal prefix, then `*`) can start with `prefix`."""
    literal = pattern.split("*")[0]
    return literal.startswith(prefix) or prefix.startswith(literal)


def function_role(t: dict, function_id: str) -> dict:
    return t["Resources"][target(t["Resources"][function_id]["Properties"]["Role"])]


def trigger_loops(t: dict) -> list[str]:
    """Chains of S3 notifications that lead back to a function already in the chain."""
    triggers: dict[str, list[str]] = {}  # function -> key prefixes that invoke it
    for bucket in resources(t, "AWS::S3::Bucket").values():
        notifications = bucket["Properties"].get("NotificationConfiguration", {})
        for n in notifications.get("LambdaConfigurations", []):
            rules = n["Filter"]["S3Key"]["Rules"]
            prefix = next((r["Value"] for r in rules if r["Name"] == "prefix"), "")
            triggers.setdefault(target(n["Function"]), []).append(prefix)
    writes = {
        f: [p for s in statements(function_role(t, f)) if "s3:PutObject" in as_list(s["Action"]) for p in s3_key_patterns(s)]
        for f in resources(t, "AWS::Serverless::Function")
    }
    edges = {f: sorted({g for g, prefixes in triggers.items() for w in ws for p in prefixes if overlaps(w, p)}) for f, ws in writes.items()}
    loops = []

    def walk(f: str, path: list[str]) -> None:
        for g in edges.get(f, []):
            if g in path:
                loops.append(" -> ".join(path[path.index(g) :] + [g]))
            else:
                walk(g, path + [g])

    for f in triggers:
        walk(f, [f])
    return sorted(set(loops))


def wildcard_resources(t: dict) -> list[str]:
    out = []
    for role_id, role in resources(t, "AWS::IAM::Role").items():
        for s in statements(role):
            actions = set(as_list(s["Action"]))
            if "*" in as_list(s["Resource"]) and not actions <= NO_RESOURCE_LEVEL:
                out.append(f"{role_id}: {sorted(actions - NO_RESOURCE_LEVEL)} on '*'")
            if any(a == "*" or a.endswith(":*") for a in actions):
                out.append(f"{role_id}: wildcard action in {sorted(actions)}")
    return out


def dlq_retention_problems(t: dict) -> list[str]:
    queues = resources(t, "AWS::SQS::Queue")
    out = []
    for q, r in queues.items():
        redrive = r["Properties"].get("RedrivePolicy")
        if not redrive:
            continue
        dlq = target(redrive["deadLetterTargetArn"])
        keep = r["Properties"].get("MessageRetentionPeriod", 345600)
        dlq_keep = queues[dlq]["Properties"].get("MessageRetentionPeriod", 345600)
        if not dlq_keep > keep:
            out.append(f"{dlq} keeps messages {dlq_keep} s, not longer than its source {q} ({keep} s)")
        if not redrive.get("maxReceiveCount"):
            out.append(f"{q}: RedrivePolicy has no maxReceiveCount")
        if "RedriveAllowPolicy" not in queues[dlq]["Properties"]:
            out.append(f"{dlq}: no RedriveAllowPolicy")
    return out


def consumer_problems(t: dict) -> list[str]:
    out = []
    mappings = resources(t, "AWS::Lambda::EventSourceMapping")
    if not mappings:
        out.append("no event source mapping")
    for m_id, m in mappings.items():
        p = m["Properties"]
        fn = t["Resources"][target(p["FunctionName"])]["Properties"]
        if "ReportBatchItemFailures" not in p.get("FunctionResponseTypes", []):
            out.append(f"{m_id}: without ReportBatchItemFailures one bad message fails its whole batch")
        if not p.get("MaximumBatchingWindowInSeconds"):
            out.append(f"{m_id}: no batching window")
        if "MaximumConcurrency" not in p.get("ScalingConfig", {}):
            out.append(f"{m_id}: no ScalingConfig.MaximumConcurrency")
        if "ReservedConcurrentExecutions" not in fn:
            out.append(f"{m_id}: consumer {target(p['FunctionName'])} has no reserved concurrency")
        queue = t["Resources"][target(p["EventSourceArn"])]["Properties"]
        if queue.get("VisibilityTimeout", 30) < 6 * fn.get("Timeout", 3):
            out.append(f"{m_id}: queue visibility timeout is under six times the consumer's timeout")
    return out


def observability_problems(t: dict) -> list[str]:
    """Functions without a log group that has a retention, or without an Errors alarm."""
    out = []
    alarmed = {
        target(d["Value"])
        for a in resources(t, "AWS::CloudWatch::Alarm").values()
        if a["Properties"]["MetricName"] == "Errors"
        for d in a["Properties"]["Dimensions"]
        if d["Name"] == "FunctionName"
    }
    for f, r in resources(t, "AWS::Serverless::Function").items():
        group = r["Properties"].get("LoggingConfig", {}).get("LogGroup")
        if group is None:
            out.append(f"{f}: no LoggingConfig.LogGroup, so its log group never expires")
        elif "RetentionInDays" not in t["Resources"][target(group)]["Properties"]:
            out.append(f"{f}: log group {target(group)} has no retention")
        if f not in alarmed:
            out.append(f"{f}: no Errors alarm")
    return out



def queues_without_tls_policy(t: dict) -> list[str]:
    """Queues no QueuePolicy denies plain-HTTP requests to (every queue must be TLS-only, as the bucket is)."""
    covered = set()
    for policy in resources(t, "AWS::SQS::QueuePolicy").values():
        props = policy["Properties"]
        denies_http = any(
            s.get("Effect") == "Deny"
            and s.get("Principal") == "*"
            and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in props["PolicyDocument"]["Statement"]
        )
        if denies_http:
            covered.update(target(q) for q in as_list(props["Queues"]))
    return sorted(q for q in resources(t, "AWS::SQS::Queue") if q not in covered)

class Template(unittest.TestCase):
    def mutated(self) -> dict:
        return copy.deepcopy(TEMPLATE)

    def test_no_trigger_loops(self) -> None:
        self.assertEqual(trigger_loops(TEMPLATE), [])
        t = self.mutated()
        merger = statements(t["Resources"]["MergerRole"])
        put = next(s for s in merger if s["Action"] == "s3:PutObject")
        put["Resource"] = cf._Tagged("!Sub", "arn:${AWS::Partition}:s3:::${Bucket}/result/global.csv")
        self.assertEqual(trigger_loops(t), ["MergerFunction -> MergerFunction"])

    def test_wildcard_resources_only_where_aws_allows_nothing_narrower(self) -> None:
        self.assertEqual(wildcard_resources(TEMPLATE), [])
        t = self.mutated()
        statements(t["Resources"]["JobApiRole"])[2]["Resource"] = "*"
        self.assertEqual(len(wildcard_resources(t)), 1)
        self.assertIn("JobApiRole", wildcard_resources(t)[0])

    def test_dead_letter_queues_outlive_their_sources(self) -> None:
        self.assertEqual(dlq_retention_problems(TEMPLATE), [])
        t = self.mutated()
        t["Resources"]["NotifyDlq"]["Properties"]["MessageRetentionPeriod"] = 345600
        self.assertEqual(
            dlq_retention_problems(t), ["NotifyDlq keeps messages 345600 s, not longer than its source NotifyQueue (345600 s)"]
        )

    def test_queue_consumer_reports_partial_failures_and_is_bounded(self) -> None:
        self.assertEqual(consumer_problems(TEMPLATE), [])
        t = self.mutated()
        (mapping,) = resources(t, "AWS::Lambda::EventSourceMapping").values()
        del mapping["Properties"]["FunctionResponseTypes"]
        del mapping["Properties"]["ScalingConfig"]
        self.assertEqual(len(consumer_problems(t)), 2, consumer_problems(t))

    def test_every_queue_is_tls_only(self) -> None:
        self.assertEqual(queues_without_tls_policy(TEMPLATE), [])
        t = self.mutated()
        t["Resources"]["QueuesTlsOnlyPolicy"]["Properties"]["Queues"].pop()
        self.assertEqual(queues_without_tls_policy(t), ["FailedEventsQueue"])

    def test_every_function_has_expiring_logs_and_an_errors_alarm(self) -> None:
        self.assertEqual(observability_problems(TEMPLATE), [])
        t = self.mutated()
        del t["Resources"]["JobWorkerErrorsAlarm"]
        del t["Resources"]["MergerLogGroup"]["Properties"]["RetentionInDays"]
        self.assertEqual(
            observability_problems(t),
            ["MergerFunction: log group MergerLogGroup has no retention", "JobWorkerFunction: no Errors alarm"],
        )


if __name__ == "__main__":
    unittest.main()
