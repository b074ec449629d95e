//! Where a redirected connection was going: the destination it had before
//! `warden init`'s REDIRECT rewrote it (`SO_ORIGINAL_DST`, or its IPv6
//! twin), read from the accepted socket. A connection that was not
//! redirected reports its own local address: the caller treats that as a
//! loop (or a client that connected to the sidecar's port directly).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use rustix::net::sockopt::{ip_original_dst, ipv6_original_dst};

/// The original destination of an accepted connection whose local
/// address is `local` (its family picks the option: an IPv4 connection
/// accepted on a dual-stack socket has a v4-mapped local address).
pub fn original_dst<S: AsFd>(socket: S, local: SocketAddr) -> io::Result<SocketAddr> {
    match local.ip().to_canonical() {
        IpAddr::V4(_) => ip_original_dst(socket)
            .map(SocketAddr::V4)
            .map_err(io::Error::from),
        IpAddr::V6(_) => ipv6_original_dst(socket)
            .map(SocketAddr::V6)
            .map_err(io::Error::from),
    }
}

/// What a transparent listener does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirected {
    /// Redirected here, on its way to this destination.
    To(SocketAddr),
    /// Not redirected (its destination is the listener itself): serving it
    /// would loop back into the sidecar.
    Loop,
}

/// Classifies an accepted connection by its original destination.
pub fn redirected<S: AsFd>(socket: S, local: SocketAddr) -> io::Result<Redirected> {
    let original = original_dst(socket, local)?;
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    Ok(if canonical(original) == canonical(local) {
        Redirected::Loop
    } else {
        Redirected::To(original)
    })
}
