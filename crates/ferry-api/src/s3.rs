//! An object key as S3 event notifications carry it.

use std::borrow::Cow;

/// Decodes an object key as S3 puts it into event notifications (form-url-encoded: `+` is a space).
pub fn decode_event_key(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['+', '%']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    match percent_encoding::percent_decode_str(&spaced).decode_utf8() {
        Ok(s) => Cow::Owned(s.into_owned()),
        Err(_) => Cow::Owned(spaced),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_are_form_decoded() {
        assert_eq!(decode_event_key("data/7/jp-prod-202611221530.csv"), "data/7/jp-prod-202611221530.csv");
        assert_eq!(decode_event_key("%2Fdata%2F7%2Fjp-prod-202611221530.csv"), "/data/7/jp-prod-202611221530.csv");
        assert_eq!(decode_event_key("data/7/my+file.csv"), "data/7/my file.csv");
        assert_eq!(decode_event_key("a%2Bb"), "a+b");
    }
}
