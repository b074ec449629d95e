//! Every reason the control plane refuses or fails a request, in one enum:
//! its stable snake_case code (the API's `error`, the audit trail's
//! `reason`, the refusal metric's label) and its HTTP status, both
//! exhaustive matches, so a new reason cannot be added without deciding
//! what a client sees.

use http::StatusCode;

/// Why a CSR was refused (400, `csr_<what>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CsrReason {
    Malformed,
    BadSignature,
    WeakKey,
    UnsupportedKey,
    RequestsCa,
    MultipleUriSans,
    UnsupportedSan,
    InvalidSpiffeId,
    IdentityMismatch,
    MissingSpiffeId,
    ForeignTrustDomain,
    RootPathId,
    TtlTooLong,
    TtlTooShort,
}

/// Why a service-account token was refused (`--k8s-*` attestation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttestReason {
    /// Not a JWT, or not one that decodes.
    Malformed,
    /// `none`, HMAC, or an algorithm the key does not have.
    BadAlgorithm,
    /// No key with the token's `kid` in the issuer's JWKS.
    UnknownKey,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    Expired,
    NotYetValid,
    /// Lives longer than `--k8s-max-token-ttl`.
    TooLong,
    /// The `kubernetes.io` or `sub` claims are missing or inconsistent.
    BadClaims,
    /// The namespace or service account is not in `--k8s-allow`.
    NotAllowed,
    /// This control plane does not attest Kubernetes tokens.
    Disabled,
}

impl AttestReason {
    pub const ALL: [AttestReason; 12] = [
        AttestReason::Malformed,
        AttestReason::BadAlgorithm,
        AttestReason::UnknownKey,
        AttestReason::BadSignature,
        AttestReason::WrongIssuer,
        AttestReason::WrongAudience,
        AttestReason::Expired,
        AttestReason::NotYetValid,
        AttestReason::TooLong,
        AttestReason::BadClaims,
        AttestReason::NotAllowed,
        AttestReason::Disabled,
    ];

    pub fn code(self) -> &'static str {
        match self {
            AttestReason::Malformed => "token_malformed",
            AttestReason::BadAlgorithm => "token_algorithm",
            AttestReason::UnknownKey => "token_unknown_key",
            AttestReason::BadSignature => "token_signature",
            AttestReason::WrongIssuer => "token_issuer",
            AttestReason::WrongAudience => "token_audience",
            AttestReason::Expired => "token_expired_jwt",
            AttestReason::NotYetValid => "token_not_yet_valid",
            AttestReason::TooLong => "token_lifetime",
            AttestReason::BadClaims => "token_claims",
            AttestReason::NotAllowed => "attestation_not_allowed",
            AttestReason::Disabled => "attestation_disabled",
        }
    }
}

/// Why a request was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // The request is malformed: 400.
    MalformedJson,
    BadBody,
    BadInstance,
    BadLabel,
    BadReason,
    BadQuery,
    InvalidVersion,
    ReasonRequired,
    BadGrace,
    BadTtl,
    InvalidPolicy,
    InvalidSpiffeId,
    ForeignTrustDomain,
    ReservedId,
    BadEndpoint,
    BadAudience,
    BadUsage,
    Csr(CsrReason),
    // A service-account token refused: 401, or 403 for NotAllowed and Disabled.
    Attest(AttestReason),
    // No or bad credentials: 401.
    MtlsRequired,
    AdminCredentialsRequired,
    BadAdminCredentials,
    // Authenticated, not allowed: 403.
    UnknownToken,
    TokenReused,
    TokenExpired,
    IdentityRevoked,
    SvidRevoked,
    UnknownSvid,
    IdentityMismatch,
    EndpointNotSource,
    UsageNotOwn,
    // 404.
    NotFound,
    UnknownIdentity,
    UnknownSerial,
    UnknownVersion,
    // 405, 409, 413, 415.
    MethodNotAllowed,
    AlreadyRevoked,
    RotationRefused,
    EndpointConflict,
    BodyTooLarge,
    UnsupportedMediaType,
    // Our fault: 500.
    Internal,
    Schema,
    // Try again later: 503.
    CaExpired,
    Database,
    JwtUnavailable,
    // In the audit trail only, never an API answer: a TLS handshake
    // refused for its client certificate (401), and the summary row of
    // refusals not audited one by one (429).
    BadClientCertificate,
    RateLimited,
    // Local operations (backup, restore), never an API answer.
    FileExists,
    FileNotFound,
    Corrupt,
    NotABackup,
}

impl CsrReason {
    pub const ALL: [CsrReason; 14] = [
        CsrReason::Malformed,
        CsrReason::BadSignature,
        CsrReason::WeakKey,
        CsrReason::UnsupportedKey,
        CsrReason::RequestsCa,
        CsrReason::MultipleUriSans,
        CsrReason::UnsupportedSan,
        CsrReason::InvalidSpiffeId,
        CsrReason::IdentityMismatch,
        CsrReason::MissingSpiffeId,
        CsrReason::ForeignTrustDomain,
        CsrReason::RootPathId,
        CsrReason::TtlTooLong,
        CsrReason::TtlTooShort,
    ];

    pub fn code(self) -> &'static str {
        match self {
            CsrReason::Malformed => "csr_malformed",
            CsrReason::BadSignature => "csr_bad_signature",
            CsrReason::WeakKey => "csr_weak_key",
            CsrReason::UnsupportedKey => "csr_unsupported_key",
            CsrReason::RequestsCa => "csr_requests_ca",
            CsrReason::MultipleUriSans => "csr_multiple_uri_sans",
            CsrReason::UnsupportedSan => "csr_unsupported_san",
            CsrReason::InvalidSpiffeId => "csr_invalid_spiffe_id",
            CsrReason::IdentityMismatch => "csr_identity_mismatch",
            CsrReason::MissingSpiffeId => "csr_missing_spiffe_id",
            CsrReason::ForeignTrustDomain => "csr_foreign_trust_domain",
            CsrReason::RootPathId => "csr_root_path_id",
            CsrReason::TtlTooLong => "csr_ttl_too_long",
            CsrReason::TtlTooShort => "csr_ttl_too_short",
        }
    }
}

impl Reason {
    /// Every reason without data, then every CSR reason (for tests and docs).
    pub fn all() -> Vec<Reason> {
        let mut all = vec![
            Reason::MalformedJson,
            Reason::BadBody,
            Reason::BadInstance,
            Reason::BadLabel,
            Reason::BadReason,
            Reason::BadQuery,
            Reason::InvalidVersion,
            Reason::ReasonRequired,
            Reason::BadGrace,
            Reason::BadTtl,
            Reason::InvalidPolicy,
            Reason::InvalidSpiffeId,
            Reason::ForeignTrustDomain,
            Reason::ReservedId,
            Reason::BadEndpoint,
            Reason::BadAudience,
            Reason::BadUsage,
            Reason::MtlsRequired,
            Reason::AdminCredentialsRequired,
            Reason::BadAdminCredentials,
            Reason::UnknownToken,
            Reason::TokenReused,
            Reason::TokenExpired,
            Reason::IdentityRevoked,
            Reason::SvidRevoked,
            Reason::UnknownSvid,
            Reason::IdentityMismatch,
            Reason::EndpointNotSource,
            Reason::UsageNotOwn,
            Reason::NotFound,
            Reason::UnknownIdentity,
            Reason::UnknownSerial,
            Reason::UnknownVersion,
            Reason::MethodNotAllowed,
            Reason::AlreadyRevoked,
            Reason::RotationRefused,
            Reason::EndpointConflict,
            Reason::BodyTooLarge,
            Reason::UnsupportedMediaType,
            Reason::Internal,
            Reason::Schema,
            Reason::CaExpired,
            Reason::Database,
            Reason::JwtUnavailable,
            Reason::BadClientCertificate,
            Reason::RateLimited,
            Reason::FileExists,
            Reason::FileNotFound,
            Reason::Corrupt,
            Reason::NotABackup,
        ];
        all.extend(CsrReason::ALL.map(Reason::Csr));
        all.extend(AttestReason::ALL.map(Reason::Attest));
        all
    }

    /// The stable code on the wire and in the audit trail.
    pub fn code(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::BadBody => "bad_body",
            Reason::BadInstance => "bad_instance",
            Reason::BadLabel => "bad_label",
            Reason::BadReason => "bad_reason",
            Reason::BadQuery => "bad_query",
            Reason::InvalidVersion => "invalid_version",
            Reason::ReasonRequired => "reason_required",
            Reason::BadGrace => "bad_grace",
            Reason::BadTtl => "bad_ttl",
            Reason::InvalidPolicy => "invalid_policy",
            Reason::InvalidSpiffeId => "invalid_spiffe_id",
            Reason::ForeignTrustDomain => "foreign_trust_domain",
            Reason::ReservedId => "reserved_id",
            Reason::Csr(csr) => csr.code(),
            Reason::Attest(attest) => attest.code(),
            Reason::MtlsRequired => "mtls_required",
            Reason::AdminCredentialsRequired => "admin_credentials_required",
            Reason::BadAdminCredentials => "bad_admin_credentials",
            Reason::UnknownToken => "unknown_token",
            Reason::TokenReused => "token_reused",
            Reason::TokenExpired => "token_expired",
            Reason::IdentityRevoked => "identity_revoked",
            Reason::SvidRevoked => "svid_revoked",
            Reason::UnknownSvid => "unknown_svid",
            Reason::IdentityMismatch => "identity_mismatch",
            Reason::EndpointNotSource => "endpoint_not_source",
            Reason::NotFound => "not_found",
            Reason::UnknownIdentity => "unknown_identity",
            Reason::UnknownSerial => "unknown_serial",
            Reason::UnknownVersion => "unknown_version",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::AlreadyRevoked => "already_revoked",
            Reason::RotationRefused => "rotation_refused",
            Reason::EndpointConflict => "endpoint_conflict",
            Reason::BadEndpoint => "bad_endpoint",
            Reason::BadAudience => "bad_audience",
            Reason::BadUsage => "bad_usage",
            Reason::UsageNotOwn => "usage_not_own",
            Reason::JwtUnavailable => "jwt_unavailable",
            Reason::BodyTooLarge => "body_too_large",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::Internal => "internal",
            Reason::Schema => "schema",
            Reason::CaExpired => "ca_expired",
            Reason::Database => "database",
            Reason::BadClientCertificate => "bad_client_certificate",
            Reason::RateLimited => "rate_limited",
            Reason::FileExists => "exists",
            Reason::FileNotFound => "file_not_found",
            Reason::Corrupt => "corrupt",
            Reason::NotABackup => "not_a_backup",
        }
    }

    /// The HTTP status a client gets.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::MalformedJson
            | Reason::BadBody
            | Reason::BadInstance
            | Reason::BadLabel
            | Reason::BadReason
            | Reason::BadQuery
            | Reason::InvalidVersion
            | Reason::ReasonRequired
            | Reason::BadGrace
            | Reason::BadTtl
            | Reason::InvalidPolicy
            | Reason::InvalidSpiffeId
            | Reason::ForeignTrustDomain
            | Reason::ReservedId
            | Reason::BadEndpoint
            | Reason::BadAudience
            | Reason::BadUsage
            | Reason::Csr(_)
            | Reason::Corrupt
            | Reason::NotABackup => StatusCode::BAD_REQUEST,
            Reason::Attest(AttestReason::NotAllowed | AttestReason::Disabled) => {
                StatusCode::FORBIDDEN
            }
            Reason::Attest(_)
            | Reason::MtlsRequired
            | Reason::AdminCredentialsRequired
            | Reason::BadAdminCredentials
            | Reason::BadClientCertificate => StatusCode::UNAUTHORIZED,
            Reason::UnknownToken
            | Reason::TokenReused
            | Reason::TokenExpired
            | Reason::IdentityRevoked
            | Reason::SvidRevoked
            | Reason::UnknownSvid
            | Reason::IdentityMismatch
            | Reason::EndpointNotSource
            | Reason::UsageNotOwn => StatusCode::FORBIDDEN,
            Reason::NotFound
            | Reason::UnknownIdentity
            | Reason::UnknownSerial
            | Reason::UnknownVersion
            | Reason::FileNotFound => StatusCode::NOT_FOUND,
            Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reason::AlreadyRevoked
            | Reason::RotationRefused
            | Reason::EndpointConflict
            | Reason::FileExists => StatusCode::CONFLICT,
            Reason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reason::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::Internal | Reason::Schema => StatusCode::INTERNAL_SERVER_ERROR,
            Reason::CaExpired | Reason::Database | Reason::JwtUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_unique_snake_case_code_and_a_refusal_status() {
        let all = Reason::all();
        let codes: std::collections::BTreeSet<_> = all.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), all.len(), "two reasons share a code");
        for r in &all {
            let code = r.code();
            assert!(
                !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code:?}"
            );
            let status = r.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{r:?}: {status}"
            );
        }
        // The ones a client must not retry as if the server were at fault,
        // and the ones it may.
        assert_eq!(Reason::Internal.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(Reason::CaExpired.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Reason::Database.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            Reason::Csr(CsrReason::IdentityMismatch).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
