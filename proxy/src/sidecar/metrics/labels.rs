//! The label values: direction, handshake outcome and why a handshake
//! failed, all from bounded sets.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// What a transparent listener did with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transparent {
    /// Inbound: redirected by `warden init`, to the app at its port.
    Redirected,
    /// Inbound: not redirected, to `inbound.app`.
    Direct,
    /// Not redirected, with nowhere to go but the sidecar itself: closed.
    Loop,
    /// Outbound: a mesh destination, carried as HTTP over mTLS.
    MeshedHttp,
    /// Outbound: a mesh destination, carried as opaque TCP over mTLS.
    MeshedTcp,
    /// Outbound: outside the mesh, connected in plaintext as the app asked.
    Passthrough,
    /// Outbound: outside the mesh with `outbound.unknown = "deny"`, or a
    /// port its endpoints do not list of a mesh address: closed.
    Denied,
    /// Inbound: redirected, but neither HTTP nor opaque TCP allowed on its
    /// port: closed.
    Refused,
}

impl Transparent {
    pub const ALL: [Transparent; 8] = [
        Transparent::Redirected,
        Transparent::Direct,
        Transparent::Loop,
        Transparent::MeshedHttp,
        Transparent::MeshedTcp,
        Transparent::Passthrough,
        Transparent::Denied,
        Transparent::Refused,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Transparent::Redirected => "redirected",
            Transparent::Direct => "direct",
            Transparent::Loop => "loop",
            Transparent::MeshedHttp => "meshed_http",
            Transparent::MeshedTcp => "meshed_tcp",
            Transparent::Passthrough => "passthrough",
            Transparent::Denied => "denied",
            Transparent::Refused => "refused",
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// Outcome label of a TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Handshake {
    Ok,
    /// Failed, with a reason from [`handshake_failure`].
    Failed(&'static str),
    Timeout,
    /// Permissive mode: a plaintext connection, no handshake at all.
    Plaintext,
}

impl Handshake {
    pub(super) fn labels(self) -> (&'static str, &'static str) {
        match self {
            Handshake::Ok => ("ok", ""),
            Handshake::Failed(reason) => ("failed", reason),
            Handshake::Timeout => ("timeout", "timeout"),
            Handshake::Plaintext => ("plaintext", ""),
        }
    }
}

/// Why a handshake failed, as a bounded metric label.
pub fn handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::InvalidData => "protocol",
            _ => "connection",
        };
    };
    match tls {
        Error::NoCertificatesPresented => "no_certificate",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "expired",
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "untrusted",
        Error::InvalidCertificate(CertificateError::Other(other))
            if matches!(
                other.0.downcast_ref::<crate::identity::SvidError>(),
                Some(crate::identity::SvidError::Revoked(_))
            ) =>
        {
            "revoked"
        }
        Error::InvalidCertificate(_) => "invalid_certificate",
        Error::AlertReceived(_) => "alert_received",
        Error::NoApplicationProtocol => "alpn",
        Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. }
        | Error::InvalidMessage(_)
        | Error::PeerIncompatible(_)
        | Error::PeerMisbehaved(_) => "protocol",
        _ => "other",
    }
}
