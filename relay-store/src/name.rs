//! The naming rule for tenants and targets: `[a-z0-9][a-z0-9-]{0,62}`, case-insensitive.

use std::borrow::Cow;

/// A name that breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid name {0:?}: use 1-63 characters a-z, 0-9 and '-', starting with a letter or digit"
)]
pub struct NameError(pub String);

/// Returns the canonical (lowercase) form of `name`, or why it is not a valid tenant/target name.
pub fn validate_name(name: &str) -> Result<String, NameError> {
    canonical_name(name).map(Cow::into_owned)
}

/// [`validate_name`] without a copy when `name` is already canonical (as names in request paths
/// nearly always are): the request path checks two names per request.
pub fn canonical_name(name: &str) -> Result<Cow<'_, str>, NameError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
    if ok {
        Ok(ascii_lowercase(name))
    } else {
        Err(NameError(name.to_string()))
    }
}

/// `s` in ASCII lowercase, copied only when it has an uppercase letter.
pub fn ascii_lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_canonicalises_valid_names() {
        assert_eq!(validate_name("Demo-1").unwrap(), "demo-1");
        assert!(matches!(
            canonical_name("demo-1"),
            Ok(Cow::Borrowed("demo-1"))
        ));
        assert_eq!(canonical_name("DEMO-1").unwrap(), "demo-1");
        assert_eq!(validate_name("0").unwrap(), "0");
        assert!(validate_name(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn rejects_invalid_names() {
        for bad in [
            "",
            "-a",
            "a_b",
            "a.b",
            "a/b",
            "ä",
            "a b",
            "%2e",
            &"a".repeat(64),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
