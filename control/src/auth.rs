//! Bearer tokens and roles.
//!
//! Only the SHA-256 of a token is stored: a copy of the database does not let anyone call the
//! API. Tokens are 256 random bits, so an unsalted fast hash is enough (there is nothing to
//! brute-force the way there is with passwords).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do; each role may do everything the roles before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every GET.
    Read,
    /// Changes machines, profiles and images.
    Operator,
    /// Manages tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Self::Read),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            _ => Err(format!("unknown role {s:?} (read, operator, admin)")),
        }
    }
}

/// A stored token (without the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Who or what holds it; audit entries name the actor by it.
    pub name: String,
    pub role: Role,
    pub created_at_ms: u64,
    /// After this instant (Unix ms) the token no longer authenticates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// A revoked bootstrap token is kept (by hash) so that starting again with the same
    /// `STAMPEDE_ADMIN_TOKEN` does not bring it back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

impl TokenRecord {
    /// Whether it authenticates at `now_ms`.
    pub fn is_active(&self, now_ms: u64) -> bool {
        !self.revoked && self.expires_at_ms.is_none_or(|at| now_ms < at)
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The shortest token accepted (`STAMPEDE_ADMIN_TOKEN` included): 16 characters of a random
/// alphabet are about 80 bits or more, out of reach of guessing over the network. Generated
/// tokens have 256 bits.
pub const MIN_TOKEN_LEN: usize = 16;

/// Prefix that makes a Stampede token recognizable to secret scanners.
pub const TOKEN_PREFIX: &str = "stp_";

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(String);

/// A new random token.
pub fn generate_token() -> Result<String, RandomError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| RandomError(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(secret)))
}

/// What is stored for a token: hex SHA-256.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = generate_token().expect("random source");
        let b = generate_token().expect("random source");
        assert_ne!(a, b, "two tokens must differ");
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a, "the stored form is not the token");
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Read);
    }
}
