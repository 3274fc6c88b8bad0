//! `ferry-demo setup`: everything the functions need to run locally under `cargo lambda watch`.
//! moto on loopback with every resource provisioned ([`ferry_testkit::provision::local_stack`]),
//! the notification provider ([`LocalProvider`]), and the environment of the functions printed as
//! `export` lines (and written as `KEY=VALUE` lines for `cargo lambda watch --env-file`). It keeps
//! running until it is stopped: moto and the provider end with it.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use ferry_testkit::provider::LocalProvider;
use ferry_testkit::provision::local_stack;

/// What the setup prints last, once everything is up: a caller waiting for it may start invoking.
pub const READY: &str = "# ready: Ctrl-C stops moto and the provider";

/// The environment of every function under `cargo lambda watch`, in the order it is printed.
fn environment(moto: &str, lambda_port: u16, provider: &str, stack: &ferry_testkit::provision::LocalStack) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto.to_owned()),
        // The job functions invoke job-worker through `cargo lambda watch`, not moto.
        ("AWS_ENDPOINT_URL_LAMBDA", format!("http://127.0.0.1:{lambda_port}")),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("FERRY_JOBS_TABLE", stack.jobs_table.clone()),
        ("FERRY_EXPORT_BUCKET", stack.export_bucket.clone()),
        ("FERRY_JOB_WORKER_FUNCTION", "job-worker".into()),
        // `cargo lambda watch` answers an `Event` invoke only once the worker has finished.
        ("FERRY_JOB_INVOKE", "detached".into()),
        ("FERRY_EXPORT_SOURCE_TABLES", stack.orders_table.clone()),
        // watch gives every function 4096 MB, too little for the default object cap read four
        // ahead: job-worker would refuse to start.
        ("FERRY_JOB_MAX_OBJECT_BYTES", "268435456".into()),
        // watch hands the worker no usable deadline: each run gets this budget, and with a margin
        // as long the export hands over after every page, so one export shows the whole chain.
        ("FERRY_JOB_RUN_BUDGET_MS", "1000".into()),
        ("FERRY_JOB_CONTINUE_MARGIN_SECS", "1".into()),
        ("FERRY_NOTIFY_TABLE", stack.deliveries_table.clone()),
        ("FERRY_NOTIFY_QUEUE_URL", stack.queues.source_url.clone()),
        ("FERRY_NOTIFY_DLQ_URL", stack.queues.dlq_url.clone()),
        ("FERRY_PROVIDER_URL", provider.to_owned()),
    ]
}

/// Starts moto and the provider, provisions, prints the environment, and waits to be stopped.
pub async fn setup(lambda_port: u16, orders: u64, env_file: Option<&Path>) -> anyhow::Result<()> {
    // Started here on a free loopback port, and stopped when this process ends.
    let moto = ferry_testkit::moto_endpoint();
    let conf = ferry_testkit::sdk_config();
    let stack = local_stack(&conf, orders).await.context("provisioning moto")?;
    let provider = LocalProvider::start(Duration::from_secs(2)).await?;
    let vars = environment(&moto, lambda_port, &provider.url, &stack);
    if let Some(path) = env_file {
        let text: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# moto on {moto}: buckets {} and {}, tables {}, {} and {} ({orders} orders), queue and DLQ {}",
        stack.votes_bucket, stack.export_bucket, stack.jobs_table, stack.deliveries_table, stack.orders_table, stack.queues.source_url
    )?;
    writeln!(out, "# notification provider on {}", provider.url)?;
    writeln!(out, "# the functions' environment, for the shell that runs `cargo lambda watch`:")?;
    for (k, v) in &vars {
        writeln!(out, "export {k}={v}")?;
    }
    if let Some(path) = env_file {
        writeln!(out, "# also written to {} (cargo lambda watch --env-file {})", path.display(), path.display())?;
    }
    writeln!(out, "{READY}")?;
    out.flush()?;
    drop(out);
    // SIGINT and SIGTERM end the process; moto's watchdog stops moto when it sees it gone.
    std::future::pending::<()>().await;
    Ok(())
}
