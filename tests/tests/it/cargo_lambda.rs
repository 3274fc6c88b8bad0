//! The README's `cargo lambda` steps, run as written so they cannot rot: `ferry-demo setup` (moto,
//! every resource, the notification provider), `cargo lambda watch` at the workspace root with the
//! environment it wrote, and `cargo lambda invoke` of every function with its fixture under
//! `events/`, the job chain included (submit, worker, continuations, succeeded, download).
//!
//! watch builds each function with `cargo run --bin`, which reuses the workspace build that
//! `make test` makes first (`cargo build --workspace --bins`): only workspace crates changed since
//! are compiled, never the dependencies. It runs offline (`CARGO_NET_OFFLINE`): nothing is
//! downloaded. Skipped, saying why, when cargo-lambda is not installed in `.venv` (`make test`
//! installs it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_testkit::{binary, free_port, workspace};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A process group started here (the process and everything it started), ended when dropped.
struct Group(Child);

impl Group {
    fn start(mut cmd: Command) -> Group {
        cmd.process_group(0).kill_on_drop(true);
        Group(cmd.spawn().expect("starting a process"))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", "--", &format!("-{pid}")]).status();
        }
    }
}

/// `cargo test` hands a test its own package's `CARGO_*` variables (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, ...). Build scripts that watch them (ring's) would see them change under the
/// `cargo run` watch starts, and rebuild with everything above them: the AWS SDK. Only the ones a
/// user sets are kept.
fn without_cargo_test_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let kept = matches!(name, "CARGO_HOME" | "CARGO_TARGET_DIR" | "CARGO_TERM_COLOR");
        if (name.starts_with("CARGO_") && !kept) || name == "OUT_DIR" {
            cmd.env_remove(name);
        }
    }
}

fn cargo_lambda() -> PathBuf {
    workspace().join(".venv/bin/cargo-lambda")
}

/// A dependency watch's `cargo run` compiled (`Compiling name vX.Y.Z` without a workspace path),
/// if any: the build it should have reused did not match.
fn dependency_compiled(log: &str) -> Option<&str> {
    log.lines().map(str::trim).find(|l| l.starts_with("Compiling ") && !l.contains(" (/"))
}

/// `cargo lambda invoke FUNCTION ARGS...` against the watch on `port` (logging to `log`); its
/// answer, parsed. Fails at once, stopping watch, if watch starts compiling a dependency.
async fn invoke(port: u16, log: &Path, function: &str, args: &[&str]) -> Value {
    let mut cmd = Command::new(cargo_lambda());
    cmd.args(["lambda", "invoke", "--invoke-address", "127.0.0.1", "--invoke-port", &port.to_string(), function])
        .args(args)
        .current_dir(workspace())
        .kill_on_drop(true);
    // The first invoke of a function builds it (workspace crates only).
    let rebuilding = async {
        loop {
            if let Some(line) = dependency_compiled(&std::fs::read_to_string(log).unwrap_or_default()) {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let out = tokio::select! {
        out = tokio::time::timeout(Duration::from_secs(600), cmd.output()) => out
            .unwrap_or_else(|_| panic!("cargo lambda invoke {function} {args:?} did not answer within 10 minutes"))
            .expect("running cargo lambda invoke"),
        line = rebuilding => panic!(
            "cargo lambda watch is rebuilding dependencies ({line}): run `cargo build --workspace --bins` first, \
             from an environment without the CARGO_* variables of a cargo build"
        ),
    };
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cargo lambda invoke {function} {args:?}: {}\n{stdout}\n{stderr}", out.status);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{function} answered no JSON ({e}): {stdout}\n{stderr}"))
}

/// The body of an API Gateway answer, parsed.
fn body(answer: &Value) -> Value {
    serde_json::from_str(answer["body"].as_str().unwrap_or("null")).unwrap_or_else(|e| panic!("body is not JSON ({e}): {answer}"))
}

/// Starts `ferry-demo setup` and waits until it says it is ready.
async fn setup(lambda_port: u16, env_file: &Path) -> Group {
    let mut cmd = Command::new(binary("ferry-demo"));
    cmd.args(["setup", "--lambda-port", &lambda_port.to_string(), "--env-file"]).arg(env_file).stdout(Stdio::piped());
    let mut group = Group::start(cmd);
    let mut lines = BufReader::new(group.0.stdout.take().expect("piped stdout")).lines();
    let ready = async {
        while let Some(line) = lines.next_line().await.expect("reading the setup's output") {
            if line.starts_with("# ready") {
                return;
            }
        }
        panic!("ferry-demo setup ended before it was ready");
    };
    tokio::time::timeout(Duration::from_secs(120), ready).await.expect("ferry-demo setup was not ready within 2 minutes");
    group
}

#[tokio::test]
async fn every_function_answers_its_fixture_under_cargo_lambda_watch() {
    if !cargo_lambda().exists() {
        eprintln!("SKIPPED: {} is not installed (`make test` installs it into .venv)", cargo_lambda().display());
        return;
    }
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let port = free_port();
    let dir = std::env::temp_dir().join(ferry_testkit::unique("ferry-cargo-lambda"));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let env_file = dir.join("ferry-local.env");
    let _setup = setup(port, &env_file).await;

    let log_path = dir.join("watch.log");
    let log = std::fs::File::create(&log_path).expect("watch log");
    let mut watch = Command::new(cargo_lambda());
    watch
        .args(["lambda", "watch", "--invoke-address", "127.0.0.1", "--invoke-port", &port.to_string()])
        .args(["--ignore-changes", "--concurrency", "8", "--env-file"])
        .arg(&env_file)
        .current_dir(workspace());
    without_cargo_test_env(&mut watch);
    watch.env("CARGO_NET_OFFLINE", "true").stdout(log.try_clone().expect("log")).stderr(log);
    let _watch = Group::start(watch);
    ferry_testkit::wait_for_port(port, "cargo lambda watch", Duration::from_secs(60));
    let watch_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Each step as the README shows it.
    for (function, fixture) in [
        ("regional-normalizer", "s3-put.json"),
        ("global-merger", "s3-put-result.json"),
        ("notify-intake", "apigw-notify.json"),
        ("notify-consumer", "sqs-notification.json"),
        ("dlq-redrive", "apigw-redrive.json"),
        ("job-worker", "job-worker.json"),
        ("job-api", "apigw-http-jobs.json"),
    ] {
        let step = format!("invoke {function} --data-file events/{fixture}");
        assert!(readme.contains(&step), "the README no longer shows `{step}`");
    }

    let r = invoke(port, &log_path, "regional-normalizer", &["--data-file", "events/s3-put.json"]).await;
    assert_eq!(r["records"][0]["outcome"], "written", "{r}");
    assert_eq!(r.to_string().matches("\"key\"").count(), 1, "{r}");
    let r = invoke(port, &log_path, "regional-normalizer", &["--data-file", "events/s3-put-leading-slash.json"]).await;
    assert_eq!(
        (&r["records"][0]["key"], &r["records"][0]["outcome"]),
        (&"/data/1/kr-prod-202611221530.csv".into(), &"written".into()),
        "{r}"
    );
    let r = invoke(port, &log_path, "global-merger", &["--data-file", "events/s3-put-result.json"]).await;
    assert_eq!((&r["merges"][0]["outcome"], &r["merges"][0]["rows"]), (&"written".into(), &4.into()), "{r}");

    let r = invoke(port, &log_path, "notify-intake", &["--data-file", "events/apigw-notify.json"]).await;
    assert_eq!((&r["statusCode"], &body(&r)["status"]), (&202.into(), &"queued".into()), "{r}");
    let r = invoke(port, &log_path, "notify-consumer", &["--data-file", "events/sqs-notification.json"]).await;
    assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}");
    let r = invoke(port, &log_path, "dlq-redrive", &["--data-file", "events/apigw-redrive.json"]).await;
    assert_eq!((&r["statusCode"], &body(&r)["dry_run"]), (&200.into(), &true.into()), "{r}");

    let r = invoke(port, &log_path, "job-worker", &["--data-file", "events/job-worker.json"]).await;
    assert_eq!((&r["outcome"], &r["reason"]), (&"skipped".into(), &"no such job".into()), "{r}");

    // The chain: job-api answers at once and invokes job-worker through watch, which hands over
    // after every page (the budget setup sets) until the export is done.
    let r = invoke(port, &log_path, "job-api", &["--data-file", "events/apigw-http-jobs.json"]).await;
    assert_eq!(r["statusCode"], 202, "{r}");
    let id = body(&r)["job"]["id"].as_str().expect("a job id").to_owned();
    let get = std::fs::read_to_string(workspace().join("events/apigw-http-jobs-get.json")).expect("the GET fixture").replace("JOB_ID", &id);
    let start = Instant::now();
    let view = loop {
        let r = invoke(port, &log_path, "job-api", &["--data-ascii", &get]).await;
        assert_eq!(r["statusCode"], 200, "{r}");
        let view = body(&r);
        match view["status"].as_str() {
            Some("queued" | "running") => {}
            _ => break view,
        }
        assert!(start.elapsed() < Duration::from_secs(300), "job {id} did not end within 5 minutes: {view}\n{}", watch_log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(view["status"], "succeeded", "{view}\n{}", watch_log());
    assert!(view["attempt"].as_u64() >= Some(1), "the export never continued: {view}");
    let url = view["download"]["url"].as_str().expect("a download link");
    let bytes = reqwest::get(url).await.expect("download").bytes().await.expect("download body");
    let (rows, sheets) = ferry_testkit::workbook::count_xlsx_rows(&bytes).expect("an xlsx");
    assert_eq!((rows, sheets), (1000, 1));
    let log = watch_log();
    assert!(!log.lines().any(|l| l.trim_start().starts_with("ERROR")), "a function logged an error:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
