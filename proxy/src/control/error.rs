//! Why a call to the control plane failed.

use std::time::Duration;

use http::StatusCode;

/// Why a call to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the control plane at {addr}: {reason}")]
    Connect {
        addr: super::ControlAddr,
        reason: String,
    },
    #[error("TLS with the control plane at {addr} failed: {reason}")]
    Tls {
        addr: super::ControlAddr,
        reason: String,
    },
    #[error("the control plane at {addr} did not answer within {timeout:?}")]
    Timeout {
        addr: super::ControlAddr,
        timeout: Duration,
    },
    #[error("HTTP with the control plane failed: {0}")]
    Http(String),
    #[error("the control plane refused ({status}, {code}): {message}")]
    Refused {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("the control plane sent a response Warden cannot read: {0}")]
    Decode(String),
    #[error("{0}")]
    Local(String),
}
