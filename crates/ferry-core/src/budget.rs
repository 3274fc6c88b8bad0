//! Memory budgets of the vote functions: whether a size cap fits in a function's memory, and how
//! much to reserve for an input of a given size.
//!
//! A vote function holds its input and everything built from it at once, so its peak memory is a
//! multiple of the input bytes (measured, below) on top of what the process uses before any input.
//! A cap that cannot fit is refused at start-up ([`Work::check`]) instead of surfacing as an
//! out-of-memory kill on the first large input. The export worker likewise holds each dataset object
//! it reads ahead whole ([`check_read_ahead`]).

/// Lambda's memory setting counts MB of 2^20 bytes.
pub const MIB: u64 = 1 << 20;

/// Peak RSS per byte of upload of the normalizer's work on one upload: the body, `read_tally`,
/// normalising and writing the locale result. Measured with `ferry-bench normalize-peak` on
/// `ferry-bench gen-votes` uploads (opencsv-quoted `(evno,category,id)` keys, long-tailed votes,
/// about 21 bytes a row): 3.61x to 4.20x on eight uploads of 2 M and 7 M keys (42-159 MB), 3.40x on
/// one of 23.9 M keys (513 MB, more zero votes, so shorter result rows). Rounded up over what
/// [`normalize_peak`] estimates for those uploads (up to 4.45x), so that no upload like them within
/// the cap is refused. Uploads of shorter rows hold more keys per byte; [`normalize_peak`] refuses
/// those that would not fit. Measured again when results came to be sorted by key head: 4.11x on a
/// 4 M-key upload (83 MB), as before.
pub const NORMALIZE_PEAK_FACTOR: f64 = 4.75;

/// Peak RSS per byte of locale results of the merger's work on one stage: reading every locale
/// result, merging and writing the global result. Measured with `ferry-bench merge-peak` on the
/// locale results of the uploads above: 1.85x and 2.01x on four (344 MB and 1.04 GB; regions share
/// most keys), 2.66x to 3.24x on one alone (88-637 MB), 3.52x and 3.79x on four with no key in
/// common (350 MB and 1.06 GB: each global row then carries three zero contributions). Rounded up
/// over the last. Measured again when the merge became partitioned, on 4 M-key uploads: 1.85x on four
/// sharing most keys (668 MB), 3.42x on four with none in common (668 MB), 2.54x on one (173 MB),
/// where the merge before took 1.89x, 3.61x and 2.70x of the same inputs.
pub const MERGE_PEAK_FACTOR: f64 = 4.5;

/// Peak RSS per byte of one dataset object of the export worker's read of it
/// (`job_invoker::export::dataset`: the whole body, parsed with polars into a frame, then pages of
/// JSON cells): per byte of a CSV object, per decoded byte (`dataset::decoded_bytes`, from the
/// footer) of a Parquet one. Measured with `ferry-bench dataset-peak` (debug build; dependencies at
/// opt-level 1) on `ferry-bench gen-dataset` objects (10 columns of order rows, about 105 bytes a
/// row): CSV 2.86x, 2.66x and 2.61x on objects of 32, 128 and 512 MiB; the same rows as Parquet
/// 1.60x, 1.45x and 1.39x of their decoded 42-684 MB. Four 128 MiB objects at once: 2.12x and 1.41x
/// of their total. Rounded up over the largest. CSV rows of narrower cells take more per byte
/// (five one-digit integers a row: 5.1x; five one-letter strings: 9.1x), so this holds for rows like
/// the measured ones; [`csv_weight`] makes a CSV object of narrow cells count for more than its bytes.
pub const DATASET_PEAK_FACTOR: f64 = 3.0;

/// Peak RSS of reading a CSV dataset object is close to its bytes plus this much per cell (the same
/// `ferry-bench dataset-peak` runs: order rows, one-digit integers and one-letter strings alike,
/// within about 5%). Narrow cells are what make a CSV object cost more than its bytes.
pub const CSV_PEAK_BYTES_PER_CELL: u64 = 16;

/// What a CSV dataset object of `bytes` bytes and `cells` cells weighs against the object cap: its
/// bytes, or, when its cells are narrow enough that its peak (bytes + [`CSV_PEAK_BYTES_PER_CELL`]
/// per cell) would pass [`DATASET_PEAK_FACTOR`] times its bytes, the size whose budget that peak
/// needs. So no CSV object within the cap peaks above the factor times the cap.
pub fn csv_weight(bytes: u64, cells: u64) -> u64 {
    let peak = bytes.saturating_add(cells.saturating_mul(CSV_PEAK_BYTES_PER_CELL));
    bytes.max((peak as f64 / DATASET_PEAK_FACTOR).ceil() as u64)
}

/// What the export worker uses besides the dataset objects it holds: the runtime, SDK clients, the
/// upload part being filled and the one being sent, pages of rows waiting in the read-ahead channels.
pub const WORKER_RESERVE_BYTES: u64 = 128 * MIB;

/// What a vote function uses besides its input and what it builds from it: the runtime, SDK
/// clients, connection buffers, threads. Both binaries sit at 15 MB RSS waiting for their first
/// event; the rest is room for an invocation's requests and the merge's worker threads.
pub const RESERVE_BYTES: u64 = 64 * MIB;

/// Memory per distinct key while an upload is read: its offset and value, and its share of the key
/// index, which grows by doubling (up to 2.3 slots a key, and the old table beside the new one
/// while it grows).
const READ_BYTES_PER_KEY: u64 = 48;

/// Memory per distinct key while the locale result is built: offset, raw and normalised value, sort
/// order, and its row's quotes, numbers and separators in the result. With the key bytes counted
/// twice (kept, and written again), [`normalize_peak`] came 4-7% above the measured peak on the
/// uploads of [`NORMALIZE_PEAK_FACTOR`] and 5-35% above on uploads of 7-digit numeric keys.
const WRITE_BYTES_PER_KEY: u64 = 66;

/// The normalizer's peak, without the reserve, on an upload of `input` bytes whose `keys` distinct
/// keys take `key_bytes`: reading holds the body, the keys and their index; writing holds the keys,
/// their values and the result.
pub fn normalize_peak(input: u64, key_bytes: u64, keys: u64) -> u64 {
    let reading = input + key_bytes + keys * READ_BYTES_PER_KEY;
    let writing = 2 * key_bytes + keys * WRITE_BYTES_PER_KEY;
    reading.max(writing)
}

/// What the work may use of `memory_mb`: all of it but the reserve. Unlimited off Lambda.
pub fn usable_bytes(memory_mb: Option<u64>) -> u64 {
    memory_mb.map_or(u64::MAX, |mb| mb.saturating_mul(MIB).saturating_sub(RESERVE_BYTES))
}

/// The fewest bytes a realistic upload row takes (an opencsv-quoted key and score): a file's line
/// count is believed only up to `bytes / ASSUMED_ROW_BYTES` when sizing its key table.
const ASSUMED_ROW_BYTES: usize = 12;

/// Work whose peak memory grows with a capped input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Work {
    /// The setting that caps the input, as an operator sets it.
    pub setting: &'static str,
    /// Peak memory per byte of input.
    pub peak_factor: f64,
    /// Memory used besides the input and what is built from it.
    pub reserve: u64,
}

/// The regional normalizer: one upload, capped by `FERRY_MAX_INPUT_BYTES`.
pub const NORMALIZE: Work = Work { setting: "FERRY_MAX_INPUT_BYTES", peak_factor: NORMALIZE_PEAK_FACTOR, reserve: RESERVE_BYTES };

/// The global merger: every locale result of a stage, their total capped by `FERRY_MAX_MERGE_BYTES`.
pub const MERGE: Work = Work { setting: "FERRY_MAX_MERGE_BYTES", peak_factor: MERGE_PEAK_FACTOR, reserve: RESERVE_BYTES };

/// The export worker reading a dataset: each object capped by `FERRY_JOB_MAX_OBJECT_BYTES`, and
/// `FERRY_JOB_READ_AHEAD` of them held at once ([`check_read_ahead`]).
pub const EXPORT_READ: Work =
    Work { setting: "FERRY_JOB_MAX_OBJECT_BYTES", peak_factor: DATASET_PEAK_FACTOR, reserve: WORKER_RESERVE_BYTES };

/// The setting of how many dataset objects the export worker reads ahead, each held whole.
pub const READ_AHEAD_SETTING: &str = "FERRY_JOB_READ_AHEAD";

/// A cap that cannot fit in the function's memory. Names both numbers and what would fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{setting} = {cap} bytes does not fit in the function's {memory_mb} MB (AWS_LAMBDA_FUNCTION_MEMORY_SIZE): \
     an input that size peaks near {needed_mb} MB; lower {setting} to at most {max_cap} bytes or give the function \
     at least {needed_mb} MB"
)]
pub struct BudgetError {
    pub setting: &'static str,
    pub cap: u64,
    pub memory_mb: u64,
    pub needed_mb: u64,
    pub max_cap: u64,
}

impl Work {
    /// Peak memory, in bytes, of this work on an input of `input_bytes`.
    pub fn needed_bytes(&self, input_bytes: u64) -> u64 {
        self.reserve.saturating_add((input_bytes as f64 * self.peak_factor).ceil() as u64)
    }

    /// The memory setting, in MB, that holds an input of `cap` bytes.
    fn memory_mb_for(&self, cap: u64) -> u64 {
        self.needed_bytes(cap).div_ceil(MIB)
    }

    /// The largest input that fits in `memory_mb`.
    pub fn max_input(&self, memory_mb: u64) -> u64 {
        (memory_mb.saturating_mul(MIB).saturating_sub(self.reserve) as f64 / self.peak_factor).floor() as u64
    }

    /// Refuses a `cap` whose input would not fit in `memory_mb`. `None` (not running on Lambda, as
    /// locally and in tests): there is no limit to check against.
    pub fn check(&self, cap: u64, memory_mb: Option<u64>) -> Result<(), BudgetError> {
        let Some(memory_mb) = memory_mb else { return Ok(()) };
        if cap <= self.max_input(memory_mb) {
            return Ok(());
        }
        Err(BudgetError { setting: self.setting, cap, memory_mb, needed_mb: self.memory_mb_for(cap), max_cap: self.max_input(memory_mb) })
    }
}

/// Objects read ahead that cannot fit in the function's memory at once. Names both settings, the
/// memory, and what would fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{READ_AHEAD_SETTING} = {read_ahead} objects of up to {setting} = {cap} bytes do not fit in the function's {memory_mb} MB \
     (AWS_LAMBDA_FUNCTION_MEMORY_SIZE): holding them at once peaks near {needed_mb} MB; lower {setting} to at most \
     {max_cap} bytes{}, or give the function at least {needed_mb} MB",
    if *max_read_ahead > 0 { format!(" or {READ_AHEAD_SETTING} to at most {max_read_ahead}") } else { String::new() }
)]
pub struct ReadAheadError {
    pub setting: &'static str,
    pub read_ahead: u64,
    pub cap: u64,
    pub memory_mb: u64,
    pub needed_mb: u64,
    /// The largest object cap that fits with this read-ahead.
    pub max_cap: u64,
    /// The most objects of this cap that fit (0: not even one).
    pub max_read_ahead: u64,
}

/// Refuses a read-ahead of `read_ahead` objects of up to `max_object_bytes` each that `memory_mb`
/// cannot hold at once (`None`: not on Lambda, nothing to check against). Each reader holds its
/// whole object, parsed, until its rows are written, so every object read ahead may be held at once.
pub fn check_read_ahead(read_ahead: u64, max_object_bytes: u64, memory_mb: Option<u64>) -> Result<(), ReadAheadError> {
    let Some(memory_mb) = memory_mb else { return Ok(()) };
    let read_ahead = read_ahead.max(1);
    let work = EXPORT_READ;
    let fits = work.max_input(memory_mb);
    if max_object_bytes.saturating_mul(read_ahead) <= fits {
        return Ok(());
    }
    Err(ReadAheadError {
        setting: work.setting,
        read_ahead,
        cap: max_object_bytes,
        memory_mb,
        needed_mb: work.memory_mb_for(max_object_bytes.saturating_mul(read_ahead)),
        max_cap: fits / read_ahead,
        max_read_ahead: fits.checked_div(max_object_bytes).unwrap_or(u64::MAX),
    })
}

/// How many keys to reserve room for when reading a CSV of `bytes` bytes and `lines` lines.
///
/// The line count alone is the attacker's choice: a body of newlines would reserve a table for rows
/// it does not have, and a table's control bytes are written when it is made. So the count is
/// believed only as far as the bytes could hold realistic rows; a file of shorter rows grows the
/// table as it goes.
pub fn key_capacity(bytes: usize, lines: usize) -> usize {
    lines.min(bytes / ASSUMED_ROW_BYTES + 1)
}

#[cfg(test)]
mod tests {
    use super::{DATASET_PEAK_FACTOR, csv_weight};

    #[test]
    fn a_csv_object_of_narrow_cells_weighs_more_than_its_bytes() {
        // Order rows, about 10 bytes a cell: the bytes themselves.
        assert_eq!(csv_weight(1_050, 100), 1_050);
        // One-digit cells (2 bytes each with their separator): bytes + 16 a cell, over the factor.
        let w = csv_weight(2_000, 1_000);
        assert_eq!(w, ((2_000.0 + 16_000.0) / DATASET_PEAK_FACTOR).ceil() as u64);
        assert!(w > 2_000 * 2);
        assert_eq!(csv_weight(u64::MAX, u64::MAX), u64::MAX, "no overflow");
    }

    use super::*;

    #[test]
    fn a_cap_that_cannot_fit_refuses_to_start_and_names_both_numbers() {
        let cap = 400 * MIB;
        let e = NORMALIZE.check(cap, Some(1024)).unwrap_err();
        assert_eq!((e.cap, e.memory_mb), (cap, 1024));
        let text = e.to_string();
        assert!(text.contains("FERRY_MAX_INPUT_BYTES = 419430400 bytes") && text.contains("1024 MB"), "{text}");
        assert!(e.needed_mb > 1024 && e.max_cap < cap, "{e:?}");
        // What the message proposes does fit.
        assert!(NORMALIZE.check(e.max_cap, Some(1024)).is_ok());
        assert!(NORMALIZE.check(cap, Some(e.needed_mb)).is_ok());
        assert!(NORMALIZE.check(e.max_cap + 1, Some(1024)).is_err());
        // Not on Lambda: nothing to check against.
        assert!(NORMALIZE.check(u64::MAX, None).is_ok());
        assert!(MERGE.check(cap, Some(64)).unwrap_err().to_string().starts_with("FERRY_MAX_MERGE_BYTES = "));
    }

    #[test]
    fn memory_follows_the_cap() {
        for work in [NORMALIZE, MERGE, EXPORT_READ] {
            for cap in [MIB, 100 * MIB, 512 * MIB, 2048 * MIB] {
                let mb = work.memory_mb_for(cap);
                assert!(work.check(cap, Some(mb)).is_ok(), "{work:?} {cap}");
                assert!(work.check(cap, Some(mb - 1)).is_err(), "{work:?} {cap}");
            }
        }
    }

    #[test]
    fn objects_read_ahead_that_cannot_fit_at_once_refuse_to_start() {
        let cap = 512 * MIB;
        // The defaults: four objects of 512 MiB need 128 MB + 4 x 512 MiB x the factor.
        let needed = EXPORT_READ.memory_mb_for(4 * cap);
        assert_eq!(needed, 128 + (4.0 * 512.0 * DATASET_PEAK_FACTOR).ceil() as u64);
        assert!(check_read_ahead(4, cap, Some(needed)).is_ok());
        let e = check_read_ahead(4, cap, Some(2048)).unwrap_err();
        assert_eq!((e.read_ahead, e.cap, e.memory_mb, e.needed_mb), (4, cap, 2048, needed));
        let text = e.to_string();
        assert!(
            text.starts_with("FERRY_JOB_READ_AHEAD = 4 objects of up to FERRY_JOB_MAX_OBJECT_BYTES = 536870912 bytes do not fit in the function's 2048 MB"),
            "{text}"
        );
        assert!(text.contains(&format!("at least {needed} MB")) && text.contains("FERRY_JOB_READ_AHEAD to at most 1"), "{text}");
        // What the message proposes does fit, and a byte more does not.
        assert!(check_read_ahead(4, e.max_cap, Some(2048)).is_ok());
        assert!(check_read_ahead(4, e.max_cap + 1, Some(2048)).is_err());
        assert!(check_read_ahead(e.max_read_ahead, cap, Some(2048)).is_ok());
        assert!(check_read_ahead(e.max_read_ahead + 1, cap, Some(2048)).is_err());
        // Not even one object of the cap fits: only the cap or the memory can change.
        let e = check_read_ahead(1, 4096 * MIB, Some(2048)).unwrap_err();
        assert_eq!(e.max_read_ahead, 0);
        assert!(!e.to_string().contains("FERRY_JOB_READ_AHEAD to at most"), "{e}");
        // A read-ahead of 0 reads one at a time; off Lambda there is nothing to check.
        assert_eq!(check_read_ahead(0, cap, Some(1024)).unwrap_err().read_ahead, 1);
        assert!(check_read_ahead(u64::MAX, u64::MAX, None).is_ok());
    }

    #[test]
    fn key_tables_are_sized_from_the_bytes_not_the_newlines() {
        // 300 M newlines after a header: the count alone would reserve 300 M slots.
        let header = "kseq,score\n".len();
        let bytes = header + 300_000_000;
        assert_eq!(key_capacity(bytes, 300_000_001), bytes / ASSUMED_ROW_BYTES + 1);
        assert!(key_capacity(bytes, 300_000_001) <= 25_000_001);
        // Realistic rows: the line count is exact and is used.
        assert_eq!(key_capacity(20 * 1_000_000, 1_000_001), 1_000_001);
        assert_eq!(key_capacity(0, 1), 1);
    }
}
