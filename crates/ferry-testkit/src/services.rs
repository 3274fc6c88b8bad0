//! Local services on loopback, started once per process and stopped with it: moto, and the
//! workspace's binaries.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("crates/ferry-testkit is two levels down").to_path_buf()
}

/// The path of a workspace binary. `make test` builds them first (`cargo build --workspace --bins`) and
/// names the directory in `FERRY_BIN_DIR`; otherwise they are built here.
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_BIN_DIR") {
        let path = PathBuf::from(dir).join(name);
        assert!(path.exists(), "{} does not exist: FERRY_BIN_DIR must name a built target directory", path.display());
        return path;
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--workspace", "--bins"])
        .current_dir(workspace())
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building the workspace binaries failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace().join("target"));
    target.join("debug").join(name)
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, what: &str, timeout: Duration) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(start.elapsed() < timeout, "{what} did not start listening on {addr} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server process that ends when the test process does (a shell watches the test process and
/// kills the server once it is gone, since statics are never dropped).
#[derive(Debug)]
pub struct Service {
    pub port: u16,
    _child: Child,
}

/// Starts `program args...` under a watchdog tied to this process, and waits for `port`.
pub fn start_service(name: &str, program: &Path, args: &[String], port: u16) -> Service {
    assert!(program.exists() || !program.is_absolute(), "{name}: {} not found; run `make test`, which installs it", program.display());
    let log = std::env::temp_dir().join(format!("ferry-{name}-{port}.log"));
    let script = r#"prog="$1"; log="$2"; shift 2
"$prog" "$@" >"$log" 2>&1 & child=$!
watch=$PPID
trap 'kill $child 2>/dev/null' EXIT INT TERM
while kill -0 "$watch" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done"#;
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("watchdog")
        .arg(program)
        .arg(&log)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    wait_for_port(port, name, Duration::from_secs(60));
    Service { port, _child: child }
}

/// moto in server mode, one per test process.
pub fn moto() -> &'static Service {
    static MOTO: OnceLock<Service> = OnceLock::new();
    MOTO.get_or_init(|| {
        let program = std::env::var_os("FERRY_MOTO_SERVER").map(PathBuf::from).unwrap_or_else(|| workspace().join(".venv/bin/moto_server"));
        let port = free_port();
        start_service("moto", &program, &["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()], port)
    })
}

/// `http://127.0.0.1:{port}` of [`moto`].
pub fn moto_endpoint() -> String {
    format!("http://127.0.0.1:{}", moto().port)
}

/// SDK configuration for the local moto server, with fixed test credentials.
pub fn sdk_config() -> SdkConfig {
    let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "ferry-testkit");
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(moto_endpoint())
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(creds))
        .build()
}

/// A name unique within this test process and across runs against one server, lowercase and
/// valid as a bucket, queue or table name.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() % 1_000_000_000);
    format!("{prefix}-{}-{t}-{n}", std::process::id())
}
