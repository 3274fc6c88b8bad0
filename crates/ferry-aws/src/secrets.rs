//! Secrets read once at start-up: SSM Parameter Store (`SecureString`, decrypted).
//!
//! [`read_parameter`] returns a [`Secret`], whose `Debug` and `Display` never show the value, so
//! a settings struct holding one can be logged.

use std::fmt;

use aws_config::SdkConfig;
use aws_sdk_ssm::types::ParameterType;

pub use aws_sdk_ssm::Client as SsmClient;

/// An SSM client.
pub fn ssm(conf: &SdkConfig) -> SsmClient {
    SsmClient::new(conf)
}

/// A secret value. Shown as `<redacted>`; [`Secret::expose`] hands out the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret that could not be read. Names the parameter, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The call failed; the [`crate::Error`] names the parameter.
    #[error(transparent)]
    Ssm(#[from] crate::Error),
    #[error("SSM parameter {name} is empty")]
    Empty { name: String },
}

/// Reads the parameter `name`, decrypted. An empty value is an error: a header without a secret
/// would be sent as if it were one.
pub async fn read_parameter(ssm: &SsmClient, name: &str) -> Result<Secret, SecretError> {
    let out = ssm
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| crate::Error::sdk("SSM", "GetParameter", format!("parameter {name}"), e))?;
    match out.parameter().and_then(|p| p.value()) {
        Some(v) if !v.is_empty() => Ok(Secret::new(v)),
        _ => Err(SecretError::Empty { name: name.to_owned() }),
    }
}

/// Stores `value` as a `SecureString` parameter, replacing any. For local runs and tests; deployed
/// parameters are created by an operator, outside the stack.
pub async fn put_secure_parameter(ssm: &SsmClient, name: &str, value: &str) -> Result<(), SecretError> {
    ssm.put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .map_err(|e| crate::Error::sdk("SSM", "PutParameter", format!("parameter {name}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_their_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(<redacted>) <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }
}
