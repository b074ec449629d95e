//! Policy bypass through unnormalized paths and hosts, tried against a real
//! nginx app: each spelling that nginx serves as `/admin` (or as the
//! `admin.internal` virtual host) is first shown to reach the admin content
//! when nginx is called directly, then shown to be denied by a `forbid` on
//! the canonical form when it comes through the sidecar, over HTTP/1.1 and
//! HTTP/2. Allowed spellings reach nginx in the canonical form the policy
//! saw.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::mesh::{
    Identities, ORDERS, TestApp, get, http1_client, inbound_to, raw_exchange, route_to, send,
};
use support::nginx::Nginx;

/// nginx: `/admin...` and the `admin.internal` virtual host answer
/// `ADMIN`, anything else `app`; both echo what nginx received.
const NGINX: &str = r#"
server {
  listen LISTEN default_server;
  server_name _;
  location /admin { return 200 "ADMIN uri=$request_uri host=$http_host\n"; }
  location / { return 200 "app uri=$request_uri host=$http_host$http_x_original_url\n"; }
}
server {
  listen LISTEN;
  server_name admin.internal;
  location / { return 200 "ADMIN-VHOST uri=$request_uri host=$http_host\n"; }
}
"#;

const POLICY: &str = r#"
@id("everyone")
permit (principal, action, resource);

@id("no-admin-path")
forbid (principal, action in [Action::"read", Action::"write"], resource)
when { context.path like "/admin*" };

@id("no-admin-host")
forbid (principal, action in [Action::"read", Action::"write"], resource)
when { context.host == "admin.internal" };
"#;

/// An HTTP/1.1 request over a fresh connection: (status, body).
async fn h1(addr: SocketAddr, head: &str) -> (u16, String) {
    let raw = raw_exchange(addr, head.as_bytes()).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response to {head:?}: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn get_head(target: &str, host: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// An HTTP/2 request (prior knowledge, plaintext) with `uri` as
/// `:scheme`/`:authority`/`:path` and `headers`: (status, body).
async fn h2(addr: SocketAddr, uri: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let mut req = http::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (response, _) = client
        .send_request(req.body(()).expect("request"), true)
        .expect("send");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answer in time")
        .expect("response");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// nginx behind a permissive sidecar (plaintext accepted as
/// `Unauthenticated`, so raw requests can be written by hand) running
/// [`POLICY`].
struct Setup {
    nginx: Nginx,
    _ids: Identities,
    sidecar: support::mesh::Proxy,
}

async fn setup(extra: &[&str]) -> Setup {
    let nginx = Nginx::start(NGINX);
    let ids = Identities::new();
    let sidecar = ids.permissive(nginx.addr, POLICY, extra).await;
    Setup {
        nginx,
        _ids: ids,
        sidecar,
    }
}

/// Path spellings nginx serves as `/admin`, with what the sidecar answers.
const BYPASS_PATHS: [(&str, u16); 10] = [
    ("/admin", 403),
    ("//admin", 403),
    ("/./admin", 403),
    ("/x/../admin", 403),
    ("/%61dmin", 403),
    ("/%2e/admin", 403),
    ("/x/%2E%2E/admin", 403),
    ("///admin/./status", 403),
    ("/%2fadmin", 400),
    ("/%2Fadmin", 400),
];

/// Host spellings nginx serves as the `admin.internal` virtual host.
const BYPASS_HOSTS: [&str; 5] = [
    "admin.internal",
    "ADMIN.internal",
    "admin.internal.",
    "admin.internal:80",
    "Admin.Internal.:80",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bypass_spelling_reaches_admin_on_nginx_and_is_denied_by_the_sidecar() {
    let setup = setup(&[]).await;
    let inbound = setup.sidecar.inbound();
    let mut table = Vec::new();
    for (path, expected) in BYPASS_PATHS {
        let head = get_head(path, "app.example");
        // The spelling is a real bypass: nginx alone serves the admin page.
        let (status, body) = h1(setup.nginx.addr, &head).await;
        assert!(
            status == 200 && body.starts_with("ADMIN"),
            "nginx should serve {path} as /admin: {status} {body}"
        );
        let (status, body) = h1(inbound, &head).await;
        table.push(format!("h1 {path}: {status}"));
        assert_eq!(status, expected, "{path} through the sidecar: {body}");
    }
    // Absolute form: the target's authority is the host.
    let head = "GET http://app.example/%2e/admin HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n";
    let (status, body) = h1(setup.nginx.addr, head).await;
    assert!(
        status == 200 && body.starts_with("ADMIN"),
        "{status} {body}"
    );
    assert_eq!(h1(inbound, head).await.0, 403, "absolute form");
    for host in BYPASS_HOSTS {
        let head = get_head("/", host);
        let (status, body) = h1(setup.nginx.addr, &head).await;
        assert!(
            status == 200 && body.starts_with("ADMIN-VHOST"),
            "nginx should serve Host {host} as admin.internal: {status} {body}"
        );
        let (status, body) = h1(inbound, &head).await;
        table.push(format!("h1 Host {host}: {status}"));
        assert_eq!(status, 403, "Host {host} through the sidecar: {body}");
    }

    // The same spellings over HTTP/2, straight to the inbound.
    for (path, expected) in BYPASS_PATHS {
        let (status, body) = h2(inbound, &format!("http://app.example{path}"), &[]).await;
        table.push(format!("h2 {path}: {status}"));
        assert_eq!(status, expected, "h2 {path}: {body}");
    }
    for host in BYPASS_HOSTS {
        let (status, body) = h2(inbound, &format!("http://{host}/"), &[]).await;
        table.push(format!("h2 :authority {host}: {status}"));
        assert_eq!(status, 403, "h2 :authority {host}: {body}");
        let (status, body) = h2(inbound, "http://app.example/", &[("host", host)]).await;
        assert_eq!(
            status, 400,
            "h2 :authority and a conflicting host {host}: {body}"
        );
    }
    println!("{}", table.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_spellings_reach_nginx_in_the_form_the_policy_saw() {
    let setup = setup(&[]).await;
    let inbound = setup.sidecar.inbound();
    // (target, Host, what nginx must receive as its request URI and Host)
    let cases = [
        ("/x/./y/../z", "App.Example.:80", "/x/z", "app.example"),
        (
            "/%7Euser/a//b",
            "app.example:8080",
            "/~user/a/b",
            "app.example:8080",
        ),
        (
            "/q/../r?x=%2e%2e/&y",
            "app.example",
            "/r?x=%2e%2e/&y",
            "app.example",
        ),
        ("/caf%c3%a9", "app.example", "/caf%C3%A9", "app.example"),
        ("/adm/../in", "app.example", "/in", "app.example"),
        (
            "http://App.Example/p/./q",
            "app.example",
            "/p/q",
            "app.example",
        ),
    ];
    for (target, host, uri, seen_host) in cases {
        let (status, body) = h1(inbound, &get_head(target, host)).await;
        assert_eq!(status, 200, "{target}: {body}");
        assert_eq!(
            body.trim(),
            format!("app uri={uri} host={seen_host}"),
            "{target} Host {host}"
        );
    }
    // HTTP/2 from a client that is not a sidecar reaches this HTTP/1.1 app
    // as HTTP/1.1, with its `:authority` as Host.
    let (status, body) = h2(inbound, "http://App.Example.:80/x/../y", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "app uri=/y host=app.example");
    // Raw UTF-8 reaches the app in the one spelling the policy saw.
    let (status, body) = h1(inbound, &get_head("/café", "app.example")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "app uri=/caf%C3%A9 host=app.example");
    // Headers that some frameworks take as the real URL do not reach it.
    let (status, body) = h1(
        inbound,
        "GET / HTTP/1.1\r\nHost: app.example\r\nX-Original-URL: /admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "app uri=/ host=app.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_targets_and_hosts_are_refused_with_400() {
    let setup = setup(&[]).await;
    let inbound = setup.sidecar.inbound();
    let cases: [(&str, u16); 11] = [
        // No host at all, in any version: the app would pick one itself.
        ("GET / HTTP/1.0\r\n\r\n", 400),
        // A dot segment with parameters is `..` to Tomcat and Spring.
        (
            "GET /x/..;/admin HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET /x/%2e%2e;x/admin HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: app.example\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        (
            "GET http://admin.internal/ HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET /a%zz HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: user@app.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\nConnection: close\r\n\r\n",
            405,
        ),
    ];
    for (head, expected) in cases {
        let (status, body) = h1(inbound, head).await;
        assert_eq!(status, expected, "{head:?}: {body}");
        assert!(body.starts_with("warden: "), "{head:?}: {body}");
    }
    // The sidecar still serves everyone else.
    let (status, _) = h1(inbound, &get_head("/", "app.example")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_can_be_kept_or_decoded_instead() {
    let keep = setup(&[
        "inbound.escaped_slashes=keep",
        "inbound.merge_slashes=false",
    ])
    .await;
    // Kept encoded (hex uppercased) and slashes left alone: the policy
    // and nginx both get `/a%2Fb//c`.
    let (status, body) = h1(
        keep.sidecar.inbound(),
        &get_head("/a%2fb//c", "app.example"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "app uri=/a%2Fb//c host=app.example");
    drop(keep);
    let decode = setup(&["inbound.escaped_slashes=decode"]).await;
    let (status, body) = h1(
        decode.sidecar.inbound(),
        &get_head("/%2fadmin", "app.example"),
    )
    .await;
    assert_eq!(status, 403, "decoded, the path is /admin: {body}");
    let (status, body) = h1(decode.sidecar.inbound(), &get_head("/a%2Fb", "app.example")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "app uri=/a/b host=app.example");
}

/// Through a real pair (mTLS, HTTP/2 between the sidecars): the path the
/// calling app wrote is normalized by the receiving sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_sidecar_pair_the_canonical_path_is_decided_and_forwarded() {
    let nginx = Nginx::start(NGINX);
    let ids = Identities::new();
    let mut settings = inbound_to(nginx.addr);
    settings.push(format!("authz.policies={}", ids.policies(POLICY).display()));
    let server = ids.start("orders", &settings);
    let client = ids.start("frontend", &[route_to(server.inbound(), ORDERS)]);
    server.wait_ready().await;
    client.wait_ready().await;
    let via = client.outbound[0];
    for path in ["//admin", "/x/../admin", "/%61dmin"] {
        let reply = get(via, path, &[]).await.expect("reply");
        assert_eq!(reply.status, 403, "{path}: {}", reply.body);
    }
    let reply = get(via, "/x/./y/../z", &[("host", "Orders.Example.")])
        .await
        .expect("reply");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body.trim(), "app uri=/x/z host=orders.example");
}

/// An h2c app gets `:authority` as the caller named it (normalized), not
/// the sidecar's address for the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_app_sees_the_callers_authority() {
    let app = TestApp::start().await;
    let ids = Identities::new();
    let mut settings = inbound_to(app.addr);
    settings.push("inbound.app_protocol=h2".into());
    let server = ids.start("orders", &settings);
    let client = ids.start("frontend", &[route_to(server.inbound(), ORDERS)]);
    server.wait_ready().await;
    client.wait_ready().await;
    let req = http::Request::get(format!("http://{}/a/../echo-me", client.outbound[0]))
        .header("host", "Orders.Shop.:80")
        .body(support::mesh::body(""))
        .expect("request");
    let reply = send(&http1_client(), req).await.expect("reply");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = reply.echo();
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["authority"], "orders.shop");
    assert_eq!(echo["path"], "/echo-me");
}
