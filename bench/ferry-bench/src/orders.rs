//! The seeded order rows the export benchmarks share: staged as JSON arrays for the xlsx writer
//! (`gen-rows`) and as a CSV dataset object for the worker's reads (`gen-dataset`).

use std::fmt::Write;

use crate::gen_votes::Rng;

pub const COLUMNS: [&str; 10] = ["id", "order_no", "customer", "email", "sku", "qty", "unit_price", "total", "status", "created_at"];
const STATUSES: [&str; 5] = ["placed", "paid", "packed", "shipped", "returned"];
const NAMES: [&str; 8] = ["Kim Minji", "Sato Yui", "Chen Wei", "Alex Moore", "Park Jisoo", "Lin Mei", "Ito Ren", "Sam Lee"];

/// One order, drawn from `rng` in a fixed order (so a seed always gives the same rows).
pub struct Order {
    id: u64,
    name: &'static str,
    user: usize,
    sku: usize,
    qty: u64,
    cents: u64,
    status: &'static str,
    secs: u64,
}

impl Order {
    pub fn random(rng: &mut Rng, id: u64) -> Order {
        let name = NAMES[rng.below(NAMES.len())];
        let qty = 1 + rng.below(9) as u64;
        let cents = 100 + rng.below(99_900) as u64;
        let status = STATUSES[rng.below(STATUSES.len())];
        let secs = 1_767_225_600 + rng.below(31_536_000) as u64;
        let user = rng.below(200_000);
        let sku = rng.below(50_000);
        Order { id, name, user, sku, qty, cents, status, secs }
    }

    /// The row as a JSON array line, as the worker stages rows for xlsx.
    pub fn json_line(&self, out: &mut String) {
        let f = self.fields();
        let _ = writeln!(out, r#"[{},"{}","{}","{}","{}",{},{},{},"{}","{}"]"#, f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]);
    }

    /// The row as a CSV line (no field needs quoting).
    pub fn csv_line(&self, out: &mut String) {
        let _ = writeln!(out, "{}", self.fields().join(","));
    }

    fn fields(&self) -> [String; 10] {
        let (day, rem) = (self.secs / 86_400, self.secs % 86_400);
        let total = self.cents * self.qty;
        [
            self.id.to_string(),
            format!("ORD-{:08}", self.id),
            self.name.to_owned(),
            format!("user{}@example.com", self.user),
            format!("SKU-{:05}", self.sku),
            self.qty.to_string(),
            format!("{}.{:02}", self.cents / 100, self.cents % 100),
            format!("{}.{:02}", total / 100, total % 100),
            self.status.to_owned(),
            format!("day {day} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
        ]
    }
}
