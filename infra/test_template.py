"""Invariants of infra/template.yaml that cfn-lint and checkov do not know: the wiring mistakes
that cost money or lose messages. Each check runs on the real template, and on a copy with one
deliberate mistake to show that it can fail."""

import copy
import math
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

def notification_intake_problems(t: dict) -> list[str]:
    """POST /notifications must run notify-intake (which keys notifications per sender, checks the
    scope, size and throttle): a direct integration would let any caller take another's ids. The
    provider is reached over https only."""
    out = []
    routes = [r for r in resources(t, "AWS::ApiGatewayV2::Route").values() if r["Properties"]["RouteKey"] == "POST /notifications"]
    if len(routes) != 1:
        out.append(f"{len(routes)} routes for POST /notifications, expected 1")
    for route in routes:
        integration_id = str(route["Properties"]["Target"].value).removeprefix("integrations/${").removesuffix("}")
        p = t["Resources"][integration_id]["Properties"]
        if p.get("IntegrationSubtype") or p.get("IntegrationType") != "AWS_PROXY":
            out.append(f"{integration_id}: POST /notifications is not a Lambda proxy integration")
        elif t["Resources"][target(p["IntegrationUri"])].get("Metadata", {}).get("BuildProperties", {}).get("Binary") != "notify-intake":
            out.append(f"{integration_id}: POST /notifications does not run notify-intake")
    if not t["Parameters"]["ProviderUrl"].get("AllowedPattern", "").startswith("^https://"):
        out.append("ProviderUrl: AllowedPattern admits other schemes than https")
    return out


# Prefixes of the stack's bucket no export may read: other owners' exports and the pipeline's data.
RESERVED_PREFIXES = ["exports/", "data/", "result/", "global/", "/data/"]
# The worker's own temporary objects, and earlier batch jobs' failed-items files (a retry reads
# them): the only parts of exports/ it may read back.
STAGING_PREFIX = "exports/.staging/"
FAILED_ITEMS_KEYS = "exports/*.failed.jsonl"
JOB_FUNCTIONS = ["JobApiFunction", "JobWorkerFunction"]
ALLOWLIST_VARIABLES = ["FERRY_EXPORT_BUCKET", "FERRY_EXPORT_DATASETS", "FERRY_EXPORT_SOURCE_TABLES", "FERRY_NOTIFY_TABLE"]


def substitute_defaults(t: dict, text: str) -> str:
    """`text` with each `${Parameter}` replaced by that parameter's default."""
    return re.sub(r"\$\{(\w+)\}", lambda m: str(t["Parameters"].get(m.group(1), {}).get("Default", m.group(0))), text)


def own_bucket_keys(t: dict, statement: dict) -> list[str]:
    """Key patterns a statement names in the stack's bucket, parameters at their defaults."""
    out = []
    for r in as_list(statement["Resource"]):
        text = target(r)
        if ":s3:::${NamePrefix}-${Stage}-" in text and "/" in text.split(":s3:::", 1)[1]:
            out.append(substitute_defaults(t, text.split(":s3:::", 1)[1].split("/", 1)[1]))
    return out


def worker_source_problems(t: dict) -> list[str]:
    """Reads job-worker's role allows beyond its dataset prefixes and its own staging objects."""
    out = []
    for s in statements(t["Resources"]["JobWorkerRole"]):
        if s.get("Effect") != "Allow":
            continue
        actions = set(as_list(s["Action"]))
        if "s3:GetObject" in actions:
            for key in own_bucket_keys(t, s):
                reserved = [p for p in RESERVED_PREFIXES if overlaps(key, p)]
                if reserved and not key.startswith(STAGING_PREFIX) and key != FAILED_ITEMS_KEYS:
                    out.append(f"s3:GetObject on {key} reaches {reserved}")
                if key == FAILED_ITEMS_KEYS and actions != {"s3:GetObject"}:
                    out.append(f"{FAILED_ITEMS_KEYS} is granted {sorted(actions - {'s3:GetObject'})}, not only read")
        if "s3:ListBucket" in actions:
            prefixes = s.get("Condition", {}).get("StringLike", {}).get("s3:prefix")
            if prefixes is None:
                out.append(f"s3:ListBucket on {[target(r) for r in as_list(s['Resource'])]} without an s3:prefix condition")
            own_bucket = any(":s3:::${NamePrefix}-${Stage}-" in target(r) for r in as_list(s["Resource"]))
            for p in as_list(prefixes or []) if own_bucket else []:
                pattern = substitute_defaults(t, target(p))
                if any(overlaps(pattern, r) for r in RESERVED_PREFIXES):
                    out.append(f"s3:ListBucket with s3:prefix {pattern} reaches a reserved prefix")
    own_tables = {"JobsTable", "NotifyTable"}
    denied = {
        target(r).split("/")[0].replace("${", "").replace(".Arn}", "").replace(".Arn", "")
        for s in statements(t["Resources"]["JobWorkerRole"])
        if s.get("Effect") == "Deny" and "dynamodb:Scan" in as_list(s["Action"])
        for r in as_list(s["Resource"])
    }
    if not own_tables <= denied:
        out.append(f"the stack's own tables {sorted(own_tables - denied)} are not denied as sources")
    return out


def allowlist_problems(t: dict) -> list[str]:
    """Job functions that cannot enforce the source allowlist for want of a setting."""
    out = []
    for f in JOB_FUNCTIONS:
        variables = t["Resources"][f]["Properties"].get("Environment", {}).get("Variables", {})
        out.extend(f"{f}: no {v}" for v in ALLOWLIST_VARIABLES if v not in variables)
    return out


BUDGET = cf.ROOT / "crates" / "ferry-core" / "src" / "budget.rs"
# Each vote function, the setting that caps what it holds, and its peak per byte (ferry_core::budget).
VOTE_CAPS = {
    "NormalizerFunction": ("FERRY_MAX_INPUT_BYTES", "NORMALIZE_PEAK_FACTOR"),
    "MergerFunction": ("FERRY_MAX_MERGE_BYTES", "MERGE_PEAK_FACTOR"),
}


# What job-api calls (crates/job-invoker/src/api.rs through ferry_aws::jobs, ::exports and ::events):
# nothing else may be granted. Cancelling leaves the file to the lifecycle rule, so no s3:DeleteObject;
# a batch item file is read by key, so no s3:ListBucket.
JOB_API_ACTIONS = {
    "logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments", "xray:PutTelemetryRecords",
    "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query",
    "lambda:InvokeFunction", "s3:GetObject", "events:PutEvents",
}
# What job-worker calls (crates/job-invoker/src/worker.rs and export/): the jobs table, its own
# continuation, the failure queues, the sources and the export, job events, the batch credentials.
JOB_WORKER_ACTIONS = {
    "logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments", "xray:PutTelemetryRecords",
    "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
    "dynamodb:DescribeTable", "dynamodb:Query", "dynamodb:Scan",
    "lambda:InvokeFunction",
    "s3:GetObject", "s3:ListBucket", "s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject",
    "sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility",
    "events:PutEvents", "ssm:GetParameter",
}
JOB_ROLES = {"JobApiFunction": "JobApiRole", "JobWorkerFunction": "JobWorkerRole"}
# The SSM parameters job-worker may read: those under BatchSecretsPath.
BATCH_SECRETS_ARN = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${BatchSecretsPath}*"


def granted_actions(role: dict) -> set[str]:
    return {a for s in statements(role) if s.get("Effect") == "Allow" for a in as_list(s["Action"])}


def policy_statements(t: dict, role_id: str) -> list:
    """The role's one policy's statement list itself (conditional ones as written), to change."""
    return t["Resources"][role_id]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]


def grants(role: dict, action: str) -> list[dict]:
    return [s for s in statements(role) if s.get("Effect") == "Allow" and action in as_list(s["Action"])]


def variables(t: dict, function_id: str) -> dict:
    return t["Resources"][function_id]["Properties"].get("Environment", {}).get("Variables", {})


def job_event_problems(t: dict) -> list[str]:
    """Job functions that cannot publish job events, or roles that may publish elsewhere."""
    out = []
    buses = resources(t, "AWS::Events::EventBus")
    if len(buses) != 1:
        return [f"{len(buses)} event buses, expected the one for job events"]
    bus = next(iter(buses))
    for f, role_id in JOB_ROLES.items():
        env = variables(t, f).get("FERRY_JOB_EVENT_BUS")
        if env is None or not (isinstance(env, cf._Tagged) and env.tag == "!Ref" and target(env) == bus):
            out.append(f"{f}: FERRY_JOB_EVENT_BUS is {env!r}, not !Ref {bus}")
        if not grants(t["Resources"][role_id], "events:PutEvents"):
            out.append(f"{role_id}: no events:PutEvents")
    for role_id, role in resources(t, "AWS::IAM::Role").items():
        for s in grants(role, "events:PutEvents"):
            others = [target(r) for r in as_list(s["Resource"]) if not (isinstance(r, cf._Tagged) and r.tag == "!GetAtt" and r.value == f"{bus}.Arn")]
            if others:
                out.append(f"{role_id}: events:PutEvents on {others}, not only {bus}")
    return out


def batch_settings_problems(t: dict) -> list[str]:
    """The batch targets and their credentials: settings on both job functions, SSM reads held to
    BatchSecretsPath, no KMS grant (the notify provider's SecureString needs none either)."""
    out = []
    for f in JOB_ROLES:
        if target(variables(t, f).get("FERRY_BATCH_TARGETS")) != "BatchTargets":
            out.append(f"{f}: FERRY_BATCH_TARGETS is not !Ref BatchTargets")
    if target(variables(t, "JobWorkerFunction").get("FERRY_BATCH_SECRETS_PATH")) != "BatchSecretsPath":
        out.append("JobWorkerFunction: FERRY_BATCH_SECRETS_PATH is not !Ref BatchSecretsPath")
    if "FERRY_BATCH_SECRETS_PATH" in variables(t, "JobApiFunction"):
        out.append("JobApiFunction: FERRY_BATCH_SECRETS_PATH, but job-api reads no credentials")
    for role_id, role in resources(t, "AWS::IAM::Role").items():
        for s in grants(role, "ssm:GetParameter"):
            if role_id == "JobWorkerRole":
                wrong = [target(r) for r in as_list(s["Resource"]) if target(r) != BATCH_SECRETS_ARN]
                if wrong:
                    out.append(f"JobWorkerRole: ssm:GetParameter on {wrong}, not only under BatchSecretsPath")
        if grants(role, "kms:Decrypt"):
            out.append(f"{role_id}: kms:Decrypt")
    if not any(target(r) == BATCH_SECRETS_ARN for s in grants(t["Resources"]["JobWorkerRole"], "ssm:GetParameter") for r in as_list(s["Resource"])):
        out.append("JobWorkerRole: no ssm:GetParameter under BatchSecretsPath")
    return out


def resource_texts(statement: dict) -> list[str]:
    """A statement's resources as written, both branches of a conditional one (`!Ref AWS::NoValue` left out)."""
    out = []
    for r in as_list(statement["Resource"]):
        branches = r.value[1:] if isinstance(r, cf._Tagged) and r.tag == "!If" else [r]
        out.extend(target(b) for b in branches if not (isinstance(b, cf._Tagged) and b.tag == "!Ref" and b.value == "AWS::NoValue"))
    return out


def dataset_reads(t: dict, role_id: str) -> set[str]:
    """Where a role may s3:GetObject outside exports/ (its dataset locations), as written."""
    return {r for s in grants(t["Resources"][role_id], "s3:GetObject") for r in resource_texts(s) if "/exports/" not in r}


def job_api_read_problems(t: dict) -> list[str]:
    """job-api reads batch item files at submit: exactly the worker's dataset locations, by key."""
    out = []
    api, worker = dataset_reads(t, "JobApiRole"), dataset_reads(t, "JobWorkerRole")
    if api != worker:
        out.append(f"JobApiRole reads {sorted(api)}, job-worker's datasets are {sorted(worker)}")
    api_exports = {r for s in grants(t["Resources"]["JobApiRole"], "s3:GetObject") for r in resource_texts(s)} - api
    if any(not k.endswith("/exports/*") for k in api_exports):
        out.append(f"JobApiRole reads exports beyond the presigned downloads: {sorted(api_exports)}")
    return out


def budget_constant(name: str) -> float:
    """A constant of budget.rs written as a product of numbers and MIB (`4.5`, `64 * MIB`)."""
    m = re.search(rf"pub const {name}: \w+ = ([^;]+);", BUDGET.read_text())
    if m is None:
        raise ValueError(f"{BUDGET}: no constant {name}")
    value = 1.0
    for part in m.group(1).split("*"):
        value *= 2**20 if part.strip() == "MIB" else float(part)
    return value


def vote_memory_problems(t: dict) -> list[str]:
    """Vote functions whose memory cannot hold their capped input: they would refuse to start."""
    out = []
    for f, (setting, factor) in VOTE_CAPS.items():
        props = t["Resources"][f]["Properties"]
        cap = props["Environment"]["Variables"][setting]
        if isinstance(cap, cf._Tagged):
            cap = t["Parameters"][target(cap)]["Default"]
        need_mb = math.ceil((budget_constant("RESERVE_BYTES") + int(cap) * budget_constant(factor)) / 2**20)
        if props["MemorySize"] < need_mb:
            out.append(f"{f}: MemorySize {props['MemorySize']} MB is under the {need_mb} MB that {setting} = {cap} needs")
    return out


def worker_memory_problems(t: dict) -> list[str]:
    """job-worker memory that cannot hold the dataset objects it reads ahead: it would refuse to start."""
    props = t["Resources"]["JobWorkerFunction"]["Properties"]
    variables = props["Environment"]["Variables"]
    missing = [v for v in ("FERRY_JOB_READ_AHEAD", "FERRY_JOB_MAX_OBJECT_BYTES") if v not in variables]
    if missing:
        # Unset, the worker's defaults apply; the template states the caps its memory follows from.
        return [f"JobWorkerFunction: no {v}" for v in missing]
    read_ahead, cap = int(variables["FERRY_JOB_READ_AHEAD"]), int(variables["FERRY_JOB_MAX_OBJECT_BYTES"])
    need = budget_constant("WORKER_RESERVE_BYTES") + read_ahead * cap * budget_constant("DATASET_PEAK_FACTOR")
    need_mb = math.ceil(need / 2**20)
    if props["MemorySize"] < need_mb:
        return [
            f"JobWorkerFunction: MemorySize {props['MemorySize']} MB is under the {need_mb} MB that "
            f"FERRY_JOB_READ_AHEAD = {read_ahead} x FERRY_JOB_MAX_OBJECT_BYTES = {cap} needs"
        ]
    return []


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
        mapping = resources(t, "AWS::Lambda::EventSourceMapping")["NotifyConsumerEvents"]
        del mapping["Properties"]["FunctionResponseTypes"]
        del mapping["Properties"]["ScalingConfig"]
        self.assertEqual(len(consumer_problems(t)), 2, consumer_problems(t))

    def test_every_queue_is_tls_only(self) -> None:
        self.assertEqual(queues_without_tls_policy(TEMPLATE), [])
        t = self.mutated()
        t["Resources"]["QueuesTlsOnlyPolicy"]["Properties"]["Queues"].pop()
        self.assertEqual(queues_without_tls_policy(t), ["JobFailuresQueue"])

    def test_notifications_enter_through_the_intake_function(self) -> None:
        self.assertEqual(notification_intake_problems(TEMPLATE), [])
        t = self.mutated()
        p = t["Resources"]["NotifyIntakeIntegration"]["Properties"]
        p["IntegrationSubtype"] = "SQS-SendMessage"
        t["Parameters"]["ProviderUrl"]["AllowedPattern"] = "^https?://.+"
        self.assertEqual(
            notification_intake_problems(t),
            [
                "NotifyIntakeIntegration: POST /notifications is not a Lambda proxy integration",
                "ProviderUrl: AllowedPattern admits other schemes than https",
            ],
        )

    def test_vote_functions_have_the_memory_their_caps_need(self) -> None:
        self.assertEqual(vote_memory_problems(TEMPLATE), [])
        t = self.mutated()
        t["Resources"]["NormalizerFunction"]["Properties"]["MemorySize"] = 1024
        t["Resources"]["MergerFunction"]["Properties"]["Environment"]["Variables"]["FERRY_MAX_MERGE_BYTES"] = str(4 << 30)
        self.assertEqual(
            vote_memory_problems(t),
            [
                "NormalizerFunction: MemorySize 1024 MB is under the 2496 MB that FERRY_MAX_INPUT_BYTES = 536870912 needs",
                "MergerFunction: MemorySize 6976 MB is under the 18496 MB that FERRY_MAX_MERGE_BYTES = 4294967296 needs",
            ],
        )

    def test_job_worker_has_the_memory_its_dataset_caps_need(self) -> None:
        self.assertEqual(worker_memory_problems(TEMPLATE), [])
        t = self.mutated()
        t["Resources"]["JobWorkerFunction"]["Properties"]["MemorySize"] = 2048
        self.assertEqual(
            worker_memory_problems(t),
            ["JobWorkerFunction: MemorySize 2048 MB is under the 6272 MB that FERRY_JOB_READ_AHEAD = 4 x FERRY_JOB_MAX_OBJECT_BYTES = 536870912 needs"],
        )
        t = self.mutated()
        t["Resources"]["JobWorkerFunction"]["Properties"]["Environment"]["Variables"]["FERRY_JOB_READ_AHEAD"] = "8"
        self.assertEqual(len(worker_memory_problems(t)), 1)
        del t["Resources"]["JobWorkerFunction"]["Properties"]["Environment"]["Variables"]["FERRY_JOB_MAX_OBJECT_BYTES"]
        self.assertEqual(worker_memory_problems(t), ["JobWorkerFunction: no FERRY_JOB_MAX_OBJECT_BYTES"])

    def test_every_function_has_expiring_logs_and_an_errors_alarm(self) -> None:
        self.assertEqual(observability_problems(TEMPLATE), [])
        t = self.mutated()
        del t["Resources"]["JobWorkerErrorsAlarm"]
        del t["Resources"]["MergerLogGroup"]["Properties"]["RetentionInDays"]
        self.assertEqual(
            observability_problems(t),
            ["MergerFunction: log group MergerLogGroup has no retention", "JobWorkerFunction: no Errors alarm"],
        )


    def test_job_worker_reads_only_allowlisted_sources_and_its_own_staging(self) -> None:
        self.assertEqual(worker_source_problems(TEMPLATE), [])
        self.assertEqual(allowlist_problems(TEMPLATE), [])
        t = self.mutated()
        worker = statements(t["Resources"]["JobWorkerRole"])
        staging = next(s for s in worker if s.get("Effect") == "Allow" and any(STAGING_PREFIX in target(r) for r in as_list(s["Resource"])))
        staging["Resource"] = cf._Tagged("!Sub", "arn:${AWS::Partition}:s3:::${NamePrefix}-${Stage}-${AWS::AccountId}-${AWS::Region}/exports/*")
        listing = next(s for s in worker if s.get("Action") == "s3:ListBucket")
        del listing["Condition"]
        deny = next(s for s in worker if s.get("Effect") == "Deny")
        deny["Resource"] = deny["Resource"][:2]
        t["Parameters"]["ExportDatasetPrefix"]["Default"] = "data/"
        del t["Resources"]["JobApiFunction"]["Properties"]["Environment"]["Variables"]["FERRY_NOTIFY_TABLE"]
        problems = worker_source_problems(t)
        self.assertEqual(len(problems), 4, problems)
        self.assertTrue(any("exports/*" in p for p in problems), problems)
        self.assertTrue(any("without an s3:prefix condition" in p for p in problems), problems)
        self.assertTrue(any("NotifyTable" in p for p in problems), problems)
        self.assertTrue(any("s3:GetObject on data/*" in p for p in problems), problems)
        self.assertEqual(allowlist_problems(t), ["JobApiFunction: no FERRY_NOTIFY_TABLE"])

    def test_job_api_role_grants_only_what_the_api_calls(self) -> None:
        self.assertEqual(granted_actions(TEMPLATE["Resources"]["JobApiRole"]), JOB_API_ACTIONS)
        t = self.mutated()
        grant = next(s for s in statements(t["Resources"]["JobApiRole"]) if s.get("Action") == "s3:GetObject")
        grant["Action"] = ["s3:GetObject", "s3:DeleteObject"]
        self.assertEqual(granted_actions(t["Resources"]["JobApiRole"]) - JOB_API_ACTIONS, {"s3:DeleteObject"})

    def test_job_worker_role_grants_only_what_the_worker_calls(self) -> None:
        self.assertEqual(granted_actions(TEMPLATE["Resources"]["JobWorkerRole"]), JOB_WORKER_ACTIONS)
        t = self.mutated()
        grant = next(s for s in statements(t["Resources"]["JobWorkerRole"]) if s.get("Action") == "ssm:GetParameter")
        grant["Action"] = ["ssm:GetParameter", "ssm:GetParametersByPath"]
        self.assertEqual(granted_actions(t["Resources"]["JobWorkerRole"]) - JOB_WORKER_ACTIONS, {"ssm:GetParametersByPath"})

    def test_job_events_go_to_the_stack_bus_only(self) -> None:
        self.assertEqual(job_event_problems(TEMPLATE), [])
        t = self.mutated()
        api = next(s for s in statements(t["Resources"]["JobApiRole"]) if s.get("Action") == "events:PutEvents")
        api["Resource"] = cf._Tagged("!Sub", "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/*")
        worker = policy_statements(t, "JobWorkerRole")
        worker.remove(next(s for s in worker if isinstance(s, dict) and s.get("Action") == "events:PutEvents"))
        del t["Resources"]["JobWorkerFunction"]["Properties"]["Environment"]["Variables"]["FERRY_JOB_EVENT_BUS"]
        problems = job_event_problems(t)
        self.assertEqual(len(problems), 3, problems)
        self.assertTrue(any("JobApiRole: events:PutEvents on" in p and "event-bus/*" in p for p in problems), problems)
        self.assertIn("JobWorkerRole: no events:PutEvents", problems)
        self.assertTrue(any(p.startswith("JobWorkerFunction: FERRY_JOB_EVENT_BUS") for p in problems), problems)

    def test_batch_settings_and_credentials_under_their_path_only(self) -> None:
        self.assertEqual(batch_settings_problems(TEMPLATE), [])
        path = re.compile(TEMPLATE["Parameters"]["BatchSecretsPath"]["AllowedPattern"])
        self.assertTrue(path.fullmatch(TEMPLATE["Parameters"]["BatchSecretsPath"]["Default"]))
        for ok in ["/ferry/batch/", "/a/", "/shop.prod/batch_v2/"]:
            self.assertTrue(path.fullmatch(ok), ok)
        for bad in ["", "/", "//", "ferry/batch/", "/ferry/batch", "/ferry/*/", "/ferry//batch/"]:
            self.assertIsNone(path.fullmatch(bad), bad)
        targets = re.compile(TEMPLATE["Parameters"]["BatchTargets"]["AllowedPattern"])
        self.assertTrue(targets.fullmatch(TEMPLATE["Parameters"]["BatchTargets"]["Default"]))
        self.assertIsNone(targets.fullmatch("[]"))
        t = self.mutated()
        ssm = next(s for s in statements(t["Resources"]["JobWorkerRole"]) if s.get("Action") == "ssm:GetParameter")
        ssm["Resource"] = cf._Tagged("!Sub", "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/*")
        policy_statements(t, "JobWorkerRole").append({"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"})
        del t["Resources"]["JobApiFunction"]["Properties"]["Environment"]["Variables"]["FERRY_BATCH_TARGETS"]
        problems = batch_settings_problems(t)
        self.assertEqual(
            problems,
            [
                "JobApiFunction: FERRY_BATCH_TARGETS is not !Ref BatchTargets",
                "JobWorkerRole: ssm:GetParameter on ['arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/*'], not only under BatchSecretsPath",
                "JobWorkerRole: kms:Decrypt",
                "JobWorkerRole: no ssm:GetParameter under BatchSecretsPath",
            ],
        )

    def test_job_api_reads_the_worker_datasets_only(self) -> None:
        self.assertEqual(job_api_read_problems(TEMPLATE), [])
        self.assertEqual(len(dataset_reads(TEMPLATE, "JobApiRole")), 2)
        self.assertNotIn("s3:ListBucket", granted_actions(TEMPLATE["Resources"]["JobApiRole"]))
        t = self.mutated()
        datasets = next(s for s in statements(t["Resources"]["JobApiRole"]) if any("ExportDatasetPrefix" in r for r in resource_texts(s)))
        original = list(datasets["Resource"])
        # The optional other bucket dropped: job-api could not validate items the worker may read.
        datasets["Resource"] = original[:1]
        self.assertEqual(len(job_api_read_problems(t)), 1, job_api_read_problems(t))
        # The datasets' prefix widened to the whole bucket.
        datasets["Resource"] = cf._Tagged("!Sub", "arn:${AWS::Partition}:s3:::${NamePrefix}-${Stage}-${AWS::AccountId}-${AWS::Region}/*")
        problems = job_api_read_problems(t)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("JobApiRole reads", problems[0])
        # Another export read beyond the presigned downloads.
        datasets["Resource"] = [
            *original,
            cf._Tagged("!Sub", "arn:${AWS::Partition}:s3:::${NamePrefix}-${Stage}-${AWS::AccountId}-${AWS::Region}/exports/.staging/*"),
        ]
        self.assertEqual(len(job_api_read_problems(t)), 1, job_api_read_problems(t))
        self.assertIn("beyond the presigned downloads", job_api_read_problems(t)[0])

    def test_job_worker_reads_failed_items_of_exports_and_nothing_else_there(self) -> None:
        worker = statements(TEMPLATE["Resources"]["JobWorkerRole"])
        failed = [s for s in worker if FAILED_ITEMS_KEYS in own_bucket_keys(TEMPLATE, s)]
        self.assertEqual([s["Action"] for s in failed], ["s3:GetObject"])
        t = self.mutated()
        failed = next(s for s in statements(t["Resources"]["JobWorkerRole"]) if FAILED_ITEMS_KEYS in own_bucket_keys(t, s))
        failed["Action"] = ["s3:GetObject", "s3:DeleteObject"]
        self.assertEqual(worker_source_problems(t), [f"{FAILED_ITEMS_KEYS} is granted ['s3:DeleteObject'], not only read"])
        failed["Action"] = "s3:GetObject"
        failed["Resource"] = cf._Tagged("!Sub", "arn:${AWS::Partition}:s3:::${NamePrefix}-${Stage}-${AWS::AccountId}-${AWS::Region}/exports/*.jsonl")
        self.assertEqual(worker_source_problems(t), ["s3:GetObject on exports/*.jsonl reaches ['exports/']"])

    def test_job_worker_deliveries_lambda_gives_up_on_come_back_to_it(self) -> None:
        worker = TEMPLATE["Resources"]["JobWorkerFunction"]["Properties"]
        config = worker["EventInvokeConfig"]
        self.assertEqual(target(config["DestinationConfig"]["OnFailure"]["Destination"]), "JobFailuresQueue")
        mapping = resources(TEMPLATE, "AWS::Lambda::EventSourceMapping")["JobFailuresEvents"]["Properties"]
        self.assertEqual((target(mapping["EventSourceArn"]), target(mapping["FunctionName"])), ("JobFailuresQueue", "JobWorkerFunction"))
        # A queued job waits as long as Lambda may still deliver its event, and no longer.
        api_env = TEMPLATE["Resources"]["JobApiFunction"]["Properties"]["Environment"]["Variables"]
        self.assertEqual(target(api_env["FERRY_JOB_START_LEASE_SECS"]), target(config["MaximumEventAgeInSeconds"]))
        self.assertEqual(target(api_env["FERRY_JOB_MAX_RUNNING_PER_OWNER"]), "JobsPerOwner")

    def test_dataset_prefix_parameters_refuse_reserved_prefixes(self) -> None:
        own = re.compile(TEMPLATE["Parameters"]["ExportDatasetPrefix"]["AllowedPattern"])
        other = re.compile(TEMPLATE["Parameters"]["ExportDatasetBucketPrefix"]["AllowedPattern"])
        self.assertTrue(own.fullmatch(TEMPLATE["Parameters"]["ExportDatasetPrefix"]["Default"]))
        for ok in ["datasets/", "shop/orders/", "exports-archive/", "data-lake/"]:
            self.assertTrue(own.fullmatch(ok), ok)
        for bad in ["", "/", "exports/", "data/", "result/", "global/", "exports/x/", "datasets", "/datasets/", "../exports/",
                    "datasets/../exports/", "./exports/", "datasets/*/", "*/"]:
            self.assertIsNone(own.fullmatch(bad), bad)
        for ok in ["", "shared/", "a/b/"]:
            self.assertTrue(other.fullmatch(ok), ok)
        for bad in ["/", "a", "../x/", "a/../b/", "*/"]:
            self.assertIsNone(other.fullmatch(bad), bad)


if __name__ == "__main__":
    unittest.main()
