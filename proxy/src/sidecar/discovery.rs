//! Which destinations are in the mesh, and the identity each must prove:
//! what the transparent outbound listener looks a redirected connection's
//! original destination up in. An entry names a whole workload address
//! (`198.18.0.2`: every port) or one `address:port`; the port entry wins.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::control::api;
use crate::identity::SpiffeId;

/// Where an entry applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// Every port of this address.
    Host(IpAddr),
    /// This port only.
    Port(SocketAddr),
}

impl std::str::FromStr for EndpointAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(EndpointAddress::Host(ip.to_canonical()));
        }
        match s.parse::<SocketAddr>() {
            Ok(addr) if addr.port() != 0 => Ok(EndpointAddress::Port(SocketAddr::new(
                addr.ip().to_canonical(),
                addr.port(),
            ))),
            Ok(_) => Err(format!("{s:?}: port 0 is no destination")),
            Err(_) => Err(format!(
                "{s:?} is neither an IP address nor ip:port (IPv6 with a port: [::1]:8080)"
            )),
        }
    }
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddress::Host(ip) => ip.fmt(f),
            EndpointAddress::Port(addr) => addr.fmt(f),
        }
    }
}

/// What the table says of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    Meshed(&'a SpiffeId),
    /// A mesh address, but not a port its entries list.
    UnlistedPort,
    Outside,
}

/// The mesh's destinations and their identities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    by_port: HashMap<SocketAddr, SpiffeId>,
    by_host: HashMap<IpAddr, SpiffeId>,
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{0}")]
    Address(String),
    #[error("{address} is declared twice ({first} and {second})")]
    Conflict {
        address: EndpointAddress,
        first: SpiffeId,
        second: SpiffeId,
    },
}

impl Endpoints {
    /// The table of `entries`; an address given twice is an error, even
    /// with the same identity (one of the two is a mistake).
    pub fn new(
        entries: impl IntoIterator<Item = (EndpointAddress, SpiffeId)>,
    ) -> Result<Self, (usize, EndpointError)> {
        let mut table = Endpoints::default();
        for (i, (address, identity)) in entries.into_iter().enumerate() {
            let previous = match address {
                EndpointAddress::Host(ip) => table.by_host.insert(ip, identity.clone()),
                EndpointAddress::Port(addr) => table.by_port.insert(addr, identity.clone()),
            };
            if let Some(first) = previous {
                return Err((
                    i,
                    EndpointError::Conflict {
                        address,
                        first,
                        second: identity,
                    },
                ));
            }
        }
        Ok(table)
    }

    /// The identity `destination` must prove; None when no entry names it.
    pub fn lookup(&self, destination: SocketAddr) -> Option<&SpiffeId> {
        match self.find(destination) {
            Found::Meshed(identity) => Some(identity),
            Found::UnlistedPort | Found::Outside => None,
        }
    }

    /// What the table says of `destination`: a mesh destination, another
    /// port of a mesh address (never to be reached in plaintext), or an
    /// address outside the mesh.
    pub fn find(&self, destination: SocketAddr) -> Found<'_> {
        let ip = destination.ip().to_canonical();
        if let Some(identity) = self
            .by_port
            .get(&SocketAddr::new(ip, destination.port()))
            .or_else(|| self.by_host.get(&ip))
        {
            return Found::Meshed(identity);
        }
        if self.by_port.keys().any(|a| a.ip() == ip) {
            Found::UnlistedPort
        } else {
            Found::Outside
        }
    }

    /// The control plane's registry (`discovered`) under `fixed` (the
    /// configuration's entries): an address `fixed` names in any entry is
    /// `fixed`'s alone. An entry whose identity does not parse is skipped.
    pub fn merged(fixed: &Endpoints, discovered: &[api::Endpoint]) -> Endpoints {
        let pinned: HashSet<IpAddr> = fixed
            .by_host
            .keys()
            .copied()
            .chain(fixed.by_port.keys().map(SocketAddr::ip))
            .collect();
        let mut table = fixed.clone();
        for entry in discovered {
            let ip = entry.address.to_canonical();
            if pinned.contains(&ip) {
                continue;
            }
            let Ok(identity) = entry.spiffe_id.parse::<SpiffeId>() else {
                tracing::warn!(address = %ip, id = %entry.spiffe_id, "discovery: an entry whose identity is not a SPIFFE ID; skipped");
                continue;
            };
            if entry.ports.is_empty() {
                table.by_host.insert(ip, identity);
            } else {
                for port in &entry.ports {
                    table
                        .by_port
                        .insert(SocketAddr::new(ip, *port), identity.clone());
                }
            }
        }
        table
    }

    pub fn len(&self) -> usize {
        self.by_port.len() + self.by_host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        format!("spiffe://warden.test/{s}").parse().expect("id")
    }

    fn addr(s: &str) -> EndpointAddress {
        s.parse().expect("address")
    }

    #[test]
    fn a_port_entry_wins_over_its_host_and_mapped_addresses_match() {
        let table = Endpoints::new([
            (addr("198.18.0.2"), id("b")),
            (addr("198.18.0.2:5432"), id("db")),
            (addr("[2001:db8::2]:80"), id("v6")),
        ])
        .expect("table");
        let lookup = |s: &str| table.lookup(s.parse().expect("socket")).cloned();
        assert_eq!(lookup("198.18.0.2:8080"), Some(id("b")));
        assert_eq!(lookup("198.18.0.2:5432"), Some(id("db")));
        assert_eq!(lookup("[::ffff:198.18.0.2]:8080"), Some(id("b")));
        assert_eq!(lookup("[2001:db8::2]:80"), Some(id("v6")));
        assert_eq!(lookup("[2001:db8::2]:81"), None);
        assert_eq!(lookup("198.18.0.3:8080"), None);
        let find = |s: &str| table.find(s.parse().expect("socket"));
        assert_eq!(
            find("[2001:db8::2]:81"),
            Found::UnlistedPort,
            "never plaintext"
        );
        assert_eq!(find("198.18.0.3:8080"), Found::Outside);
    }

    #[test]
    fn the_configuration_pins_its_addresses_over_the_registry() {
        let fixed = Endpoints::new([(addr("198.18.0.2"), id("b"))]).expect("table");
        let entry = |address: &str, ports: Vec<u16>, who: &str| api::Endpoint {
            address: address.parse().expect("ip"),
            ports,
            spiffe_id: format!("spiffe://warden.test/{who}"),
            instance: String::new(),
            expires_at: 0,
        };
        let merged = Endpoints::merged(
            &fixed,
            &[
                entry("198.18.0.2", vec![8080], "impostor"),
                entry("198.18.0.3", vec![], "c"),
                entry("198.18.0.4", vec![5432, 6379], "db"),
                entry("198.18.0.5", vec![], "not an id"),
            ],
        );
        let lookup = |s: &str| merged.lookup(s.parse().expect("socket")).cloned();
        assert_eq!(lookup("198.18.0.2:8080"), Some(id("b")), "pinned");
        assert_eq!(lookup("198.18.0.3:1"), Some(id("c")));
        assert_eq!(lookup("198.18.0.4:6379"), Some(id("db")));
        assert_eq!(lookup("198.18.0.4:80"), None);
        assert_eq!(lookup("198.18.0.5:80"), None, "unparsable identity skipped");
    }

    #[test]
    fn bad_and_repeated_addresses_are_refused() {
        for bad in ["host.example", "198.18.0.2:0", "198.18.0.2:99999", ""] {
            assert!(bad.parse::<EndpointAddress>().is_err(), "{bad:?}");
        }
        let err = Endpoints::new([(addr("198.18.0.2"), id("b")), (addr("198.18.0.2"), id("b"))])
            .expect_err("twice");
        assert_eq!(err.0, 1);
        assert!(err.1.to_string().contains("declared twice"), "{}", err.1);
    }
}
