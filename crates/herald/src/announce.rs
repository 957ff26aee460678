//! Announcement rules (DESIGN §6, seed 003): 1..=280 characters after trimming —
//! characters, not bytes, so 280 emoji are fine — and a type of info, warning or alert.

pub const MAX_CHARACTERS: usize = 280;
pub const RECOMMENDED_LENGTH: usize = 120;
pub const TYPES: [&str; 3] = ["info", "warning", "alert"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("message must be 1 to {MAX_CHARACTERS} characters after trimming, got {0}")]
    Length(usize),
    #[error("type must be one of info, warning, alert; got `{0}`")]
    Type(String),
}

/// The trimmed message and its length in characters.
/// Announcement ids are UUIDs in their hyphenated form (v7, so they sort by time); any
/// other string is refused before the store is asked.
pub fn valid_id(id: &str) -> bool {
    id.len() == 36 && uuid::Uuid::try_parse(id).is_ok()
}

pub fn validate(message: &str, kind: &str) -> Result<(String, usize), Invalid> {
    let trimmed = message.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > MAX_CHARACTERS {
        return Err(Invalid::Length(chars));
    }
    if !TYPES.contains(&kind) {
        return Err(Invalid::Type(kind.to_owned()));
    }
    Ok((trimmed.to_owned(), chars))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hyphenated_uuids() {
        assert!(valid_id(&uuid::Uuid::now_v7().to_string()));
        assert!(!valid_id("42"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"x".repeat(36)));
        assert!(!valid_id(&uuid::Uuid::now_v7().simple().to_string()));
        assert!(!valid_id(&"0".repeat(10_000)));
    }

    #[test]
    fn counts_characters_not_bytes() {
        assert_eq!(validate(&"é".repeat(280), "info").map(|v| v.1), Ok(280));
        assert_eq!(
            validate(&"x".repeat(281), "info"),
            Err(Invalid::Length(281))
        );
        assert_eq!(validate("  hi  ", "alert"), Ok(("hi".to_owned(), 2)));
        assert_eq!(validate("   ", "info"), Err(Invalid::Length(0)));
        assert_eq!(
            validate("hi", "urgent"),
            Err(Invalid::Type("urgent".into()))
        );
    }
}
