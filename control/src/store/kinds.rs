//! The closed sets of values the inventory uses: an identity's status and
//! an SVID's kind. Each is written (API payloads, the `kind` column,
//! metric labels, the list filter) as the lowercase word it always was.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// An identity becomes `stale` once it has gone unrenewed for this many
/// lifetimes past its last SVID's expiry: its workload is gone, and whoever
/// owns it should clean it up.
pub const STALE_LIFETIMES: i64 = 3;

/// Where an identity stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityStatus {
    /// A token was made, nothing joined yet.
    Pending,
    Active,
    Expired,
    /// Expired [`STALE_LIFETIMES`] lifetimes ago.
    Stale,
    Revoked,
}

/// A word that names no [`IdentityStatus`] or [`SvidKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of {1}")]
pub struct UnknownWord(pub String, pub &'static str);

impl IdentityStatus {
    pub const ALL: [IdentityStatus; 5] = [
        IdentityStatus::Pending,
        IdentityStatus::Active,
        IdentityStatus::Expired,
        IdentityStatus::Stale,
        IdentityStatus::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IdentityStatus::Pending => "pending",
            IdentityStatus::Active => "active",
            IdentityStatus::Expired => "expired",
            IdentityStatus::Stale => "stale",
            IdentityStatus::Revoked => "revoked",
        }
    }

    /// The status at `now` of an identity revoked or not, whose last SVID
    /// (if any) expires at `expires_at` after a lifetime of `ttl` seconds.
    pub fn at(now: i64, revoked: bool, expires_at: Option<i64>, ttl: Option<i64>) -> Self {
        if revoked {
            return IdentityStatus::Revoked;
        }
        match (expires_at, ttl) {
            (None, _) => IdentityStatus::Pending,
            (Some(exp), _) if exp > now => IdentityStatus::Active,
            (Some(exp), Some(ttl)) if now - exp > STALE_LIFETIMES * ttl.max(1) => {
                IdentityStatus::Stale
            }
            _ => IdentityStatus::Expired,
        }
    }
}

/// How an SVID was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SvidKind {
    /// The first SVID of an instance, for a join token.
    Join,
    /// For the holder of a current SVID.
    Renew,
    /// The first SVID of a pod, for its Kubernetes service-account token.
    Attest,
}

impl SvidKind {
    pub const ALL: [SvidKind; 3] = [SvidKind::Join, SvidKind::Renew, SvidKind::Attest];

    pub fn as_str(self) -> &'static str {
        match self {
            SvidKind::Join => "join",
            SvidKind::Renew => "renew",
            SvidKind::Attest => "attest",
        }
    }
}

/// Both enums print, parse and compare with plain strings as their word.
macro_rules! words {
    ($($ty:ident: $list:literal),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownWord;

            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownWord(s.to_owned(), $list))
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    )*};
}

words!(
    IdentityStatus: "pending, active, expired, stale, revoked",
    SvidKind: "join, renew, attest"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_serialize_as_before() {
        for s in IdentityStatus::ALL {
            assert_eq!(s.as_str().parse::<IdentityStatus>(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).expect("json"),
                serde_json::json!(s.as_str())
            );
        }
        for k in SvidKind::ALL {
            assert_eq!(k.as_str().parse::<SvidKind>(), Ok(k));
            assert_eq!(
                serde_json::to_value(k).expect("json"),
                serde_json::json!(k.as_str())
            );
        }
        assert!("Active".parse::<IdentityStatus>().is_err());
    }
}
