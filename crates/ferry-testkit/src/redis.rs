//! A real `redis-server` (Debian's package), one per test process, on a free loopback port, with
//! persistence off so nothing is written to disk.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::{Service, free_port, start_service};

/// The redis-server of this test process. `FERRY_REDIS_SERVER` names another binary.
pub fn redis() -> &'static Service {
    static REDIS: OnceLock<Service> = OnceLock::new();
    REDIS.get_or_init(|| {
        let program = std::env::var_os("FERRY_REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from);
        let port = free_port();
        let args: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        start_service("redis", &program, &args, port)
    })
}

/// `redis://127.0.0.1:{port}` of [`redis`].
pub fn redis_url() -> String {
    format!("redis://127.0.0.1:{}", redis().port)
}
