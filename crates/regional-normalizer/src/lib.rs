//! The regional normalizer Lambda: S3 `ObjectCreated` on `data/` -> the locale result under `result/`.
//!
//! [`handler::handle`] is the whole function; `main.rs` only wires it to the runtime.

pub mod handler;

pub use handler::{Normalizer, handle};
