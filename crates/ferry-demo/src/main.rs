//! `ferry-demo`: runs ferry's scenarios against a local AWS endpoint (`AWS_ENDPOINT_URL`), over the
//! stand-ins of `ferry-testkit`.
//!
//! - [`votes`]: the cross-region vote scenario, end to end against a local S3.
//! - [`jobs`]: an xlsx export of 100,000 orders through the job API and a background worker.
//! - [`batch`]: 3,000 orders pushed to a slow, throttling partner API through the job API and a
//!   background worker, its failed items retried once the partner is healthy.
//! - [`notify`]: notifications through SQS with a failing provider, a DLQ and a redrive.
//! - [`edge`]: regional Redis sorted sets pushed to S3 and the global ranking pulled back.
//! - [`local`]: `setup`, the resources and environment the functions need under `cargo lambda watch`.

mod batch;
mod edge;
mod jobs;
mod local;
mod notify;
mod votes;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ferry-demo", about = "Run ferry's scenarios against a local AWS endpoint (AWS_ENDPOINT_URL).")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Every scenario in turn, as `make demo` runs them.
    All,
    /// Four regions upload tallies; the normalizer and merger run on the S3 events; print the global top 10.
    Votes {
        #[arg(long, default_value = "ferry-demo")]
        bucket: String,
        #[arg(long, default_value_t = 1)]
        evno: u64,
    },
    /// 100,000 orders exported to xlsx through the job API and a background worker; poll, download, count rows.
    Jobs {
        #[arg(long, default_value_t = 100_000)]
        orders: u64,
    },
    /// A few thousand orders pushed to a slow, throttling partner API as a batch job (10 in flight, rate-limited); print counts as it runs, the ordered results and the failed items; fix the partner, retry the failed ones.
    Batch {
        #[arg(long, default_value_t = 3_000)]
        items: u64,
    },
    /// Two senders sharing a notification id through the intake; 1,000 notifications through SQS, some malformed, some hitting a failing provider; fix it, redrive, check each was delivered once and dead-lettered at most once.
    Notify,
    /// Start moto and the notification provider on loopback, create every resource the functions need, print their environment for `cargo lambda watch`, and keep running until Ctrl-C.
    Setup {
        /// The port `cargo lambda watch` serves invokes on (`-P`): where the job functions invoke job-worker.
        #[arg(long, default_value_t = 9000)]
        lambda_port: u16,
        /// Rows seeded into the `orders` table the job fixture exports.
        #[arg(long, default_value_t = 1000)]
        orders: u64,
        /// Also write the environment as KEY=VALUE lines here, for `cargo lambda watch --env-file`.
        #[arg(long)]
        env_file: Option<std::path::PathBuf>,
    },
    /// Regional Redis sorted sets -> push -> normalize/merge -> pull into each region's Redis; print the ranking from Redis.
    Edge {
        #[arg(long, default_value = "ferry-demo")]
        bucket: String,
        #[arg(long, default_value_t = 2)]
        evno: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Setup { lambda_port, orders, env_file } = &cli.scenario {
        // It starts its own moto: no endpoint is needed.
        return local::setup(*lambda_port, *orders, env_file.as_deref()).await;
    }
    anyhow::ensure!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: the demo only runs against a local endpoint (use `make demo`)"
    );
    let conf = ferry_aws::load_config().await;
    match cli.scenario {
        Scenario::All => {
            println!("== cross-region votes ==");
            print!("{}", votes::run(ferry_aws::clients::s3(&conf), "ferry-demo", 1).await?);
            println!("\n== async jobs (xlsx export through the job API) ==");
            print!("{}", jobs::run(&conf, 100_000).await?);
            println!("\n== batch job (orders to a partner API, retry of the failed ones) ==");
            print!("{}", batch::run(&conf, 3_000).await?);
            println!("\n== regional edge (Redis) ==");
            print!("{}", edge::run(ferry_aws::clients::s3(&conf), "ferry-demo", 2).await?);
            println!("\n== notifications (SQS, DLQ, redrive) ==");
            print!("{}", notify::run(ferry_aws::clients::sqs(&conf), ferry_aws::clients::dynamodb(&conf)).await?);
        }
        Scenario::Votes { bucket, evno } => {
            print!("{}", votes::run(ferry_aws::clients::s3(&conf), &bucket, evno).await?);
        }
        Scenario::Jobs { orders } => {
            print!("{}", jobs::run(&conf, orders).await?);
        }
        Scenario::Batch { items } => {
            print!("{}", batch::run(&conf, items).await?);
        }
        Scenario::Notify => {
            print!("{}", notify::run(ferry_aws::clients::sqs(&conf), ferry_aws::clients::dynamodb(&conf)).await?);
        }
        Scenario::Edge { bucket, evno } => {
            print!("{}", edge::run(ferry_aws::clients::s3(&conf), &bucket, evno).await?);
        }
        Scenario::Setup { .. } => unreachable!("handled before the endpoint check"),
    }
    Ok(())
}
