"""Tests of check_functions.py: each rule on small workspaces and templates, then the real template."""

import textwrap
import unittest
from pathlib import Path

import check_functions as cf

ROOT = Path("/ws")
INFRA = ROOT / "infra"


def package(name: str, bins: list[str], deps: list[tuple[str, object]]) -> dict:
    """A package as `cargo metadata` describes it; `deps` are (name, kind) with kind None for normal."""
    return {
        "id": f"path+file:///ws/crates/{name}#0.1.0",
        "name": name,
        "manifest_path": f"/ws/crates/{name}/Cargo.toml",
        "targets": [{"name": name.replace("-", "_"), "kind": ["lib"]}]
        + [{"name": b, "kind": ["bin"]} for b in bins],
        "dependencies": [{"name": d, "kind": k, "rename": None} for d, k in deps],
    }


def metadata(*packages: dict) -> dict:
    return {"packages": list(packages), "workspace_members": [p["id"] for p in packages], "workspace_root": "/ws"}


def template(functions: str, globals_: str = "") -> dict:
    """A template from YAML text of `Resources` entries (and optional `Globals.Function` entries)."""
    text = "Resources:\n" + textwrap.indent(textwrap.dedent(functions), "  ")
    if globals_:
        text = "Globals:\n  Function:\n" + textwrap.indent(textwrap.dedent(globals_), "    ") + text
    return cf.yaml.load(text, Loader=cf._TemplateLoader)


GLOBALS = """\
Runtime: provided.al2023
Architectures: [arm64]
Handler: bootstrap
"""


def function(logical_id: str, binary: str, code_uri: str = "..") -> str:
    return f"""\
{logical_id}:
  Type: AWS::Serverless::Function
  Metadata:
    BuildMethod: rust-cargolambda
    BuildProperties:
      Binary: {binary}
  Properties:
    CodeUri: {code_uri}
    Role: !GetAtt {logical_id}Role.Arn
"""


VOTES = metadata(
    package("regional-normalizer", ["regional-normalizer"], [("lambda_runtime", None), ("ferry-aws", None)]),
    package("jobs", ["job-api", "job-worker"], [("lambda_http", None), ("lambda_runtime", None)]),
    package("ferry-cli", ["ferry"], [("clap", None)]),
    package("ferry-demo", ["ferry-demo"], [("lambda_runtime", None)]),
    package("ferry-tests", [], [("lambda_runtime", "dev")]),
)


def problems(meta: dict, tmpl: dict) -> list[str]:
    return cf.check(cf.workspace_binaries(meta), cf.template_functions(tmpl), INFRA, ROOT)


class WorkspaceBinaries(unittest.TestCase):
    def test_bins_of_packages_using_the_runtime_except_local_tools(self) -> None:
        found = cf.workspace_binaries(VOTES)
        self.assertEqual(sorted(found), ["job-api", "job-worker", "regional-normalizer"])
        self.assertEqual(found["job-worker"].package, "jobs")
        self.assertEqual(found["job-worker"].crate_dir, Path("/ws/crates/jobs"))

    def test_dev_dependency_on_the_runtime_does_not_count(self) -> None:
        meta = metadata(package("tool", ["tool"], [("lambda_runtime", "dev")]))
        self.assertEqual(cf.workspace_binaries(meta), {})


class Check(unittest.TestCase):
    def test_in_step(self) -> None:
        tmpl = template(
            function("Normalizer", "regional-normalizer")
            + function("Api", "job-api", "../crates/jobs")
            + function("Worker", "job-worker"),
            GLOBALS,
        )
        self.assertEqual(problems(VOTES, tmpl), [])

    def test_binary_without_function(self) -> None:
        tmpl = template(function("Normalizer", "regional-normalizer") + function("Api", "job-api"), GLOBALS)
        found = problems(VOTES, tmpl)
        self.assertEqual(len(found), 1, found)
        self.assertIn("binary 'job-worker' (package jobs) has no function", found[0])

    def test_function_naming_a_binary_the_workspace_lacks(self) -> None:
        tmpl = template(
            function("Normalizer", "regional-normalizer")
            + function("Api", "job-api")
            + function("Worker", "job-worker")
            + function("Consumer", "notify-consumer"),
            GLOBALS,
        )
        found = problems(VOTES, tmpl)
        self.assertEqual(len(found), 1, found)
        self.assertIn("template function Consumer: binary 'notify-consumer' is not a Lambda binary", found[0])

    def test_local_tool_is_not_deployable(self) -> None:
        tmpl = template(
            function("Normalizer", "regional-normalizer")
            + function("Api", "job-api")
            + function("Worker", "job-worker")
            + function("Demo", "ferry-demo"),
            GLOBALS,
        )
        self.assertIn("binary 'ferry-demo' is not a Lambda binary", "\n".join(problems(VOTES, tmpl)))

    def test_binary_deployed_twice(self) -> None:
        tmpl = template(
            function("Normalizer", "regional-normalizer")
            + function("Api", "job-api")
            + function("Worker", "job-worker")
            + function("Worker2", "job-worker"),
            GLOBALS,
        )
        self.assertEqual(
            problems(VOTES, tmpl), ["template function Worker2: binary 'job-worker' is already deployed by Worker"]
        )

    def test_code_uri_elsewhere(self) -> None:
        tmpl = template(
            function("Normalizer", "regional-normalizer", "../crates/jobs")
            + function("Api", "job-api")
            + function("Worker", "job-worker"),
            GLOBALS,
        )
        found = problems(VOTES, tmpl)
        self.assertEqual(len(found), 1, found)
        self.assertIn("template function Normalizer: CodeUri '../crates/jobs'", found[0])

    def test_build_settings(self) -> None:
        text = function("Normalizer", "regional-normalizer").replace("rust-cargolambda", "makefile")
        tmpl = template(
            text + function("Api", "job-api") + function("Worker", "job-worker"),
            GLOBALS.replace("arm64", "x86_64"),
        )
        found = "\n".join(problems(VOTES, tmpl))
        self.assertIn("Normalizer: Metadata.BuildMethod is 'makefile'", found)
        for fn in ("Normalizer", "Api", "Worker"):
            self.assertIn(f"{fn}: Architectures is ['x86_64']", found)

    def test_plain_lambda_function_is_reported(self) -> None:
        tmpl = template(
            function("Normalizer", "regional-normalizer")
            + function("Api", "job-api")
            + function("Worker", "job-worker")
            + "Inline:\n  Type: AWS::Lambda::Function\n  Properties: {}\n",
            GLOBALS,
        )
        self.assertEqual(
            problems(VOTES, tmpl),
            ["template function Inline: is AWS::Lambda::Function; only AWS::Serverless::Function is built by SAM from the workspace"],
        )


class RealTemplate(unittest.TestCase):
    def test_every_function_is_an_arm64_cargo_lambda_build(self) -> None:
        functions = cf.template_functions(cf.load_template(cf.DEFAULT_TEMPLATE))
        self.assertTrue(functions)
        for f in functions:
            with self.subTest(f.logical_id):
                self.assertEqual((f.type, f.build_method), ("AWS::Serverless::Function", cf.BUILD_METHOD))
                self.assertEqual((f.runtime, f.architectures, f.handler), (cf.RUNTIME, cf.ARCHITECTURES, cf.HANDLER))


if __name__ == "__main__":
    unittest.main()
