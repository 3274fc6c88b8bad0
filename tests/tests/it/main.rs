//! The integration suite: one test binary with a module per system, so the suite links once. Each
//! module runs the real handlers, binaries and SDK calls against local services on loopback, which
//! the harness (`ferry_testkit`: moto, redis-server) starts once for the whole binary.

mod batch;
mod cargo_lambda;
mod edge;
mod events;
mod jobs;
mod lambda_binaries;
mod notify;
mod votes;
