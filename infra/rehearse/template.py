"""The SAM template as CloudFormation: read, optionally broken on purpose, translated locally.

A fault is a JSON file under faults/: a description, the text the rehearsal's failure must name
(`expect`), and mutations applied to the parsed template before translation, so a fault always
breaks the current template rather than a stale copy of it.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "template.yaml"
FAULTS = Path(__file__).resolve().parent / "faults"
REGION = "us-east-1"
# The account moto serves.
ACCOUNT = "123456789012"

# What a user answers at the first `sam deploy --guided` (the parameters without a default);
# every other parameter keeps its default, as samconfig.toml leaves them.
PARAMETERS = {
    "JwtIssuer": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_example",
    "JwtAudience": "ferry-console",
    "ProviderUrl": "https://provider.example.com",
}


class FaultError(Exception):
    pass


def load_sam(path: Path = TEMPLATE) -> dict:
    """The template with short-form intrinsics in their long form, as CloudFormation reads them."""
    from samtranslator.yaml_helper import yaml_parse

    return yaml_parse(path.read_text(encoding="utf-8"))


def load_fault(name: str) -> dict:
    path = FAULTS / f"{name}.json"
    if not path.exists():
        raise FaultError(f"no fault {name!r} under {FAULTS}")
    return json.loads(path.read_text(encoding="utf-8"))


def fault_names() -> list[str]:
    return sorted(p.stem for p in FAULTS.glob("*.json"))


def _walk(doc: Any, path: list) -> tuple[Any, Any]:
    parent = doc
    for step in path[:-1]:
        try:
            parent = parent[step]
        except (KeyError, IndexError, TypeError) as e:
            raise FaultError(f"path {path} does not exist in the template (at {step!r})") from e
    if isinstance(parent, dict) and path[-1] not in parent:
        raise FaultError(f"path {path} does not exist in the template")
    return parent, path[-1]


def apply_fault(doc: dict, fault: dict) -> dict:
    """A copy of `doc` with the fault's mutations applied; each must change something."""
    doc = copy.deepcopy(doc)
    for m in fault["mutate"]:
        op = m["op"]
        if op == "rename":
            parent, key = _walk(doc, m["path"])
            parent[m["to"]] = parent.pop(key)
        elif op == "set":
            parent, key = _walk(doc, m["path"])
            parent[key] = m["value"]
        elif op == "remove_action":
            removed = False
            for policy in doc["Resources"][m["role"]]["Properties"].get("Policies", []):
                kept = []
                for s in policy["PolicyDocument"]["Statement"]:
                    actions = s.get("Action") if isinstance(s, dict) else None
                    actions = actions if isinstance(actions, list) else [actions]
                    if s.get("Effect") == "Allow" and m["action"] in actions:
                        removed = True
                        rest = [a for a in actions if a != m["action"]]
                        if not rest:
                            continue
                        s["Action"] = rest
                    kept.append(s)
                policy["PolicyDocument"]["Statement"] = kept
            if not removed:
                raise FaultError(f"{m['role']} has no Allow of {m['action']}")
        else:
            raise FaultError(f"unknown mutation {op!r}")
    return doc


def translate(doc: dict, code_uri: dict[str, str], parameters: dict[str, str]) -> dict:
    """Plain CloudFormation, as SAM's transform makes it; each function's code is `code_uri[logical id]`."""
    from samtranslator.translator.transform import transform

    doc = copy.deepcopy(doc)
    for logical_id, r in doc["Resources"].items():
        if r.get("Type") == "AWS::Serverless::Function":
            r["Properties"]["CodeUri"] = code_uri[logical_id]

    class NoManagedPolicies:
        # The template attaches no managed policy by name; nothing to look up.
        def load(self) -> dict:
            return {}

    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    return transform(doc, parameters, NoManagedPolicies())


def functions(doc: dict) -> dict[str, str]:
    """Logical id -> binary, from each function's build metadata."""
    return {
        k: r["Metadata"]["BuildProperties"]["Binary"]
        for k, r in doc["Resources"].items()
        if r.get("Type") == "AWS::Serverless::Function"
    }
