//! The naming rule for tenants and targets: `[a-z0-9][a-z0-9-]{0,62}`, case-insensitive.

/// A name that breaks the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid name {0:?}: use 1-63 characters a-z, 0-9 and '-', starting with a letter or digit"
)]
pub struct NameError(pub String);

/// Returns the canonical (lowercase) form of `name`, or why it is not a valid tenant/target name.
pub fn validate_name(name: &str) -> Result<String, NameError> {
    let lower = name.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if ok {
        Ok(lower)
    } else {
        Err(NameError(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_canonicalises_valid_names() {
        assert_eq!(validate_name("Demo-1").unwrap(), "demo-1");
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
