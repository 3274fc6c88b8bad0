//! An error as Lambda reports it: `errorType` is the error's kind name (`BadKey`, `StoreError`),
//! not Rust's type name, so that logs and metrics group failures by what went wrong.

use std::fmt::Display;

use lambda_runtime::Diagnostic;

/// `error` with `kind` as its type. For a crate's `impl From<TheError> for Diagnostic`.
pub fn of(kind: &str, error: &dyn Display) -> Diagnostic {
    Diagnostic { error_type: kind.to_owned(), error_message: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_names_the_type_and_display_the_message() {
        let d = of("BadKey", &"key data/x: not an upload");
        assert_eq!((d.error_type.as_str(), d.error_message.as_str()), ("BadKey", "key data/x: not an upload"));
    }
}
