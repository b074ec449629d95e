//! The transparent scenario: two pods (network namespaces joined by a
//! veth pair: the client 198.18.70.1, the server 198.18.70.2), each with `warden init` and a sidecar
//! running as uid 1337, the app in the server pod, the load generator in
//! the client pod (as root: its traffic is the app's and is redirected).
//! The same sidecars, app and load reach the app three ways, in alternating
//! rounds: directly (a port both pods' rules skip), through the explicit
//! route (`127.0.0.1:7001`), and transparently (the app's own address,
//! redirected). Keep-alive HTTP/1.1 at one fixed rate: sidecar CPU per
//! request and p50/p99, side by side.
//!
//! Needs root; without it the scenario is skipped and says so. Everything
//! it makes is named for this process and deleted when it ends.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use crate::load::{SCENARIOS, closed_loop, percentile};
use crate::phases::open_cpu_phase;
use crate::target::{Sidecar, start_app_on, wait_serving};
use crate::{Error, ORDERS};

#[allow(dead_code)]
#[path = "../../tests/support/netns.rs"]
mod netns;

/// The sidecars' user: never redirected.
const PROXY_UID: u32 = 1337;
const SERVER_IP: &str = "198.18.70.2";
/// The app's port: redirected on both sides.
const APP_PORT: u16 = 8080;
/// The same app on a port both pods' rules leave alone: the baseline.
const DIRECT_PORT: u16 = 9090;

/// Runs `f` on a thread moved into namespace `ns`, on a runtime of its
/// own (whose worker threads inherit the namespace), and returns its value.
fn in_pod<T, F, Fut>(ns: &str, f: F) -> T
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
{
    use std::os::fd::AsFd;
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("namespace file");
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("setns into the bench's namespace");
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(f())
            })
            .join()
            .expect("the namespace thread")
    })
}

/// The app in the server pod, on both ports, served until the process ends.
fn start_pod_app(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("namespace file");
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::fd::AsFd;
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            for port in [APP_PORT, DIRECT_PORT] {
                start_app_on(SocketAddr::from(([0, 0, 0, 0], port)))
                    .await
                    .expect("the app");
            }
            let _ = ready.send(());
            std::future::pending::<()>().await;
        });
    });
    started.recv().expect("the app started");
}

pub fn measure(
    dir: std::path::PathBuf,
    length: Duration,
    rate: u64,
    conns: usize,
    rounds: usize,
) -> Result<Vec<serde_json::Value>, Error> {
    if !rustix::process::geteuid().is_root() {
        println!("transparent scenario: skipped (needs root: network namespaces, iptables)");
        return Ok(Vec::new());
    }
    let pods = netns::Namespaces::new("bench", 2);
    let (client, server) = (pods.name(0), pods.name(1));
    netns::link(client, server, 70);
    // The sidecars read their SVIDs as uid 1337.
    let owner = format!("{PROXY_UID}:{PROXY_UID}");
    netns::ok(
        std::process::Command::new("chown")
            .args(["-R", &owner])
            .arg(&dir)
            .output()?,
    );
    let skip = DIRECT_PORT.to_string();
    let uid = PROXY_UID.to_string();
    netns::ok(netns::warden_init_in(
        client,
        &[
            "--proxy-uid",
            &uid,
            "--skip-outbound-ports",
            &skip,
            "--no-ipv6",
        ],
    ));
    netns::ok(netns::warden_init_in(
        server,
        &[
            "--proxy-uid",
            &uid,
            "--skip-inbound-ports",
            &skip,
            "--no-ipv6",
        ],
    ));
    start_pod_app(server);
    let identity = |name: &str| {
        vec![
            format!("identity.dir={}", dir.join(name).display()),
            format!("service.name={name}"),
            "admin.listen=127.0.0.1:15000".to_owned(),
        ]
    };
    let mut s = identity("orders");
    s.extend([
        "inbound.listen=0.0.0.0:15006".to_owned(),
        "inbound.transparent=true".to_owned(),
        // The explicit route's connections are not redirected: the app.
        format!("inbound.app=127.0.0.1:{APP_PORT}"),
    ]);
    let server_sidecar = Sidecar::start_in(server, PROXY_UID, &s)?;
    let mut c = identity("frontend");
    c.extend([
        format!("outbound.routes=[{{listen=\"127.0.0.1:7001\", upstream=\"{SERVER_IP}:15006\", identity=\"{ORDERS}\"}}]"),
        "outbound.transparent_listen=127.0.0.1:15001".to_owned(),
        format!("outbound.endpoints=[{{address=\"{SERVER_IP}\", identity=\"{ORDERS}\"}}]"),
    ]);
    let client_sidecar = Sidecar::start_in(client, PROXY_UID, &c)?;
    let sidecars = [&client_sidecar, &server_sidecar];
    let targets: [(&str, SocketAddr, &[&Sidecar]); 3] = [
        ("direct", format!("{SERVER_IP}:{DIRECT_PORT}").parse()?, &[]),
        ("explicit", "127.0.0.1:7001".parse()?, &sidecars),
        (
            "transparent",
            format!("{SERVER_IP}:{APP_PORT}").parse()?,
            &sidecars,
        ),
    ];
    let scenario = SCENARIOS[0];
    in_pod(client, || async {
        for (label, target, _) in &targets {
            wait_serving(*target)
                .await
                .map_err(|e| format!("{label} ({target}): {e}"))?;
        }
        Ok::<(), String>(())
    })?;
    println!(
        "transparent scenario: {} in pods, {rounds} rounds (ABBA), {rate} req/s open loop",
        scenario.name
    );
    // Per target: CPU us/request, p50 and p99 (ms) of each round.
    let mut seen: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (_, target, watched) = targets[i];
            let (open, cpu) = in_pod(client, || async move {
                closed_loop(target, scenario, conns, Duration::from_millis(300)).await;
                open_cpu_phase(target, scenario, watched, rate, length).await
            });
            assert!(
                open.errors == 0,
                "{}: {} errors in the open loop",
                targets[i].0,
                open.errors
            );
            // Sorted by the open loop; the percentiles are in ms.
            seen[i].push((
                cpu,
                percentile(&open.latencies_us, 50.0),
                percentile(&open.latencies_us, 99.0),
            ));
        }
    }
    let median = |values: Vec<f64>| {
        let mut v = values;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut results = Vec::new();
    let mut summary = Vec::new();
    for (i, (label, _, _)) in targets.iter().enumerate() {
        let cpu = median(seen[i].iter().map(|r| r.0).collect());
        let p50 = median(seen[i].iter().map(|r| r.1).collect());
        let p99 = median(seen[i].iter().map(|r| r.2).collect());
        let cpu_shown = if targets[i].2.is_empty() {
            "-".to_owned()
        } else {
            format!("{cpu:.1}")
        };
        println!(
            "{:<28} {:<12} @{rate}/s: p50 {p50:>7.3} ms  p99 {p99:>7.3} ms  sidecar CPU {cpu_shown} us/req (medians of {rounds})",
            scenario.name, label
        );
        summary.push((cpu, p50, p99));
        results.push(json!({
            "scenario": format!("transparent_pods_{}", scenario.name),
            "target": label,
            "rate": rate,
            "rounds": seen[i].iter().map(|r| json!({"cpu_us_per_request": r.0, "p50_ms": r.1, "p99_ms": r.2})).collect::<Vec<_>>(),
            "cpu_us_per_request_median": cpu,
            "p50_ms_median": p50,
            "p99_ms_median": p99,
        }));
    }
    let (direct, explicit, transparent) = (summary[0], summary[1], summary[2]);
    println!(
        "transparent vs explicit: CPU per request x{:.3}; added p50 {:.3} ms vs {:.3} ms, added p99 {:.3} ms vs {:.3} ms (over direct)",
        transparent.0 / explicit.0,
        transparent.1 - direct.1,
        explicit.1 - direct.1,
        transparent.2 - direct.2,
        explicit.2 - direct.2,
    );
    drop((client_sidecar, server_sidecar));
    Ok(results)
}
