//! The regional edge scenario: each region keeps its votes in its own Redis sorted set; `push` uploads
//! them, the normalizer and merger run on the S3 events, and `pull` loads the global ranking back
//! into every region's Redis, where the API servers would read it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ferry_aws::s3::{S3Client, Store};
use ferry_aws::votes::VoteSettings;
use ferry_core::csv;
use ferry_core::key::Stamp;
use ferry_edge::{PullConfig, PullOutcome, PushConfig};
use ferry_testkit::events::s3_put_event;
use global_merger::Merger;
use lambda_runtime::{Context, LambdaEvent};
use regional_normalizer::Normalizer;

use crate::votes::regional_csv;

/// A redis-server of the demo on a free loopback port, stopped when dropped.
#[derive(Debug)]
pub struct LocalRedis {
    pub port: u16,
    child: Child,
}

impl LocalRedis {
    /// Starts `redis-server` (or `FERRY_REDIS_SERVER`) without persistence and waits for it.
    pub fn start() -> anyhow::Result<LocalRedis> {
        let program = std::env::var("FERRY_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} (run `make deps`, which installs redis-server)"))?;
        let server = LocalRedis { port, child };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("{program} did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The regions of the demo: (locale, tally rows, generator seed).
const REGIONS: [(&str, usize, u64); 4] = [("jp", 60_000, 11), ("kr", 25_000, 12), ("tw", 8_000, 13), ("na", 2_000, 14)];

fn no_progress(_: u64, _: u64) {}

/// Runs the scenario against the S3 endpoint `s3` points at, with one local redis-server per region,
/// and returns the report to print.
pub async fn run(s3: S3Client, bucket: &str, evno: u64) -> anyhow::Result<String> {
    crate::votes::ensure_bucket(&s3, bucket).await?;
    let settings = VoteSettings::from_env().map_err(anyhow::Error::msg)?;
    let normalizer = Normalizer { s3: s3.clone(), settings };
    let merger = Merger { s3: s3.clone(), settings };
    let store = Store::new(s3.clone(), bucket);
    let stamp = Stamp::from_unix_seconds(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64);
    let votes_key = format!("votes:{evno}");
    let rank_key = format!("rank:{evno}:global");
    let mut log = String::new();

    let mut servers = Vec::new();
    for (locale, rows, seed) in REGIONS {
        let server = LocalRedis::start()?;
        let mut conn = ferry_edge::connect(&server.url()).await?;
        // The region's votes, as its API servers would have counted them into a sorted set.
        let t = csv::read_tally(locale, &regional_csv(rows, seed, false))?;
        let mut pipe = redis::pipe();
        let cmd = pipe.cmd("ZADD").arg(&votes_key);
        for (kseq, score) in t.iter() {
            cmd.arg(score).arg(kseq);
        }
        pipe.query_async::<()>(&mut conn).await.context("filling the regional sorted set")?;

        let cfg = PushConfig { key: &votes_key, evno, locale, stage: "prod", stamp, page: 1000 };
        let out = ferry_edge::push(&store, &mut conn, &cfg, &no_progress).await?;
        log.push_str(&format!(
            "{locale}: redis 127.0.0.1:{} {votes_key} ({} members) -> push -> {} (sum {})\n",
            server.port, out.members, out.upload, out.sum
        ));
        // S3 would now notify the normalizer.
        let event = LambdaEvent::new(s3_put_event(bucket, &[&out.upload]), Context::default());
        let report = regional_normalizer::handle(&normalizer, event).await.map_err(|e| anyhow::anyhow!("normalizer: {e}"))?;
        for rec in &report.records {
            log.push_str(&format!("  normalizer: {}\n", serde_json::to_string(&rec.outcome)?));
        }
        servers.push((locale, server, conn));
    }
    for (locale, _, _) in &servers {
        let key = format!("result/{evno}/prod/result-{locale}.csv");
        let event = LambdaEvent::new(s3_put_event(bucket, &[&key]), Context::default());
        let report = global_merger::handle(&merger, event).await.map_err(|e| anyhow::anyhow!("merger: {e}"))?;
        for m in &report.merges {
            log.push_str(&format!("  merger: {}\n", serde_json::to_string(m)?));
        }
    }

    let cfg = PullConfig { key: &rank_key, evno, stage: "prod", max_input_bytes: 512 << 20, batch: 5000, top: 5, force: false };
    for (i, (locale, server, conn)) in servers.iter_mut().enumerate() {
        match ferry_edge::pull(&store, conn, &cfg, &no_progress).await? {
            PullOutcome::Loaded { members, summary, .. } => {
                log.push_str(&format!("{locale}: pull -> {rank_key} on 127.0.0.1:{} ({members} members)\n", server.port));
                if i == 0 {
                    log.push_str(&format!("  chat notice:\n    {}\n", summary.replace('\n', "\n    ")));
                }
            }
            other => log.push_str(&format!("{locale}: pull -> {other:?}\n")),
        }
    }
    // A cron rerun finds the same global already loaded and reads nothing.
    let (locale, _, conn) = &mut servers[0];
    if let PullOutcome::UpToDate { etag, .. } = ferry_edge::pull(&store, conn, &cfg, &no_progress).await? {
        log.push_str(&format!("{locale}: pull again -> up to date (etag {etag}), nothing loaded\n"));
    }

    for (locale, server, conn) in &mut servers {
        let top: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&rank_key)
            .arg(0)
            .arg(9)
            .arg("REV")
            .arg("WITHSCORES")
            .query_async(conn)
            .await
            .context("reading the ranking")?;
        log.push_str(&format!("\n{locale}: ZRANGE {rank_key} 0 9 REV WITHSCORES on 127.0.0.1:{}\n", server.port));
        for (rank, (kseq, score)) in top.iter().enumerate() {
            log.push_str(&format!("{:>4}  {kseq:<12} {score:>9.5}\n", rank + 1));
        }
    }
    // Dropping the servers stops them.
    drop(servers);
    Ok(log)
}
