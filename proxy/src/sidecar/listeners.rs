//! The sidecar's traffic listeners: bound before anything is served (so a
//! port in use fails the start), then each handed to its side. With
//! several workers each binds its own `SO_REUSEPORT` socket per address;
//! then a port held by another process of the same user that also set
//! `SO_REUSEPORT` (another Warden with `--workers` above 1, say) does not
//! fail the start: the two share the port's connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};

use super::admission::{ConnectionTable, Listening};
use super::config::{InboundApp, InboundMode, RouteProtocol, SidecarConfig};
use super::metrics::Direction;
use super::shared::Shared;
use super::{SidecarError, app, inbound, outbound, peer};
use crate::identity::{ExpectedIdentity, SpiffeId};
use crate::tls::{ClientAuth, TlsVersions, client_config, server_config};

/// The addresses a started sidecar listens on.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub admin: SocketAddr,
    pub inbound: Option<SocketAddr>,
    /// One per `[[inbound.opaque]]`, in order.
    pub opaque: Vec<SocketAddr>,
    /// One per `[[outbound.routes]]`, in order.
    pub outbound: Vec<SocketAddr>,
    /// The explicit HTTP proxy, if configured.
    pub proxy: Option<SocketAddr>,
    /// The transparent outbound listener, if configured.
    pub transparent: Option<SocketAddr>,
}

/// One thing per traffic listener, in the order of the configuration.
#[derive(Clone)]
pub(super) struct Listeners<T> {
    inbound: Option<T>,
    opaque: Vec<T>,
    routes: Vec<T>,
    proxy: Option<T>,
    transparent: Option<T>,
}

/// Every traffic listener, bound, as one worker sees them.
pub(super) type Bound = Listeners<Listening>;

/// Every traffic listener's address and connection table: what another
/// worker binds ([`Replicas::bind`]).
pub(super) type Replicas = Listeners<(SocketAddr, Arc<ConnectionTable>)>;

impl Replicas {
    /// Worker `worker`'s own `SO_REUSEPORT` socket on each address, each
    /// sharing its listener's table. Registers the sockets with the
    /// runtime this runs in.
    pub fn bind(&self, worker: usize) -> Result<Bound, SidecarError> {
        self.try_map(|key, (addr, table)| {
            bind_shared(key, *addr, true).map(|socket| Listening {
                socket,
                table: table.clone(),
                worker,
            })
        })
    }
}

impl<T> Listeners<T> {
    /// `f` applied to each, given the configuration key it comes from;
    /// the first error stops it.
    fn try_map<U, E>(
        &self,
        mut f: impl FnMut(&str, &T) -> Result<U, E>,
    ) -> Result<Listeners<U>, E> {
        let inbound = self
            .inbound
            .as_ref()
            .map(|t| f("inbound.listen", t))
            .transpose()?;
        let opaque = (self.opaque.iter().enumerate())
            .map(|(i, t)| f(&format!("inbound.opaque[{i}].listen"), t))
            .collect::<Result<_, _>>()?;
        let routes = (self.routes.iter().enumerate())
            .map(|(i, t)| f(&format!("outbound.routes[{i}].listen"), t))
            .collect::<Result<_, _>>()?;
        let proxy = self
            .proxy
            .as_ref()
            .map(|t| f("outbound.proxy_listen", t))
            .transpose()?;
        let transparent = (self.transparent.as_ref())
            .map(|t| f("outbound.transparent_listen", t))
            .transpose()?;
        Ok(Listeners {
            inbound,
            opaque,
            routes,
            proxy,
            transparent,
        })
    }
}

/// What the configuration asks for: each listener's address and side.
fn planned(config: &SidecarConfig) -> Listeners<(SocketAddr, Direction)> {
    let (inbound, outbound) = (Direction::Inbound, Direction::Outbound);
    Listeners {
        inbound: config.inbound.http.as_ref().map(|h| (h.listen, inbound)),
        opaque: config
            .inbound
            .opaque
            .iter()
            .map(|o| (o.listen, inbound))
            .collect(),
        routes: config
            .outbound
            .routes
            .iter()
            .map(|r| (r.listen, outbound))
            .collect(),
        proxy: config.outbound.proxy.as_ref().map(|p| (p.listen, outbound)),
        transparent: config
            .outbound
            .transparent
            .as_ref()
            .map(|t| (t.listen, outbound)),
    }
}

pub(super) async fn bind(key: &str, addr: SocketAddr) -> Result<TcpListener, SidecarError> {
    bind_shared(key, addr, false)
}

/// Binds `addr`; with `reuse_port`, with `SO_REUSEPORT` set so that every
/// worker binds a socket of its own to the same address and the kernel
/// spreads new connections over them. (Only sockets of the same user may
/// join such a group; a port held by anything else still fails the start.)
fn bind_shared(key: &str, addr: SocketAddr, reuse_port: bool) -> Result<TcpListener, SidecarError> {
    let bound = match addr {
        // `[::]` takes IPv4 too whatever the host's `bindv6only`: a
        // transparent listener gets both families' redirected connections.
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => dual_stack(addr, reuse_port),
        _ => socket_for(addr).and_then(|socket| listen(socket, addr, reuse_port)),
    };
    bound.map_err(|source| SidecarError::Bind {
        key: key.to_owned(),
        addr,
        source,
    })
}

fn socket_for(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

/// What `TcpListener::bind` does (`SO_REUSEADDR`, a backlog of 1024),
/// plus `SO_REUSEPORT` when asked.
fn listen(socket: TcpSocket, addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

fn dual_stack(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match TcpSocket::new_v6() {
        Ok(socket) => socket,
        // A kernel (or a pod) without IPv6: `[::]` means every address there is.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::AFNOSUPPORT.raw_os_error()) => {
            tracing::info!(%addr, "no IPv6 here; listening on IPv4 only");
            let v4 = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
            return listen(TcpSocket::new_v4()?, v4, reuse_port);
        }
        Err(e) => return Err(e),
    };
    rustix::net::sockopt::set_ipv6_v6only(&socket, false)?;
    listen(socket, addr, reuse_port)
}

impl Bound {
    /// The first worker's listeners; `reuse_port` when more workers will
    /// bind the same addresses ([`Bound::replicas`]).
    pub fn bind_all(config: &SidecarConfig, reuse_port: bool) -> Result<Self, SidecarError> {
        planned(config).try_map(|key, &(addr, direction)| {
            bind_shared(key, addr, reuse_port)
                .map(|socket| Listening::new(socket, direction, &config.limits))
        })
    }

    /// What another worker binds: each listener's address (the port a
    /// `:0` got included) and its connection table. Needs
    /// `bind_all(_, true)`.
    pub fn replicas(&self) -> Result<Replicas, SidecarError> {
        self.try_map(|key, l| {
            let addr = l.socket.local_addr().map_err(|source| SidecarError::Bind {
                key: key.to_owned(),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            Ok((addr, l.table.clone()))
        })
    }

    pub fn addresses(&self, admin: SocketAddr) -> Addresses {
        let local = |l: &Listening| {
            l.socket
                .local_addr()
                .expect("bound listener has an address")
        };
        Addresses {
            admin,
            inbound: self.inbound.as_ref().map(local),
            opaque: self.opaque.iter().map(local).collect(),
            outbound: self.routes.iter().map(local).collect(),
            proxy: self.proxy.as_ref().map(local),
            transparent: self.transparent.as_ref().map(local),
        }
    }

    /// Every bound address, the admin's too: where a transparent
    /// connection must never be sent.
    fn own(&self, admin: SocketAddr) -> Vec<SocketAddr> {
        let a = self.addresses(admin);
        [a.admin]
            .into_iter()
            .chain(a.inbound)
            .chain(a.opaque)
            .chain(a.outbound)
            .chain(a.proxy)
            .chain(a.transparent)
            .collect()
    }

    /// Hands every listener to its side, tracked for the drain.
    pub fn serve(self, shared: &Arc<Shared>, admin: SocketAddr) -> Result<(), SidecarError> {
        let config = &shared.config;
        let own = self.own(admin);
        let versions = if config.inbound.tls12 {
            TlsVersions::Tls12And13
        } else {
            TlsVersions::Tls13Only
        };
        if self.inbound.is_some() || !self.opaque.is_empty() {
            let client_auth = match config.inbound.mode {
                InboundMode::Strict => ClientAuth::Required,
                InboundMode::Permissive => ClientAuth::Optional,
            };
            let tls = server_config(
                shared.store.clone(),
                client_auth,
                ExpectedIdentity::AnyTrusted,
                versions,
                &[b"h2", b"http/1.1"],
            )?;
            let opaque = Arc::new(inbound::Opaque {
                shared: shared.clone(),
                tls: tls.clone(),
            });
            for (o, listener) in config.inbound.opaque.iter().zip(self.opaque) {
                shared
                    .lifecycle
                    .tracker
                    .spawn(opaque.clone().run(listener, o.app.clone()));
            }
            if let (Some(listener), Some(http)) = (self.inbound, &config.inbound.http) {
                let app =
                    |addr: &app::AppAddr| Arc::new(app::App::new(addr.clone(), &config.limits));
                let (app, transparent) = match &http.app {
                    InboundApp::Fixed(addr) => (Some(app(addr)), None),
                    InboundApp::Transparent {
                        fallback,
                        opaque_ports,
                    } => (
                        fallback.as_ref().map(app),
                        Some(inbound::TransparentApps::new(
                            own.iter().map(SocketAddr::port).collect(),
                            opaque_ports.clone(),
                        )),
                    ),
                };
                let inbound = Arc::new(inbound::Inbound {
                    shared: shared.clone(),
                    app,
                    transparent,
                    tls,
                    opaque,
                });
                shared.lifecycle.tracker.spawn(inbound.run(listener));
            }
        }
        let make_route =
            |upstream: SocketAddr, identity: &SpiffeId| route(shared, versions, upstream, identity);
        for (config, listener) in config.outbound.routes.iter().zip(self.routes) {
            let route = make_route(config.upstream, &config.identity)?;
            match config.protocol {
                RouteProtocol::Http => shared.lifecycle.tracker.spawn(route.run(listener)),
                RouteProtocol::Tcp => shared.lifecycle.tracker.spawn(route.run_tcp(listener)),
            };
        }
        if let (Some(listener), Some(proxy)) = (self.proxy, &config.outbound.proxy) {
            let mut services = HashMap::new();
            for service in &proxy.services {
                let route = make_route(service.upstream, &service.identity)?;
                services.insert(service.authority.clone(), (route, service.protocol));
            }
            let proxy = Arc::new(outbound::ProxyListener {
                shared: shared.clone(),
                services,
            });
            shared.lifecycle.tracker.spawn(proxy.run(listener));
        }
        if let (Some(listener), Some(t)) = (self.transparent, &config.outbound.transparent) {
            let for_routes = shared.clone();
            let make_route: outbound::MakeRoute = Box::new(move |upstream, identity| {
                route(&for_routes, versions, upstream, identity)
            });
            let transparent = Arc::new(outbound::TransparentListener::new(
                shared.clone(),
                t.clone(),
                shared.traffic.endpoints.clone(),
                own,
                make_route,
            ));
            shared.lifecycle.tracker.spawn(transparent.run(listener));
        }
        Ok(())
    }
}

/// One destination's route: its mTLS client, expecting exactly `identity`.
fn route(
    shared: &Arc<Shared>,
    versions: TlsVersions,
    upstream: SocketAddr,
    identity: &SpiffeId,
) -> Result<Arc<outbound::Route>, SidecarError> {
    let tls = client_config(
        shared.store.clone(),
        ExpectedIdentity::exactly(identity.clone()),
        versions,
        &[b"h2"],
    )?;
    let channel = peer::PeerChannel::new(
        upstream,
        identity.clone(),
        tls,
        shared.config.limits.clone(),
        shared.store.clone(),
        shared.metrics.clone(),
        shared.traffic.workers,
    );
    Ok(Arc::new(outbound::Route {
        server_address: upstream.ip().to_string(),
        shared: shared.clone(),
        upstream,
        channel,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn another_worker_binds_the_same_addresses_and_shares_each_table() {
        let sets = [
            "identity.dir=/run/svid",
            "inbound.listen=127.0.0.1:0",
            "inbound.app=127.0.0.1:8080",
            "outbound.routes=[{listen=\"127.0.0.1:0\", upstream=\"127.0.0.1:9\", identity=\"spiffe://example.org/ns/a/sa/b\"}, {listen=\"127.0.0.1:0\", upstream=\"127.0.0.1:9\", identity=\"spiffe://example.org/ns/a/sa/b\"}]",
        ]
        .map(String::from);
        let config = SidecarConfig::load(None, std::iter::empty(), &sets).expect("valid");
        let first = Bound::bind_all(&config, true).expect("bound");
        let second = first
            .replicas()
            .and_then(|r| r.bind(1))
            .expect("bound again");
        let admin = SocketAddr::from(([127, 0, 0, 1], 1));
        let (a, b) = (first.addresses(admin), second.addresses(admin));
        assert_eq!((a.inbound, &a.outbound), (b.inbound, &b.outbound));
        assert_ne!(a.outbound[0], a.outbound[1], "two listeners, two ports");
        let pairs = [(&first.inbound, &second.inbound)]
            .into_iter()
            .filter_map(|(x, y)| x.as_ref().zip(y.as_ref()))
            .chain(first.routes.iter().zip(&second.routes));
        let mut n = 0;
        for (x, y) in pairs {
            assert!(Arc::ptr_eq(&x.table, &y.table), "one table per listener");
            assert_eq!((x.worker, y.worker), (0, 1));
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(
            !Arc::ptr_eq(&first.routes[0].table, &first.routes[1].table),
            "each listener its own table"
        );
    }
}
