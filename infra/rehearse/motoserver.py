"""moto in server mode, with the IAM checks the rehearsal needs and moto leaves out.

moto authorizes S3 and SQS requests against the ARN of their bucket, key or queue, but every other
service against the resource "*", which no statement naming a table or bus matches. This launcher
gives DynamoDB, EventBridge and SSM requests their resource ARNs, checks the actions AWS checks
(DynamoDB's transactions per item, SQS's batch calls as their single form), authorizes a presigned
URL as the identity that signed it, reads the inline policies CloudFormation gave a role, and appends
every denial to a JSON-lines file so a failure can name the role, the action and the resource.
Conditions are still not evaluated: moto treats a statement's Condition block as met.

Usage: motoserver.py PORT DENIALS_FILE
"""

from __future__ import annotations

import json
import sys
import urllib.parse

from moto.core import authorization
from moto.dynamodb.responses import DynamoHandler
from moto.events.models import EventBus
from moto.events.responses import EventsHandler
from moto.iam import access_control
from moto.iam.models import Role
from moto.sqs.responses import SQSResponse
from moto.ssm.responses import SimpleSystemManagerResponse

DENIALS = sys.argv[2] if len(sys.argv) > 2 else None
ACCOUNT_REGION = {"region": "us-east-1"}


def _record(request: access_control.IAMRequestBase, resource: str, error: Exception) -> None:
    if not DENIALS:
        return
    try:
        principal = request._access_key.arn
    except AttributeError:
        principal = "?"
    with open(DENIALS, "a", encoding="utf-8") as f:
        entry = {"principal": principal, "action": request._action, "resource": resource}
        if "AccessDenied" not in type(error).__name__ and "AccessDenied" not in str(getattr(error, "code", "")):
            entry["error"] = f"{type(error).__name__}: {error}"
        f.write(json.dumps(entry) + "\n")


_original_check = access_control.IAMRequestBase.check_action_permitted


def _checked(self: access_control.IAMRequestBase, resource: str) -> None:
    try:
        _original_check(self, resource)
    except Exception as e:
        _record(self, resource, e)
        raise


access_control.IAMRequestBase.check_action_permitted = _checked

_original_init = access_control.IAMRequestBase.__init__
_original_signature = access_control.IAMRequestBase.check_signature


def _init(self: access_control.IAMRequestBase, **kwargs: object) -> None:
    """A presigned URL carries its credentials in the query, where moto does not look: authorize it
    as the identity that signed it (its signature is not recomputed)."""
    headers = kwargs["headers"]
    if "Authorization" not in headers:  # type: ignore[operator]
        q = urllib.parse.parse_qs(urllib.parse.urlparse(str(kwargs["path"])).query)
        if "X-Amz-Credential" in q:
            headers = {k: v for k, v in headers.items()}  # type: ignore[attr-defined]
            headers["Authorization"] = f"AWS4-HMAC-SHA256 Credential={q['X-Amz-Credential'][0]}, SignedHeaders=host, Signature=presigned"
            if "X-Amz-Security-Token" in q:
                headers["X-Amz-Security-Token"] = q["X-Amz-Security-Token"][0]
            kwargs["headers"] = headers
            self._presigned = True  # type: ignore[attr-defined]
    _original_init(self, **kwargs)  # type: ignore[arg-type]


def _signature(self: access_control.IAMRequestBase) -> None:
    if not getattr(self, "_presigned", False):
        _original_signature(self)


access_control.IAMRequestBase.__init__ = _init  # type: ignore[method-assign]
access_control.IAMRequestBase.check_signature = _signature  # type: ignore[method-assign]


def _request_class(action: str | None, base: type) -> type:
    if action is None:
        return base

    class WithAction(base):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: object) -> None:
            kwargs["action"] = action
            super().__init__(**kwargs)

    return WithAction


def _body(handler: object) -> dict:
    try:
        return json.loads(handler.raw_body or b"{}")  # type: ignore[attr-defined]
    except (ValueError, TypeError):
        return {}


def _arn(handler: object, service: str, rest: str) -> str:
    return f"arn:aws:{service}:{handler.region}:{handler.current_account}:{rest}"  # type: ignore[attr-defined]


def _dynamo_checks(handler: DynamoHandler) -> list[tuple[str | None, str]]:
    body = _body(handler)
    action = handler._get_action()

    def table(name: str, index: str | None = None) -> str:
        if name.startswith("arn:"):
            return name
        return _arn(handler, "dynamodb", f"table/{name}" + (f"/index/{index}" if index else ""))

    if action == "TransactWriteItems":
        kinds = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem"}
        return [(kinds[k], table(v["TableName"])) for item in body.get("TransactItems", []) for k, v in item.items()]
    if action == "TransactGetItems":
        return [("GetItem", table(v["TableName"])) for item in body.get("TransactItems", []) for v in item.values()]
    if action in ("BatchWriteItem", "BatchGetItem"):
        return [(None, table(name)) for name in body.get("RequestItems", {})]
    if "TableName" in body:
        return [(None, table(body["TableName"], body.get("IndexName")))]
    return [(None, "*")]


def _events_checks(handler: EventsHandler) -> list[tuple[str | None, str]]:
    body = _body(handler)
    buses = {e.get("EventBusName") or "default" for e in body.get("Entries", [])} or {body.get("Name") or body.get("EventBusName") or "default"}
    return [(None, b if b.startswith("arn:") else _arn(handler, "events", f"event-bus/{b}")) for b in sorted(buses)]


def _ssm_checks(handler: SimpleSystemManagerResponse) -> list[tuple[str | None, str]]:
    body = _body(handler)
    names = body.get("Names") or ([body["Name"]] if "Name" in body else [])
    if "Path" in body:
        names = [body["Path"]]
    if not names:
        return [(None, "*")]
    return [(None, n if n.startswith("arn:") else _arn(handler, "ssm", "parameter" + (n if n.startswith("/") else "/" + n))) for n in names]


# SQS authorizes a batch call as its single form: sqs:SendMessage allows SendMessageBatch.
SQS_BATCH = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage", "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}


def _sqs_checks(handler: SQSResponse) -> list[tuple[str | None, str]]:
    return [(SQS_BATCH.get(handler._get_action()), handler._determine_resource())]


def _install(cls: type, checks: object) -> None:
    def authorize(self: object, resource: str = "*") -> None:
        for action, arn in checks(self):  # type: ignore[operator]
            self._authenticate_and_authorize_action(_request_class(action, access_control.IAMRequest), arn)  # type: ignore[attr-defined]

    cls._authenticate_and_authorize_normal_action = authorize  # type: ignore[attr-defined]


# CloudFormation's Ref of an AWS::Events::EventBus is its name; moto has no physical id for it and
# would hand the object itself to whatever refers to the bus (an environment variable).
EventBus.physical_resource_id = property(lambda self: self.name)  # type: ignore[attr-defined]

# moto keeps a role's inline policy from CloudFormation as the dict's Python repr (and a removed
# conditional statement as None), which its own IAM checks then fail to read; store it as the JSON
# CloudFormation would send.
_put_policy = Role.put_policy


def _without_none(x: object) -> object:
    if isinstance(x, list):
        return [_without_none(i) for i in x if i is not None]
    if isinstance(x, dict):
        return {k: _without_none(v) for k, v in x.items() if v is not None}
    return x


def _put_json_policy(self: Role, name: str, policy: object) -> None:
    # `!If [cond, x, !Ref AWS::NoValue]` leaves nothing in CloudFormation; moto leaves None.
    policy = _without_none(policy)
    _put_policy(self, name, policy if isinstance(policy, str) else json.dumps(policy))


Role.put_policy = _put_json_policy  # type: ignore[method-assign]

_install(DynamoHandler, _dynamo_checks)
_install(EventsHandler, _events_checks)
_install(SimpleSystemManagerResponse, _ssm_checks)
_install(SQSResponse, _sqs_checks)
assert authorization.ActionAuthenticatorMixin  # the mixin whose counter /moto-api/reset-auth resets

if __name__ == "__main__":
    from moto.server import main

    main(["-H", "127.0.0.1", "-p", sys.argv[1]])
