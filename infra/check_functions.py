#!/usr/bin/env python3
"""Keeps infra/template.yaml and the workspace's Lambda binaries in step.

A Lambda binary is a `bin` target of a workspace package that depends (as a normal dependency) on
`lambda_runtime` or `lambda_http`, except the packages in LOCAL_TOOLS, which use the runtime's
types to drive handlers locally. The binaries come from `cargo metadata --no-deps`.

A template function is a resource of type AWS::Serverless::Function or AWS::Lambda::Function.
Each must be built by SAM's `rust-cargolambda` method (`Metadata.BuildMethod`), name its binary
in `Metadata.BuildProperties.Binary`, have a `CodeUri` that is the workspace root or the binary's
crate, and run `bootstrap` on `provided.al2023` / arm64 (directly or through `Globals`).

The check fails, naming each problem, when a binary has no function, a function names a binary
the workspace does not build, two functions name one binary, or a function breaks the rules above.

Usage:
  check_functions.py [--template PATH]          check; exit 1 on any problem
  check_functions.py [--template PATH] --list   print the Lambda binaries, one per line
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = ROOT / "infra" / "template.yaml"

RUNTIME_CRATES = {"lambda_runtime", "lambda_http"}
# Packages that depend on the runtime without being deployed, and why.
LOCAL_TOOLS = {
    "ferry-demo": "runs the handlers locally against moto",
}
FUNCTION_TYPES = {"AWS::Serverless::Function", "AWS::Lambda::Function"}
BUILD_METHOD = "rust-cargolambda"
RUNTIME = "provided.al2023"
ARCHITECTURES = ["arm64"]
HANDLER = "bootstrap"


@dataclass(frozen=True)
class Binary:
    name: str
    package: str
    crate_dir: Path


@dataclass(frozen=True)
class Function:
    logical_id: str
    type: str
    build_method: object
    binary: object
    code_uri: object
    runtime: object
    architectures: object
    handler: object


class _Tagged:
    """A CloudFormation short-form intrinsic (`!Ref`, `!Sub`, ...): kept opaque."""

    def __init__(self, tag: str, value: object) -> None:
        self.tag = tag
        self.value = value

    def __repr__(self) -> str:
        return f"{self.tag} {self.value!r}"


class _TemplateLoader(yaml.SafeLoader):
    pass


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tagged:
    if isinstance(node, yaml.ScalarNode):
        value: object = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return _Tagged("!" + suffix, value)


_TemplateLoader.add_multi_constructor("!", _construct_tagged)


def load_template(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_TemplateLoader)  # noqa: S506 - a SafeLoader subclass


def cargo_metadata(root: Path) -> dict:
    cargo = os.environ.get("CARGO", "cargo")
    out = subprocess.run(
        [cargo, "metadata", "--no-deps", "--format-version", "1"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def workspace_binaries(metadata: dict) -> dict[str, Binary]:
    """The workspace's Lambda binaries by name."""
    members = set(metadata.get("workspace_members", []))
    found: dict[str, Binary] = {}
    for package in metadata["packages"]:
        if members and package["id"] not in members:
            continue
        if package["name"] in LOCAL_TOOLS:
            continue
        # `name` is the depended-on package's name even when the dependency is renamed.
        runtime_deps = {d["name"] for d in package.get("dependencies", []) if d.get("kind") is None}
        if not runtime_deps & RUNTIME_CRATES:
            continue
        crate_dir = Path(package["manifest_path"]).parent
        for target in package["targets"]:
            if "bin" in target["kind"]:
                found[target["name"]] = Binary(target["name"], package["name"], crate_dir)
    return found


def template_functions(template: dict) -> list[Function]:
    """The template's functions, with `Globals.Function` applied."""
    glob = (template.get("Globals") or {}).get("Function") or {}
    functions = []
    for logical_id, resource in (template.get("Resources") or {}).items():
        if not isinstance(resource, dict) or resource.get("Type") not in FUNCTION_TYPES:
            continue
        props = {**glob, **(resource.get("Properties") or {})}
        meta = resource.get("Metadata") or {}
        build_props = meta.get("BuildProperties") or {}
        functions.append(
            Function(
                logical_id=logical_id,
                type=resource["Type"],
                build_method=meta.get("BuildMethod"),
                binary=build_props.get("Binary"),
                code_uri=props.get("CodeUri"),
                runtime=props.get("Runtime"),
                architectures=props.get("Architectures"),
                handler=props.get("Handler"),
            )
        )
    return functions


def check(binaries: dict[str, Binary], functions: list[Function], template_dir: Path, root: Path) -> list[str]:
    """Every problem found, each naming the function or binary at fault; empty when in step."""
    problems: list[str] = []
    claimed: dict[str, str] = {}
    for f in functions:
        at = f"template function {f.logical_id}"
        if f.type != "AWS::Serverless::Function":
            problems.append(f"{at}: is {f.type}; only AWS::Serverless::Function is built by SAM from the workspace")
            continue
        if f.build_method != BUILD_METHOD:
            problems.append(f"{at}: Metadata.BuildMethod is {f.build_method!r}, expected {BUILD_METHOD!r}")
        if f.runtime != RUNTIME:
            problems.append(f"{at}: Runtime is {f.runtime!r}, expected {RUNTIME!r}")
        if f.architectures != ARCHITECTURES:
            problems.append(f"{at}: Architectures is {f.architectures!r}, expected {ARCHITECTURES!r}")
        if f.handler != HANDLER:
            problems.append(f"{at}: Handler is {f.handler!r}, expected {HANDLER!r}")
        if not isinstance(f.binary, str) or not f.binary:
            problems.append(f"{at}: Metadata.BuildProperties.Binary is missing")
            continue
        if f.binary in claimed:
            problems.append(f"{at}: binary {f.binary!r} is already deployed by {claimed[f.binary]}")
            continue
        claimed[f.binary] = f.logical_id
        binary = binaries.get(f.binary)
        if binary is None:
            known = ", ".join(sorted(binaries)) or "none"
            problems.append(f"{at}: binary {f.binary!r} is not a Lambda binary of the workspace (those are: {known})")
            continue
        if not isinstance(f.code_uri, str):
            problems.append(f"{at}: CodeUri must be a plain path, got {f.code_uri!r}")
            continue
        code_dir = (template_dir / f.code_uri).resolve()
        if code_dir not in (root.resolve(), binary.crate_dir.resolve()):
            problems.append(
                f"{at}: CodeUri {f.code_uri!r} resolves to {code_dir}, expected the workspace root "
                f"or crate {binary.package} ({binary.crate_dir})"
            )
    for name in sorted(set(binaries) - set(claimed)):
        b = binaries[name]
        problems.append(
            f"binary {name!r} (package {b.package}) has no function in the template: add an "
            f"AWS::Serverless::Function with Metadata.BuildProperties.Binary: {name}"
        )
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--list", action="store_true", help="print the workspace's Lambda binaries")
    args = parser.parse_args(argv)

    try:
        binaries = workspace_binaries(cargo_metadata(ROOT))
    except subprocess.CalledProcessError as e:
        print(f"cargo metadata failed, so the workspace's binaries are unknown:\n{e.stderr}", file=sys.stderr)
        return 1
    if args.list:
        print("\n".join(sorted(binaries)))
        return 0
    functions = template_functions(load_template(args.template))
    problems = check(binaries, functions, args.template.resolve().parent, ROOT)
    shown = os.path.relpath(args.template)
    for p in problems:
        print(f"{shown}: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"{shown}: {len(functions)} functions, one per Lambda binary: {', '.join(sorted(binaries))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
