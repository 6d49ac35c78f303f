//! Identifier syntax shared by every entity (docs/api.md).

/// The longest id accepted, in bytes (all allowed characters are ASCII).
pub const ID_LENGTH_MAX: usize = 128;

/// Ids are 1..=128 characters from `[A-Za-z0-9_.:-]`.
///
/// The set is small on purpose: ids appear in URLs, log lines, Stripe
/// metadata and file names, and none of these need escaping for it.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_LENGTH_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_alphabet_and_nothing_else() {
        assert!(is_valid_id("sess_01.a:b-C"));
        assert!(is_valid_id(&"a".repeat(128)));
        assert!(!is_valid_id(&"a".repeat(129)));
        assert!(!is_valid_id(""));
        for bad in ["a b", "a/b", "é", "a'b", "a;b", "a\0b", "../x"] {
            assert!(!is_valid_id(bad), "{bad:?} must be rejected");
        }
    }
}
