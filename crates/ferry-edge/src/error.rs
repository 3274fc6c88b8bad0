//! Why a push or a pull failed.

use std::time::Duration;

use ferry_aws::S3Error;
use ferry_core::KeyError;
use ferry_core::ranking::RankingError;
use redis::aio::MultiplexedConnection;

/// A failed push or pull. Messages name the sorted set, the object or the member at fault, never the
/// Redis URL (it may carry a password).
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The data cannot be carried: a member of the sorted set, or the global result, is at fault.
    #[error(transparent)]
    BadData(#[from] RankingError),
    /// The locale, stage or event number does not make an upload key.
    #[error(transparent)]
    BadKey(#[from] KeyError),
    /// The sorted set to push holds no members (or does not exist): uploading it would empty the
    /// region's result.
    #[error("sorted set {key} is empty or does not exist; nothing was uploaded")]
    EmptySet { key: String },
    /// There is no global result to pull yet.
    #[error("s3://{bucket}/{key} does not exist")]
    MissingGlobal { bucket: String, key: String },
    #[error("connecting to Redis: {0}")]
    Connect(#[source] redis::RedisError),
    #[error("Redis {key}: {op} failed: {source}")]
    Redis { key: String, op: &'static str, source: redis::RedisError },
    /// The temporary key did not end up holding the global result (someone else wrote to it).
    #[error("Redis {key}: holds {found} members after loading {expected}; the live ranking was not replaced")]
    LoadMismatch { key: String, expected: usize, found: usize },
    #[error(transparent)]
    S3(#[from] S3Error),
}

impl EdgeError {
    /// A short machine-readable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            EdgeError::BadData(_) => "BadData",
            EdgeError::BadKey(_) => "BadKey",
            EdgeError::EmptySet { .. } => "EmptySet",
            EdgeError::MissingGlobal { .. } => "MissingGlobal",
            EdgeError::Connect(_) => "RedisConnect",
            EdgeError::Redis { .. } => "RedisError",
            EdgeError::LoadMismatch { .. } => "LoadMismatch",
            EdgeError::S3(_) => "S3Error",
        }
    }

    /// True when the input is at fault (a member, the global result), not the machine.
    pub fn is_bad_data(&self) -> bool {
        matches!(self, EdgeError::BadData(_) | EdgeError::BadKey(_))
    }

    /// True when there is nothing to carry yet (an empty set, no global result).
    pub fn is_missing_input(&self) -> bool {
        matches!(self, EdgeError::EmptySet { .. } | EdgeError::MissingGlobal { .. })
    }

    pub(crate) fn redis(key: &str, op: &'static str) -> impl FnOnce(redis::RedisError) -> EdgeError {
        let key = key.to_owned();
        move |source| EdgeError::Redis { key, op, source }
    }
}

/// Connects to Redis (`redis://[:password@]host:port[/db]`), failing within seconds when it is down
/// rather than hanging a cron slot.
pub async fn connect(url: &str) -> Result<MultiplexedConnection, EdgeError> {
    let client = redis::Client::open(url).map_err(EdgeError::Connect)?;
    let config =
        redis::AsyncConnectionConfig::new().set_connection_timeout(Duration::from_secs(10)).set_response_timeout(Duration::from_secs(60));
    client.get_multiplexed_async_connection_with_config(&config).await.map_err(EdgeError::Connect)
}
