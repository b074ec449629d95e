//! The sidecar's traffic listeners: bound before anything is served (so a
//! port in use fails the start), then each handed to its side.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::config::{InboundApp, InboundMode, RouteProtocol, SidecarConfig};
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

/// Every traffic listener, bound, in the order of the configuration.
pub(super) struct Bound {
    inbound: Option<TcpListener>,
    opaque: Vec<TcpListener>,
    routes: Vec<TcpListener>,
    proxy: Option<TcpListener>,
    transparent: Option<TcpListener>,
}

pub(super) async fn bind(key: &str, addr: SocketAddr) -> Result<TcpListener, SidecarError> {
    let bound = match addr {
        // `[::]` takes IPv4 too whatever the host's `bindv6only`: a
        // transparent listener gets both families' redirected connections.
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => dual_stack(addr),
        _ => TcpListener::bind(addr).await,
    };
    bound.map_err(|source| SidecarError::Bind {
        key: key.to_owned(),
        addr,
        source,
    })
}

fn dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match tokio::net::TcpSocket::new_v6() {
        Ok(socket) => socket,
        // A kernel (or a pod) without IPv6: `[::]` means every address there is.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::AFNOSUPPORT.raw_os_error()) => {
            tracing::info!(%addr, "no IPv6 here; listening on IPv4 only");
            let v4 = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port());
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(v4)?;
            return socket.listen(1024);
        }
        Err(e) => return Err(e),
    };
    socket.set_reuseaddr(true)?;
    rustix::net::sockopt::set_ipv6_v6only(&socket, false)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Bound {
    pub async fn bind_all(config: &SidecarConfig) -> Result<Self, SidecarError> {
        let inbound = match &config.inbound.http {
            Some(http) => Some(bind("inbound.listen", http.listen).await?),
            None => None,
        };
        let mut opaque = Vec::new();
        for (i, o) in config.inbound.opaque.iter().enumerate() {
            opaque.push(bind(&format!("inbound.opaque[{i}].listen"), o.listen).await?);
        }
        let mut routes = Vec::new();
        for (i, route) in config.outbound.routes.iter().enumerate() {
            routes.push(bind(&format!("outbound.routes[{i}].listen"), route.listen).await?);
        }
        let proxy = match &config.outbound.proxy {
            Some(p) => Some(bind("outbound.proxy_listen", p.listen).await?),
            None => None,
        };
        let transparent = match &config.outbound.transparent {
            Some(t) => Some(bind("outbound.transparent_listen", t.listen).await?),
            None => None,
        };
        Ok(Bound {
            inbound,
            opaque,
            routes,
            proxy,
            transparent,
        })
    }

    pub fn addresses(&self, admin: SocketAddr) -> Addresses {
        let local = |l: &TcpListener| l.local_addr().expect("bound listener has an address");
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
    );
    Ok(Arc::new(outbound::Route {
        server_address: upstream.ip().to_string(),
        shared: shared.clone(),
        upstream,
        channel,
    }))
}
