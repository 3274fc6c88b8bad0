//! The global merger Lambda: S3 `ObjectCreated` on `result/` -> the global result under `global/`.
//!
//! [`handler::handle`] is the whole function; `main.rs` only wires it to the runtime.

pub mod handler;

pub use handler::{Merger, handle};
