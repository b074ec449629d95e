//! Where the control plane is reached: an IP address and port, or a DNS
//! name and port (in a cluster, its Service's name), resolved at each
//! connection so a new Service address is picked up without a restart.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// `host:port`: an IPv4 address, a bracketed IPv6 address, or a DNS name
/// (letters, digits, `-` and `.`, labels of 1 to 63 bytes, 253 in all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlAddr {
    host: Host,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl ControlAddr {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address when the host is an IP address (no lookup needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// Connects over TCP, looking the name up first when it is one (every
    /// address the lookup returns is tried in turn).
    pub async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        match &self.host {
            Host::Ip(ip) => tokio::net::TcpStream::connect(SocketAddr::new(*ip, self.port)).await,
            Host::Name(name) => tokio::net::TcpStream::connect((name.as_str(), self.port)).await,
        }
    }
}

impl From<SocketAddr> for ControlAddr {
    fn from(addr: SocketAddr) -> Self {
        ControlAddr {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(ip) => SocketAddr::new(*ip, self.port).fmt(f),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl FromStr for ControlAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?}: the port must be 1 to 65535"))?;
        if !is_dns_name(host) {
            return Err(format!(
                "{text:?}: {host:?} is neither an IP address (IPv6 in brackets) nor a DNS name"
            ));
        }
        Ok(ControlAddr {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        })
    }
}

impl<'de> serde::Deserialize<'de> for ControlAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        // All digits and dots is a malformed IPv4 address, not a name.
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        let ip: ControlAddr = "127.0.0.1:7443".parse().expect("ip");
        assert_eq!(
            ip.socket_addr(),
            Some("127.0.0.1:7443".parse().expect("addr"))
        );
        let v6: ControlAddr = "[::1]:7443".parse().expect("v6");
        assert_eq!(v6.to_string(), "[::1]:7443");
        let name: ControlAddr = "Warden-Control.warden.svc:7443".parse().expect("name");
        assert_eq!(name.to_string(), "warden-control.warden.svc:7443");
        assert_eq!(name.socket_addr(), None);
        for bad in [
            "warden-control",
            "warden-control:0",
            "warden-control:70000",
            ":7443",
            "a..b:1",
            "-a.b:1",
            "a_b.svc:1",
            "10.0.0.300:1",
            "::1:7443",
            "a b:1",
        ] {
            assert!(bad.parse::<ControlAddr>().is_err(), "{bad} accepted");
        }
    }
}
