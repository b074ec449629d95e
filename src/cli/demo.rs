//! `warden demo`: a whole mesh on loopback, with no setup. A control plane
//! (its CA, inventory and API); two apps, `frontend` and `orders`, each
//! behind its own sidecar (a separate `warden proxy` process that joins the
//! control plane with a single-use token); a third workload, `intruder`,
//! from another namespace. frontend calls orders and is allowed; intruder
//! is refused by the built-in policy (same namespace only), then revoked.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use warden_control::server::{self, ServeOptions};
use warden_proxy::control::{ControlClient, api};

use crate::DemoArgs;

const TRUST_DOMAIN: &str = "demo.warden.local";
const FRONTEND: &str = "spiffe://demo.warden.local/ns/shop/sa/frontend";
const ORDERS: &str = "spiffe://demo.warden.local/ns/shop/sa/orders";
const INTRUDER: &str = "spiffe://demo.warden.local/ns/other/sa/intruder";

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(args))
}

/// A sidecar process; SIGTERM (drain) when dropped.
struct SidecarProcess {
    name: &'static str,
    child: Child,
    admin: SocketAddr,
    inbound: Option<SocketAddr>,
    outbound: Option<SocketAddr>,
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// SIGTERM, then up to 5 s for the drain, then SIGKILL.
fn terminate(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    for _ in 0..50 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_sidecar(name: &'static str, settings: &[String]) -> anyhow::Result<SidecarProcess> {
    let exe = std::env::current_exe().context("cannot find the warden binary")?;
    let mut command = Command::new(exe);
    command.arg("proxy");
    for s in settings {
        command.arg("--set").arg(s);
    }
    if std::env::var_os("WARDEN_LOG").is_none() {
        command.env("WARDEN_LOG", "error");
    }
    // The sidecar dies with the demo, even a demo killed with SIGKILL: it
    // asks the kernel for SIGTERM when its parent goes. (That is when the
    // thread that spawned it exits: the demo spawns from the main thread,
    // the one `block_on` runs on.)
    command.env(super::proxy::PARENT_PID_ENV, std::process::id().to_string());
    let mut child = command
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start the {name} sidecar"))?;
    let stdout = child.stdout.take().context("sidecar stdout")?;
    let mut process = SidecarProcess {
        name,
        child,
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        inbound: None,
        outbound: None,
    };
    // The sidecar prints its listeners, then `started`; or exits on error.
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let (what, addr) = match line.split_once(' ') {
            Some((what, addr)) => (what, addr.parse::<SocketAddr>().ok()),
            None if line == "started" => return Ok(process),
            None => continue,
        };
        match (what, addr) {
            ("admin", Some(a)) => process.admin = a,
            ("inbound", Some(a)) => process.inbound = Some(a),
            ("outbound[0]", Some(a)) => process.outbound = Some(a),
            _ => {}
        }
    }
    bail!("the {name} sidecar exited before starting (its error is above)")
}

/// A demo app: answers every request with what it saw of its caller.
async fn start_app(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        let caller = req
                            .headers()
                            .get("x-warden-peer-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(no verified identity)")
                            .to_owned();
                        let body = format!(
                            "{name} app: {} {} from caller {caller}\n",
                            req.method(),
                            req.uri().path()
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The control plane of the demo, and an admin client for it.
struct DemoControl {
    _control: server::ControlPlane,
    endpoint: server::Endpoint,
    admin: ControlClient,
    data: std::path::PathBuf,
}

impl DemoControl {
    async fn start(data: &Path) -> anyhow::Result<DemoControl> {
        let control = server::start(ServeOptions {
            data_dir: data.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ca_dir: None,
            trust_domain: Some(TRUST_DOMAIN.parse()?),
            svid_ttl: Some(Duration::from_secs(120)),
            audit_stdout: false,
            database: None,
            endpoint_addresses: server::EndpointAddresses::Caller,
            k8s: None,
            federate_with: Vec::new(),
            bundle_refresh_hint: server::DEFAULT_REFRESH,
            usage_retention: server::DEFAULT_USAGE_RETENTION,
            database_connections: warden_control::store::PG_POOL,
        })
        .await?;
        let endpoint = control.endpoint.clone();
        let admin = server::admin_client(data)?;
        Ok(DemoControl {
            _control: control,
            endpoint,
            admin,
            data: data.to_owned(),
        })
    }

    /// Settings for a sidecar that joins as `id` with a fresh token.
    async fn settings(
        &self,
        name: &str,
        id: &str,
        extra: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("owner".to_owned(), format!("team-{name}"));
        let token: api::TokenResponse = self
            .admin
            .post(
                api::ADMIN_TOKENS,
                &api::TokenRequest {
                    spiffe_id: id.to_owned(),
                    ttl_secs: Some(60),
                    labels,
                },
            )
            .await?;
        println!("join token {} created for {id}", token.token_id);
        let mut s = vec![
            format!("control.address={}", self.endpoint.address),
            format!("control.server_id={}", self.endpoint.server_id),
            format!(
                "control.bundle={}",
                self.data.join(server::BUNDLE_FILE).display()
            ),
            format!("control.token={}", token.token),
            format!("control.instance={name}-demo"),
            format!("service.name={name}"),
            "admin.listen=127.0.0.1:0".to_owned(),
        ];
        s.extend_from_slice(extra);
        Ok(s)
    }
}

type DemoClient = Client<HttpConnector, Full<Bytes>>;

async fn get(
    client: &DemoClient,
    via: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut req = Request::get(format!("http://{via}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = client.request(req.body(Full::new(Bytes::new()))?).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).trim_end().to_owned()))
}

async fn wait_ready(client: &DemoClient, sidecar: &SidecarProcess) -> anyhow::Result<()> {
    let mut last = (0, String::new());
    for _ in 0..100 {
        last = get(client, sidecar.admin, "/ready", &[]).await?;
        if last.0 == 200 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the {} sidecar never became ready: {}",
        sidecar.name,
        last.1
    )
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let control = DemoControl::start(&dir.path().join("control")).await?;
    println!(
        "control plane for trust domain {TRUST_DOMAIN} serving on {} (CA, inventory and admin token in {})",
        control.endpoint.address,
        control.data.display()
    );

    let orders_app = start_app("orders").await?;
    let frontend_app = start_app("frontend").await?;
    let inbound = |app: SocketAddr| {
        vec![
            "inbound.listen=127.0.0.1:0".to_owned(),
            format!("inbound.app={app}"),
        ]
    };
    let orders = spawn_sidecar(
        "orders",
        &control
            .settings("orders", ORDERS, &inbound(orders_app))
            .await?,
    )?;
    let orders_inbound = orders
        .inbound
        .context("orders sidecar has no inbound listener")?;
    let route = |to: &str| {
        vec![format!(
            "outbound.routes=[{{listen=\"127.0.0.1:0\", upstream=\"{orders_inbound}\", identity=\"{to}\"}}]"
        )]
    };
    let mut frontend_settings = inbound(frontend_app);
    frontend_settings.extend(route(ORDERS));
    let frontend = spawn_sidecar(
        "frontend",
        &control
            .settings("frontend", FRONTEND, &frontend_settings)
            .await?,
    )?;
    let intruder = spawn_sidecar(
        "intruder",
        &control
            .settings("intruder", INTRUDER, &route(ORDERS))
            .await?,
    )?;

    let client: DemoClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    for sidecar in [&orders, &frontend, &intruder] {
        wait_ready(&client, sidecar).await?;
    }
    println!(
        "\nmesh up: orders app {orders_app} behind its sidecar {orders_inbound} (mTLS, strict);\n\
         frontend and intruder reach it through their own sidecars\n"
    );

    let frontend_out = frontend.outbound.context("frontend route")?;
    let intruder_out = intruder.outbound.context("intruder route")?;
    let allowed = get(&client, frontend_out, "/orders/42", &[]).await?;
    println!(
        "1. frontend -> orders  GET /orders/42   => {}\n   {}",
        allowed.0, allowed.1
    );
    let spoofed = get(
        &client,
        frontend_out,
        "/orders/42",
        &[(
            "x-warden-peer-id",
            "spiffe://demo.warden.local/ns/shop/sa/admin",
        )],
    )
    .await?;
    println!(
        "2. frontend claims to be admin in a header => {}\n   {}",
        spoofed.0, spoofed.1
    );
    let denied = get(&client, intruder_out, "/orders/42", &[]).await?;
    println!(
        "3. intruder -> orders  GET /orders/42   => {}\n   {}",
        denied.0,
        denied.1.replace('\n', "\n   ")
    );
    let health = get(&client, intruder_out, "/healthz", &[]).await?;
    println!(
        "4. intruder -> orders  GET /healthz     => {} (health checks are open to all)",
        health.0
    );

    let revoked: api::RevokeResponse = control
        .admin
        .post(
            api::ADMIN_REVOCATIONS,
            &api::RevokeRequest {
                target: INTRUDER.to_owned(),
                reason: "demo: intruder detected".to_owned(),
            },
        )
        .await?;
    // The revocation reaches orders' sidecar over its watch within a second or so.
    let mut after = (0, String::new());
    for _ in 0..50 {
        after = get(&client, intruder_out, "/healthz", &[]).await?;
        if after.0 != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "5. intruder's identity revoked ({} SVIDs); intruder -> orders GET /healthz => {}\n   {}",
        revoked.svids_revoked,
        after.0,
        after.1.replace('\n', "\n   ")
    );
    let inventory: Vec<serde_json::Value> = control.admin.get(api::ADMIN_IDENTITIES).await?;
    println!("\ninventory (warden identities list):");
    for i in &inventory {
        println!(
            "   {:<48} {:<8} instance {}",
            i["spiffe_id"].as_str().unwrap_or(""),
            i["status"].as_str().unwrap_or(""),
            i["instance"].as_str().unwrap_or("-")
        );
    }

    let as_expected = allowed.0 == 200
        && allowed.1.contains(FRONTEND)
        && spoofed.1.contains(FRONTEND)
        && denied.0 == 403
        && health.0 == 200
        && after.0 == 502;
    println!(
        "\npolicy: the built-in default (same namespace may call; everyone may GET /healthz).\n\
         {}",
        if as_expected {
            "All as expected."
        } else {
            "UNEXPECTED results above."
        }
    );

    if args.keep {
        println!("\nThe mesh keeps running; look around, then press Ctrl-C (or send SIGTERM):");
        for s in [&orders, &frontend, &intruder] {
            println!(
                "  {:<9} http://{}/metrics  http://{0}/ready  http://{0}/identity  http://{0}/policy",
                s.name, s.admin
            );
        }
        println!("  call orders as frontend:  curl http://{frontend_out}/orders/1");
        println!(
            "  call orders as intruder:  curl http://{intruder_out}/orders/1   (revoked: 502)"
        );
        println!(
            "  the control plane:        warden identities list --data-dir {}   and http://{}/metrics",
            control.data.display(),
            control.endpoint.metrics_address
        );
        super::proxy::wait_for_termination().await?;
    }
    drop((intruder, frontend, orders));
    Ok(if as_expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
