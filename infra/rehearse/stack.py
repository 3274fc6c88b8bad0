"""The stack in moto: deployed from the translated template, read back as a deployment would be.

`Stack.deploy` starts moto (motoserver.py) on loopback, creates the stack with moto's
CloudFormation and lists what moto could not create. `Stack.enforce_iam` then assumes each
function's role, creates the regional uploader's role and turns moto's IAM checks on; from then on
every call is made with some role's or the operator's own credentials.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from . import template as T

HERE = Path(__file__).resolve().parent
ARTIFACTS = "rehearsal-artifacts"
STACK = "ferry-dev"
BOTO = Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=60)


@dataclass
class Function:
    logical_id: str
    binary: str
    name: str
    arn: str
    config: dict
    role_logical_id: str
    role_name: str
    creds: dict = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {k: str(v) for k, v in (self.config.get("Environment") or {}).get("Variables", {}).items()}


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _refs(x: Any) -> set[str]:
    """Logical ids a CloudFormation fragment refers to (Ref, GetAtt, Sub)."""
    out: set[str] = set()
    if isinstance(x, dict):
        for k, v in x.items():
            if k == "Ref":
                out.add(v)
            elif k == "Fn::GetAtt":
                out.add(v[0] if isinstance(v, list) else v.split(".")[0])
            elif k == "Fn::Sub":
                text = v if isinstance(v, str) else v[0]
                out |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)}
                out |= _refs(v)
            else:
                out |= _refs(v)
    elif isinstance(x, list):
        for i in x:
            out |= _refs(i)
    return out


class Stack:
    def __init__(self, sam: dict, workdir: Path) -> None:
        self.sam = sam
        self.workdir = workdir
        self.denials_file = workdir / "denials.jsonl"
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.not_rehearsed: list[str] = []
        self.completed: list[str] = []
        self.functions: dict[str, Function] = {}
        self.mappings: list[dict] = []
        self.function_policies: dict[str, list[dict]] = {}
        self.physical: dict[str, str] = {}
        self.role_logical: dict[str, str] = {}
        self.role_policies: dict[str, list[dict]] = {}
        self.admin_creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self.uploader: dict = {}
        self.cfn: dict = {}
        self._moto: subprocess.Popen | None = None

    # -- clients -------------------------------------------------------------------------------

    def client(self, service: str, creds: dict | None = None) -> Any:
        c = creds or self.admin_creds
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=T.REGION,
            aws_access_key_id=c["aws_access_key_id"],
            aws_secret_access_key=c["aws_secret_access_key"],
            aws_session_token=c.get("aws_session_token"),
            config=BOTO,
        )

    # -- moto ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.denials_file.write_text("")
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with (self.workdir / "moto.log").open("ab") as log:
            self._moto = subprocess.Popen(
                [sys.executable, str(HERE / "motoserver.py"), str(self.port), str(self.denials_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        end = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self._moto.poll() is not None or time.time() > end:
                    raise RuntimeError(f"moto did not start on {self.endpoint}; see {self.workdir / 'moto.log'}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self._moto is not None and self._moto.poll() is None:
            self._moto.terminate()
            try:
                self._moto.wait(5)
            except subprocess.TimeoutExpired:
                self._moto.kill()

    def denials(self) -> list[dict]:
        lines = self.denials_file.read_text().splitlines() if self.denials_file.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    # -- deploy --------------------------------------------------------------------------------

    def deploy(self) -> None:
        from moto.cloudformation.parsing import resource_class_from_type

        # moto warns of each type it cannot create; the rehearsal lists them itself.
        logging.getLogger("moto").setLevel(logging.ERROR)

        s3 = self.client("s3")
        s3.create_bucket(Bucket=ARTIFACTS)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            # The code Lambda would run; the rehearsal runs the workspace's binaries instead.
            z.writestr("bootstrap", "#!/bin/sh\nexit 1\n")
        binaries = T.functions(self.sam)
        for b in binaries.values():
            s3.put_object(Bucket=ARTIFACTS, Key=f"{b}.zip", Body=buf.getvalue())
        cfn = T.translate(self.sam, {k: f"s3://{ARTIFACTS}/{b}.zip" for k, b in binaries.items()}, T.PARAMETERS)
        self.cfn = cfn
        unsupported = {k for k, r in cfn["Resources"].items() if not resource_class_from_type(r["Type"])}
        # moto refuses a stack whose outputs name a resource it cannot create.
        for k in list(cfn.get("Outputs", {})):
            if _refs(cfn["Outputs"][k]) & unsupported:
                self.not_rehearsed.append(f"output {k} (names {', '.join(sorted(_refs(cfn['Outputs'][k]) & unsupported))})")
                del cfn["Outputs"][k]
        params = [{"ParameterKey": k, "ParameterValue": v} for k, v in T.PARAMETERS.items()]
        cf = self.client("cloudformation")
        cf.create_stack(StackName=STACK, TemplateBody=json.dumps(cfn), Parameters=params, Capabilities=["CAPABILITY_IAM"])
        status = cf.describe_stacks(StackName=STACK)["Stacks"][0]
        if status["StackStatus"] != "CREATE_COMPLETE":
            raise RuntimeError(f"stack {STACK}: {status['StackStatus']} {status.get('StackStatusReason', '')}")
        for r in cf.list_stack_resources(StackName=STACK)["StackResourceSummaries"]:
            if r["LogicalResourceId"]:
                self.physical[r["LogicalResourceId"]] = r["PhysicalResourceId"]
        for k, r in cfn["Resources"].items():
            cond = r.get("Condition")
            if k not in self.physical and not (cond and not self._condition(cond)):
                self.not_rehearsed.append(f"{k} ({r['Type']})")
        self._read_functions()
        self._complete_bucket()

    def _condition(self, name: str) -> bool:
        # The template's conditions compare a parameter with ""; the rehearsal's parameters decide.
        expr = self.cfn["Conditions"][name]
        inner = expr["Fn::Not"][0]["Fn::Equals"]
        ref = inner[0]["Ref"]
        value = T.PARAMETERS.get(ref, self.cfn["Parameters"][ref].get("Default", ""))
        return str(value) != str(inner[1])

    def _read_functions(self) -> None:
        lam = self.client("lambda")
        # Read before IAM is enforced: moto miscomputes the signature of this listing.
        self.mappings = lam.list_event_source_mappings()["EventSourceMappings"]
        for logical_id, binary in T.functions(self.sam).items():
            name = self.physical[logical_id]
            config = lam.get_function_configuration(FunctionName=name)
            role_name = config["Role"].split("/")[-1]
            role_logical = next((k for k, v in self.physical.items() if v == role_name), role_name)
            self.role_logical[role_name] = role_logical
            self.functions[binary] = Function(logical_id, binary, name, config["FunctionArn"], config, role_logical, role_name)
            try:
                self.function_policies[binary] = json.loads(lam.get_policy(FunctionName=name)["Policy"])["Statement"]
            except lam.exceptions.ResourceNotFoundException:
                self.function_policies[binary] = []

    def _complete_bucket(self) -> None:
        """What CloudFormation does with the bucket's properties and moto's leaves out."""
        bucket = self.physical["DataBucket"]
        props = self.cfn["Resources"]["DataBucket"]["Properties"]
        s3 = self.client("s3")
        notif = props.get("NotificationConfiguration")
        deployed = s3.get_bucket_notification_configuration(Bucket=bucket)
        if notif and not deployed.get("LambdaFunctionConfigurations"):
            configs = []
            for c in notif.get("LambdaConfigurations", []):
                target = c["Function"]
                if isinstance(target, dict):
                    target = self.functions_by_logical()[next(iter(_refs(target)))].arn
                rules = [{"Name": r["Name"], "Value": r["Value"]} for r in c.get("Filter", {}).get("S3Key", {}).get("Rules", [])]
                entry = {"LambdaFunctionArn": target, "Events": [c["Event"]]}
                if rules:
                    entry["Filter"] = {"Key": {"FilterRules": rules}}
                configs.append(entry)
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration={"LambdaFunctionConfigurations": configs}, SkipDestinationValidation=True
            )
            self.completed.append("DataBucket NotificationConfiguration: moto's CloudFormation ignores it; applied as CloudFormation would")
        if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
            if s3.get_bucket_versioning(Bucket=bucket).get("Status") != "Enabled":
                self.not_rehearsed.append("DataBucket VersioningConfiguration (moto's CloudFormation ignores it)")
        for prop in ("LifecycleConfiguration", "PublicAccessBlockConfiguration", "OwnershipControls"):
            if prop in props:
                self.not_rehearsed.append(f"DataBucket {prop} (moto's CloudFormation ignores it)")

    def may_invoke(self, binary: str, service: str, source: str) -> bool:
        """Whether the function's resource policy lets `service` invoke it for `source` (an ARN whose
        API id, unknown to moto, may be any)."""
        for st in self.function_policies.get(binary, []):
            principal = st.get("Principal", {})
            if st.get("Effect") != "Allow" or (principal.get("Service") if isinstance(principal, dict) else principal) != service:
                continue
            pattern = (st.get("Condition", {}).get("ArnLike", {}) or {}).get("AWS:SourceArn", "*")
            pattern = re.sub(r"\$\{[^}]+\}", "*", pattern)
            if re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), source):
                return True
        return False

    def functions_by_logical(self) -> dict[str, Function]:
        return {f.logical_id: f for f in self.functions.values()}

    # -- IAM -----------------------------------------------------------------------------------

    def enforce_iam(self, uploader_prefixes: list[str]) -> None:
        iam = self.client("iam")
        sts = self.client("sts")
        # The operator: every action, for reading the stack back once IAM is enforced.
        iam.create_user(UserName="rehearsal-operator")
        iam.put_user_policy(
            UserName="rehearsal-operator",
            PolicyName="all",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
        )
        key = iam.create_access_key(UserName="rehearsal-operator")["AccessKey"]
        operator = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        # A region, outside the stack, with what README's "Triggers and wiring" tells it to grant:
        # uploads under data/ (`ferry votes push`) and reads of global/ (`ferry votes pull`).
        bucket_arn = f"arn:aws:s3:::{self.physical['DataBucket']}"
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{T.ACCOUNT}:root"}, "Action": "sts:AssumeRole"}]}
        iam.create_role(RoleName="regional-uploader", AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(
            RoleName="regional-uploader",
            PolicyName="upload",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": [f"{bucket_arn}/{p}*" for p in uploader_prefixes]},
                        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{bucket_arn}/global/*"},
                    ],
                }
            ),
        )
        self.role_logical["regional-uploader"] = "regional-uploader (outside the stack)"
        self.uploader = self._assume("arn:aws:iam::%s:role/regional-uploader" % T.ACCOUNT, "uploader", sts)
        for f in self.functions.values():
            f.creds = self._assume(f.config["Role"], f.name, sts)
            docs = []
            for p in iam.list_role_policies(RoleName=f.role_name)["PolicyNames"]:
                doc = iam.get_role_policy(RoleName=f.role_name, PolicyName=p)["PolicyDocument"]
                docs.append(json.loads(doc) if isinstance(doc, str) else doc)
            self.role_policies[f.role_name] = docs
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}), timeout=10).read()
        unknown = self.admin_creds
        self.admin_creds = operator
        try:
            self.client("s3", unknown).list_objects_v2(Bucket=self.physical["DataBucket"])
        except Exception:  # noqa: BLE001 - refused, as it must be
            return
        raise RuntimeError("moto answered a caller without IAM credentials: IAM is not enforced, nothing below would be proven")

    @staticmethod
    def _assume(role_arn: str, session: str, sts: Any) -> dict:
        c = sts.assume_role(RoleArn=role_arn, RoleSessionName=session[:64])["Credentials"]
        return {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"], "aws_session_token": c["SessionToken"]}

    def role_of_key(self, access_key: str) -> Function | None:
        return next((f for f in self.functions.values() if f.creds.get("aws_access_key_id") == access_key), None)

    def allowed(self, role_name: str, action: str, resource: str) -> bool:
        """The role's inline policies' verdict, as moto evaluates them (conditions not evaluated)."""

        def match(patterns: Any, value: str) -> bool:
            patterns = patterns if isinstance(patterns, list) else [patterns]
            return any(re.fullmatch(re.escape(p).replace(r"\*", ".*").replace(r"\?", "."), value) for p in patterns)

        verdict = False
        for doc in self.role_policies.get(role_name, []):
            statements = doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]
            for s in statements:
                if match(s.get("Action", []), action) and match(s.get("Resource", []), resource):
                    if s["Effect"] == "Deny":
                        return False
                    verdict = True
        return verdict

    def explain(self, denial: dict) -> str:
        m = re.search(r"assumed-role/([^/]+)/", denial.get("principal", ""))
        role = m.group(1) if m else denial.get("principal", "?")
        logical = self.role_logical.get(role, role)
        if "error" in denial:
            return f"moto failed checking role {logical} ({role}) for {denial['action']} on {denial['resource']}: {denial['error']}"
        return f"AccessDenied: role {logical} ({role}) may not {denial['action']} on {denial['resource']}"
