//! Validated site and gate identifiers. They become MQTT topic levels, so
//! they must never carry `/`, `+` or `#`.

use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 64 characters")]
    TooLong,
    #[error("may only contain ASCII letters, digits, '-', '_' and '.' (found {0:?})")]
    BadCharacter(char),
}

fn validate(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > 64 {
        return Err(IdError::TooLong);
    }
    if let Some(c) = raw.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(IdError::BadCharacter(c));
    }
    Ok(())
}

macro_rules! topic_safe_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Accepts only identifiers that are safe as one MQTT topic level.
            pub fn try_new(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                validate(&raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

topic_safe_id!(
    /// The site (urban village community or checkpoint group) this box belongs to.
    SiteId
);
topic_safe_id!(
    /// One gate (lane) at a site.
    GateId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_topic_wildcards_and_empties() {
        assert!(GateId::try_new("east-1").is_ok());
        assert_eq!(GateId::try_new(""), Err(IdError::Empty));
        assert_eq!(GateId::try_new("a/b"), Err(IdError::BadCharacter('/')));
        assert_eq!(SiteId::try_new("a+"), Err(IdError::BadCharacter('+')));
        assert_eq!(SiteId::try_new("#"), Err(IdError::BadCharacter('#')));
        assert_eq!(SiteId::try_new("x".repeat(65)), Err(IdError::TooLong));
    }
}
