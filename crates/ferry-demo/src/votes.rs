//! The cross-region vote scenario: four regions of different sizes and tastes upload tallies, the
//! normalizer and the merger run as Lambda handlers on the S3 events those uploads cause, and the
//! global top 10 comes out.

use anyhow::{Context as _, bail};
use ferry_aws::s3::{Fetched, S3Client, Store};
use ferry_aws::votes::VoteSettings;
use ferry_core::key::Stamp;
use ferry_testkit::events::s3_put_event;
use global_merger::Merger;
use lambda_runtime::{Context, LambdaEvent};
use regional_normalizer::Normalizer;

/// A small deterministic generator (SplitMix64), so every run of the demo shows the same data.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One region of the demo: how many tally rows it sends and how its taste differs.
struct Region {
    locale: &'static str,
    rows: usize,
    seed: u64,
    /// opencsv writes every field quoted, with a BOM from some Windows tools.
    opencsv: bool,
}

const REGIONS: [Region; 4] = [
    Region { locale: "jp", rows: 60_000, seed: 1, opencsv: true },
    Region { locale: "kr", rows: 25_000, seed: 2, opencsv: false },
    Region { locale: "tw", rows: 8_000, seed: 3, opencsv: false },
    Region { locale: "na", rows: 2_000, seed: 4, opencsv: false },
];

const CANDIDATES: u64 = 400;

/// The candidate key: opaque, and with commas, as real keys were.
fn kseq(c: u64) -> String {
    format!("({},{},{})", 1 + c / 100, 1 + (c / 10) % 10, c % 10)
}

/// A regional tally CSV: shared popularity times a regional taste, some keys repeated (summed).
pub fn regional_csv(rows: usize, seed: u64, opencsv: bool) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let taste: Vec<f64> = (0..CANDIDATES).map(|_| 0.3 + 1.4 * rng.unit()).collect();
    let mut out = Vec::with_capacity(rows * 24);
    if opencsv {
        out.extend_from_slice(b"\xEF\xBB\xBF\"KSEQ\",\"SCORE\"\n");
    } else {
        out.extend_from_slice(b"kseq,score\n");
    }
    for _ in 0..rows {
        // Zipf-like shared popularity: low candidate numbers are more popular everywhere.
        let c = ((CANDIDATES as f64) * rng.unit().powi(3)) as u64;
        let votes = (1.0 + 20.0 * rng.unit() * taste[c as usize]).round();
        let k = kseq(c);
        if opencsv {
            out.extend_from_slice(format!("\"{}\",\"{}\"\n", k.replace('"', "\"\""), votes).as_bytes());
        } else {
            out.extend_from_slice(format!("\"{k}\",{votes}\n").as_bytes());
        }
    }
    out
}

/// Creates `bucket` unless this account already has it.
pub async fn ensure_bucket(s3: &S3Client, bucket: &str) -> anyhow::Result<()> {
    match s3.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_owned_by_you()) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("creating bucket {bucket}"))),
    }
}

/// Runs the scenario against the S3 endpoint `s3` points at, and returns the report to print.
pub async fn run(s3: S3Client, bucket: &str, evno: u64) -> anyhow::Result<String> {
    ensure_bucket(&s3, bucket).await?;
    let settings = VoteSettings::from_env().map_err(anyhow::Error::msg)?;
    let normalizer = Normalizer { s3: s3.clone(), settings };
    let merger = Merger { s3: s3.clone(), settings };
    let store = Store::new(s3.clone(), bucket);
    let stamp = Stamp::from_unix_seconds(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64);
    let mut log = String::new();

    let mut result_keys = Vec::new();
    for r in &REGIONS {
        let key = format!("data/{evno}/{}-prod-{stamp}.csv", r.locale);
        let body = regional_csv(r.rows, r.seed, r.opencsv);
        log.push_str(&format!(
            "uploaded {key} ({} rows, {} bytes{})\n",
            r.rows,
            body.len(),
            if r.opencsv { ", opencsv quoting" } else { "" }
        ));
        s3.put_object().bucket(bucket).key(&key).body(body.into()).send().await.with_context(|| format!("uploading {key}"))?;
        // S3 would now notify the normalizer with this event.
        let event = LambdaEvent::new(s3_put_event(bucket, &[&key]), Context::default());
        let report = regional_normalizer::handle(&normalizer, event).await.map_err(|e| anyhow::anyhow!("normalizer: {e}"))?;
        for rec in &report.records {
            log.push_str(&format!("  normalizer: {}\n", serde_json::to_string(&rec.outcome)?));
        }
        result_keys.push(format!("result/{evno}/prod/result-{}.csv", r.locale));
    }
    for key in &result_keys {
        // Each locale result written is an event for the merger.
        let event = LambdaEvent::new(s3_put_event(bucket, &[key]), Context::default());
        let report = global_merger::handle(&merger, event).await.map_err(|e| anyhow::anyhow!("merger: {e}"))?;
        for m in &report.merges {
            log.push_str(&format!("  merger: {}\n", serde_json::to_string(m)?));
        }
    }
    let global_key = format!("global/{evno}/prod/result-global.csv");
    let Fetched::Object(global) = store.get_capped(&global_key, u64::MAX).await? else {
        bail!("{global_key} was not written");
    };
    log.push_str(&format!(
        "\nglobal top 10 ({global_key}, built from {}):\n",
        global.head.metadata.get(ferry_aws::votes::META_INPUTS).map_or("?", String::as_str)
    ));
    log.push_str(&top_table(&global.body, 10)?);
    Ok(log)
}

/// Formats the first `n` rows of a global result as an aligned table.
pub fn top_table(global_csv: &[u8], n: usize) -> anyhow::Result<String> {
    let mut reader = csv::Reader::from_reader(global_csv);
    let header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
    let mut out = format!("{:>4}  {:<12}", "rank", header[0]);
    for h in &header[1..] {
        out.push_str(&format!(" {h:>9}"));
    }
    out.push('\n');
    for (i, rec) in reader.records().take(n).enumerate() {
        let rec = rec?;
        out.push_str(&format!("{:>4}  {:<12}", i + 1, &rec[0]));
        for f in rec.iter().skip(1) {
            let v: f64 = f.parse()?;
            out.push_str(&format!(" {v:>9.5}"));
        }
        out.push('\n');
    }
    Ok(out)
}
