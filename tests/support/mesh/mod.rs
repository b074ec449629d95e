//! A mesh for the data-plane tests: real `warden proxy` processes, a real
//! test app, SVIDs from a real CA, all on 127.0.0.1.

mod app;
mod client;
mod proxy;

use std::net::SocketAddr;
use std::path::PathBuf;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use app::{TestApp, tcp_echo};
#[allow(unused_imports)]
pub use client::{
    Reply, TestBody, body, get, h2c_client, http1_client, raw_exchange, read_some, send,
};
#[allow(unused_imports)]
pub use proxy::{Proxy, sample};

use super::{ca_init, path_str, svid_issue};

pub const TD: &str = "example.org";
pub const FRONTEND: &str = "spiffe://example.org/ns/shop/sa/frontend";
pub const ORDERS: &str = "spiffe://example.org/ns/shop/sa/orders";
pub const INTRUDER: &str = "spiffe://example.org/ns/other/sa/intruder";
/// A policy that lets everyone do everything.
pub const ALLOW_ALL: &str = "permit (principal, action, resource);";

/// A CA and SVID directories for the usual workloads.
pub struct Identities {
    pub dir: tempfile::TempDir,
}

impl Identities {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        ca_init(&dir.path().join("ca"), TD);
        let ids = Identities { dir };
        for (name, id) in [
            ("frontend", FRONTEND),
            ("orders", ORDERS),
            ("intruder", INTRUDER),
        ] {
            ids.issue(name, id);
        }
        ids
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn issue(&self, name: &str, id: &str) -> PathBuf {
        svid_issue(&self.ca(), id, &self.dir.path().join(name))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A policy directory holding `text` as its one file.
    pub fn policies(&self, text: &str) -> PathBuf {
        let dir = self.path("policies");
        std::fs::create_dir_all(&dir).expect("policy dir");
        std::fs::write(dir.join("policies.cedar"), text).expect("policy file");
        dir
    }

    /// `orders` in permissive mode (plaintext clients can be written by
    /// hand) in front of `app`, running `policy`, ready.
    pub async fn permissive(&self, app: SocketAddr, policy: &str, extra: &[&str]) -> Proxy {
        let mut settings = inbound_to(app);
        settings.push("inbound.mode=permissive".into());
        settings.push(format!(
            "authz.policies={}",
            self.policies(policy).display()
        ));
        settings.extend(extra.iter().map(|s| s.to_string()));
        let sidecar = self.start("orders", &settings);
        sidecar.wait_ready().await;
        sidecar
    }

    /// Settings for a sidecar holding the SVID in directory `name`.
    pub fn settings(&self, name: &str, extra: &[String]) -> Vec<String> {
        let mut s = vec![
            format!("identity.dir={}", path_str(&self.path(name))),
            "identity.poll_interval=100ms".to_owned(),
            format!("service.name={name}"),
            "admin.listen=127.0.0.1:0".to_owned(),
        ];
        s.extend_from_slice(extra);
        s
    }

    pub fn start(&self, name: &str, extra: &[String]) -> Proxy {
        self.start_with_env(name, extra, &[])
    }

    pub fn start_with_env(&self, name: &str, extra: &[String], env: &[(String, String)]) -> Proxy {
        Proxy::start_with_env(
            &self.path(&format!("{name}.log")),
            &self.settings(name, extra),
            env,
        )
    }
}

pub fn inbound_to(app: SocketAddr) -> Vec<String> {
    vec![
        "inbound.listen=127.0.0.1:0".to_owned(),
        format!("inbound.app={app}"),
    ]
}

pub fn route_to(upstream: SocketAddr, identity: &str) -> String {
    format!(
        "outbound.routes=[{{listen=\"127.0.0.1:0\", upstream=\"{upstream}\", identity=\"{identity}\"}}]"
    )
}

/// The usual pair: `orders` behind its sidecar, `frontend`'s sidecar routing to it.
pub struct Pair {
    pub ids: Identities,
    pub app: TestApp,
    pub server: Proxy,
    pub client: Proxy,
}

impl Pair {
    pub async fn start(server_extra: &[String], client_extra: &[String]) -> Pair {
        Pair::start_with_env(server_extra, client_extra, &[]).await
    }

    /// As [`Pair::start`], both sidecars with extra environment variables.
    pub async fn start_with_env(
        server_extra: &[String],
        client_extra: &[String],
        env: &[(String, String)],
    ) -> Pair {
        let ids = Identities::new();
        let app = TestApp::start().await;
        let mut s = inbound_to(app.addr);
        s.extend_from_slice(server_extra);
        let server = ids.start_with_env("orders", &s, env);
        let mut c = vec![route_to(server.inbound(), ORDERS)];
        c.extend_from_slice(client_extra);
        let client = ids.start_with_env("frontend", &c, env);
        server.wait_ready().await;
        client.wait_ready().await;
        Pair {
            ids,
            app,
            server,
            client,
        }
    }

    /// The frontend app's way to orders.
    pub fn via(&self) -> SocketAddr {
        self.client.outbound[0]
    }
}
