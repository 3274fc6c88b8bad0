//! Seeded regional uploads shaped like the ones the batch jobs write: opencsv quotes every field,
//! keys are `(evno,category,id)` triples, votes follow a long-tailed popularity curve, and each
//! region sees a different (overlapping) subset of the keys in hash-map order.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
pub struct GenArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Distinct keys per region.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Comma-separated locales; one file `{locale}.csv` each.
    #[arg(long, default_value = "jp,kr,na,tw", value_delimiter = ',')]
    locales: Vec<String>,
    /// Also exercise the contract's corners (BOM, header case and order, duplicate rows, quotes in
    /// keys, fractional and zero scores): for checking two implementations against each other.
    #[arg(long)]
    variety: bool,
    #[arg(long)]
    out: PathBuf,
}

/// SplitMix64: tiny, fast and the same on every platform.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn run(a: &GenArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // A quarter more keys exist than any one region sees, so regions overlap but not fully.
    let universe = a.keys + a.keys / 4;
    let mut total_bytes = 0u64;
    for (r, locale) in a.locales.iter().enumerate() {
        let mut rng = Rng::new(a.seed.wrapping_mul(1_000_003).wrapping_add(r as u64));
        let mut ids: Vec<u32> = (0..universe as u32).collect();
        // Partial Fisher-Yates: the first `keys` slots become a random subset in random order.
        for i in 0..a.keys.min(universe) {
            let j = i + rng.below(universe - i);
            ids.swap(i, j);
        }
        ids.truncate(a.keys);
        let taste = 0.5 + rng.unit();
        let path = a.out.join(format!("{locale}.csv"));
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let odd = a.variety && r % 2 == 1;
        if odd {
            w.write_all(b"\xEF\xBB\xBF\"SCORE\",\"Kseq\"\n")?;
        } else {
            w.write_all(b"\"kseq\",\"score\"\n")?;
        }
        for (n, &id) in ids.iter().enumerate() {
            // A popular head of about a thousand keys, then a power-law tail; each region adds its
            // own noise and taste (the tail's steepness).
            let base = 50_000.0 / (1.0 + f64::from(id) / 1000.0).powf(taste);
            let votes = (base * (0.5 + rng.unit())).floor();
            let quote = if a.variety && n % 37 == 5 { "\"\"x" } else { "" };
            let key = format!("(7,{},{id}{quote})", id % 53 + 1);
            let score = if a.variety && n % 29 == 3 { format!("{}.5", votes) } else { format!("{votes}") };
            if odd {
                writeln!(w, "\"{score}\",\"{key}\"")?;
            } else {
                writeln!(w, "\"{key}\",\"{score}\"")?;
            }
            if a.variety && n % 20 == 0 {
                // The same key again: the contract sums duplicates.
                let extra = rng.below(5);
                if odd { writeln!(w, "\"{extra}\",\"{key}\"")? } else { writeln!(w, "\"{key}\",\"{extra}\"")? }
            }
        }
        w.flush()?;
        total_bytes += std::fs::metadata(&path)?.len();
    }
    println!("wrote {} files, {} keys each, {} bytes", a.locales.len(), a.keys, total_bytes);
    Ok(())
}
