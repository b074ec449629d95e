//! `warden control ...`, `warden identities ...` and `warden policy
//! push|rollback|versions`: the control plane and the admin commands that
//! call its API.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use warden_control::server::{self, ADMIN_TOKEN_FILE, BUNDLE_FILE, ENDPOINT_FILE, Endpoint};
use warden_proxy::control::{ControlClient, ControlError, api};
use warden_proxy::identity::SpiffeId;

use super::{json_shown, shown};
use crate::{
    AdminArgs, BundleCommand, BundleFormat, ControlBackupArgs, ControlMigrateArgs,
    ControlRestoreArgs, ControlServeArgs, EndpointsCommand, IdentitiesCommand, TokenCreateArgs,
};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `warden control serve`: prints `api ADDR`, `metrics ADDR` and `started`
/// on stdout, then serves until SIGTERM or SIGINT.
pub fn serve(args: ControlServeArgs) -> anyhow::Result<ExitCode> {
    warden_proxy::process::raise_open_files_limit();
    let trust_domain = args
        .trust_domain
        .as_deref()
        .map(warden_proxy::identity::TrustDomain::new)
        .transpose()
        .context("invalid --trust-domain")?;
    let options = server::ServeOptions {
        data_dir: args.data_dir,
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        ca_dir: args.ca_dir,
        trust_domain,
        svid_ttl: args.svid_ttl,
        audit_stdout: true,
        k8s: match (args.k8s_issuer, args.k8s_jwks) {
            (Some(issuer), Some(jwks)) => Some(warden_control::attest::K8sOptions {
                issuer,
                audience: args.k8s_audience,
                jwks,
                allow: args.k8s_allow,
                max_token_ttl: i64::try_from(args.k8s_max_token_ttl.as_secs()).unwrap_or(i64::MAX),
                require_pod: !args.k8s_allow_unbound,
            }),
            (None, None) if args.k8s_allow.is_empty() => None,
            (None, None) => anyhow::bail!("--k8s-allow needs --k8s-issuer and --k8s-jwks"),
            _ => anyhow::bail!("--k8s-issuer and --k8s-jwks go together"),
        },
        endpoint_addresses: match args.endpoint_addresses {
            crate::args::EndpointAddressesArg::Caller => server::EndpointAddresses::Caller,
            crate::args::EndpointAddressesArg::Any => server::EndpointAddresses::Any,
        },
        federate_with: args.federate_with,
        bundle_refresh_hint: args.bundle_refresh_hint,
        usage_retention: args.usage_retention,
        database_connections: args.database_connections,
        database: args
            .database
            .as_deref()
            .map(warden_control::store::Database::parse),
    };
    // Handshakes, HTTP and JSON on every core; store work on blocking threads.
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if options.database_connections == 0 {
        anyhow::bail!("--database-connections must be at least 1");
    }
    let runtime = match workers {
        0 => anyhow::bail!("--workers must be at least 1"),
        1 => runtime()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?,
    };
    runtime.block_on(async move {
        let control = server::start(options).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "api {}", control.endpoint.address)?;
        writeln!(out, "metrics {}", control.endpoint.metrics_address)?;
        writeln!(out, "server_id {}", control.endpoint.server_id)?;
        writeln!(out, "started")?;
        out.flush()?;
        drop(out);
        super::proxy::wait_for_termination().await?;
        drop(control);
        Ok(ExitCode::SUCCESS)
    })
}

/// `warden control migrate`: applies pending migrations (or lists them
/// with --dry-run) and prints where the schema stands.
pub fn migrate(args: ControlMigrateArgs) -> anyhow::Result<ExitCode> {
    use warden_control::store::{Database, Store};
    let database = match &args.database {
        Some(text) => Database::parse(text),
        None => Database::Sqlite(args.data_dir.join(server::DB_FILE)),
    };
    let status = Store::migrate(&database, !args.dry_run).with_context(|| database.describe())?;
    if args.json {
        print_json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: schema version {} (this warden knows {})",
        shown(&database.describe()),
        status.current,
        status.known
    );
    for step in &status.applied {
        let how = if status.migrated.iter().any(|m| m.version == step.version) {
            "applied now"
        } else {
            "applied"
        };
        println!(
            "  V{:<4} {:<28} {how} {}",
            step.version,
            shown(&step.name),
            shown(step.applied_on.as_deref().unwrap_or(""))
        );
    }
    for step in &status.pending {
        println!("  V{:<4} {:<28} pending", step.version, shown(&step.name));
    }
    if status.current > status.known {
        println!(
            "the schema is newer than this warden knows; its newer steps say this version may run on it"
        );
    } else if args.dry_run && !status.pending.is_empty() {
        println!("dry run: nothing was changed");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_backup(
    report: &warden_control::store::BackupReport,
    verb: &str,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        return print_json(report);
    }
    println!(
        "{verb} {} ({} bytes, schema version {}): {} identities, {} SVIDs, {} revocations, {} policy versions, {} audit records",
        shown(&report.path.display().to_string()),
        report.bytes,
        report.schema_version,
        report.identities,
        report.svids,
        report.revocations,
        report.policies,
        report.audit
    );
    Ok(())
}

/// `warden control backup`: an online copy of `<data-dir>/control.db`.
pub fn backup(args: ControlBackupArgs) -> anyhow::Result<ExitCode> {
    if let Ok(url) = std::env::var("WARDEN_CONTROL_DATABASE")
        && let warden_control::store::Database::Postgres(_) =
            warden_control::store::Database::parse(&url)
    {
        bail!(
            "WARDEN_CONTROL_DATABASE names PostgreSQL: back it up with pg_dump (see the README); \
             `warden control backup` copies the embedded SQLite database only"
        );
    }
    let db = args.data_dir.join(server::DB_FILE);
    let report = warden_control::store::backup_sqlite(&db, &args.out)
        .with_context(|| format!("backup of {}", db.display()))?;
    print_backup(&report, "wrote", args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `warden control restore`: a backup back into a data directory without
/// a database.
pub fn restore(args: ControlRestoreArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.data_dir;
    if !dir.exists() {
        // A directory made here is the control plane's: owner only.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let db = dir.join(server::DB_FILE);
    let report = warden_control::store::restore_sqlite(&args.from, &db)
        .with_context(|| format!("restore of {}", args.from.display()))?;
    print_backup(&report, "restored", args.json)?;
    if !dir.join("ca").join("ca.json").exists() {
        eprintln!(
            "warning: {} has no CA: put the old data directory's ca/ back (or start serve with \
             --ca-dir), or serve will create a new CA that your sidecars do not trust",
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// An admin client from the data directory's `control.json`, `bundle.pem`
/// and `admin.token` (each overridable).
pub(crate) fn admin_client(args: &AdminArgs) -> anyhow::Result<ControlClient> {
    let dir = &args.data_dir;
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| {
            format!(
                "cannot read {} (is `warden control serve --data-dir {}` running, or set --data-dir)",
                path.display(),
                dir.display()
            )
        })
    };
    let endpoint: Endpoint = serde_json::from_slice(&read(&dir.join(ENDPOINT_FILE))?)
        .with_context(|| {
            format!(
                "{} is not a control-plane endpoint file",
                dir.join(ENDPOINT_FILE).display()
            )
        })?;
    let server_id = SpiffeId::parse(&endpoint.server_id).context("server_id in control.json")?;
    let bundle_path = args.bundle.clone().unwrap_or_else(|| dir.join(BUNDLE_FILE));
    let bundle = read(&bundle_path)?;
    let token_path = args
        .admin_token_file
        .clone()
        .unwrap_or_else(|| dir.join(ADMIN_TOKEN_FILE));
    let token = String::from_utf8_lossy(&read(&token_path)?)
        .trim()
        .to_owned();
    let address = args.server.unwrap_or(endpoint.address);
    Ok(ControlClient::trusting(address, server_id, &bundle)
        .with_context(|| format!("{}", bundle_path.display()))?
        .with_bearer(token))
}

pub(crate) fn call<T>(f: impl Future<Output = Result<T, ControlError>>) -> anyhow::Result<T> {
    Ok(runtime()?.block_on(f)?)
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", json_shown(serde_json::to_string_pretty(value)?));
    Ok(())
}

/// `t` (Unix seconds) as a duration before `now`, rounded to the second.
pub(crate) fn ago(now: i64, t: i64) -> String {
    let secs = now.saturating_sub(t).max(0).unsigned_abs();
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

pub fn token_create(args: TokenCreateArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(&args.admin)?;
    let mut labels = BTreeMap::new();
    for label in &args.label {
        let Some((k, v)) = label.split_once('=') else {
            bail!("--label {label:?}: write KEY=VALUE");
        };
        labels.insert(k.to_owned(), v.to_owned());
    }
    let request = api::TokenRequest {
        spiffe_id: args.spiffe_id,
        ttl_secs: Some(args.ttl.as_secs()),
        labels,
    };
    let token: api::TokenResponse = call(client.post(api::ADMIN_TOKENS, &request))?;
    if args.json {
        print_json(&token)?;
    } else {
        println!("{}", shown(&token.token));
        eprintln!(
            "join token {} for {}, single use, expires at {} (Unix time)",
            shown(&token.token_id),
            shown(&token.spiffe_id),
            token.expires_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn identities(command: IdentitiesCommand) -> anyhow::Result<ExitCode> {
    match command {
        IdentitiesCommand::List {
            admin,
            expiring_within,
            status,
            unused_for,
            json,
        } => {
            let client = admin_client(&admin)?;
            let mut query = Vec::new();
            if let Some(s) = status {
                query.push(format!("status={s}"));
            }
            if let Some(d) = expiring_within {
                query.push(format!("expiring_within_secs={}", d.as_secs()));
            }
            if let Some(d) = unused_for {
                query.push(format!("unused_for_secs={}", d.as_secs().max(1)));
            }
            let path = if query.is_empty() {
                api::ADMIN_IDENTITIES.to_owned()
            } else {
                format!("{}?{}", api::ADMIN_IDENTITIES, query.join("&"))
            };
            let list: Vec<serde_json::Value> = call(client.get(&path))?;
            if json {
                print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let now = warden_control::store::unix_now();
            if list.is_empty() && unused_for.is_some() {
                eprintln!("no active identity went unused for that long");
            }
            println!(
                "{:<50} {:<8} {:>10} {:>12} {:<34} {:<24} {:<8} LABELS",
                "SPIFFE ID", "STATUS", "EXPIRES IN", "LAST SEEN", "SERIAL", "INSTANCE", "SIDECAR"
            );
            for i in &list {
                let expires = i["expires_at"]
                    .as_i64()
                    .map(|e| {
                        let left = e - now;
                        if left >= 0 {
                            humantime::format_duration(Duration::from_secs(left.unsigned_abs()))
                                .to_string()
                        } else {
                            "expired".to_owned()
                        }
                    })
                    .unwrap_or_else(|| "-".into());
                // The later of its last request made and served.
                let last_seen = [&i["last_seen_as_caller"], &i["last_seen_as_callee"]]
                    .iter()
                    .filter_map(|v| v.as_i64())
                    .max()
                    .map(|t| ago(now, t))
                    .unwrap_or_else(|| "never".into());
                println!(
                    "{:<50} {:<8} {:>10} {:>12} {:<34} {:<24} {:<8} {}",
                    shown(i["spiffe_id"].as_str().unwrap_or("")),
                    shown(i["status"].as_str().unwrap_or("")),
                    expires,
                    last_seen,
                    shown(i["last_serial"].as_str().unwrap_or("-")),
                    shown(i["instance"].as_str().unwrap_or("-")),
                    shown(i["sidecar_version"].as_str().unwrap_or("-")),
                    shown(&i["labels"].to_string()),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        IdentitiesCommand::Show { admin, target, .. } => {
            let client = admin_client(&admin)?;
            let detail: serde_json::Value =
                call(client.get(&format!("{}/{}", api::ADMIN_IDENTITIES, target)))?;
            print_json(&detail)?;
            Ok(ExitCode::SUCCESS)
        }
        IdentitiesCommand::Revoke {
            admin,
            target,
            reason,
        } => {
            let client = admin_client(&admin)?;
            let revoked: api::RevokeResponse = call(client.post(
                api::ADMIN_REVOCATIONS,
                &api::RevokeRequest { target, reason },
            ))?;
            println!(
                "revoked {} ({} SVIDs); sidecars refuse it from revocation {}",
                shown(&revoked.spiffe_id),
                revoked.svids_revoked,
                revoked.seq
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `warden endpoints list`: the discovery registry.
/// `warden bundle show|list`.
pub fn bundle(command: BundleCommand) -> anyhow::Result<ExitCode> {
    match command {
        BundleCommand::Show { format, admin } => {
            let client = admin_client(&admin)?;
            let listing: api::BundleListing = call(client.get(api::ADMIN_BUNDLES))?;
            match format {
                BundleFormat::Spiffe => println!("{}", listing.bundle),
                BundleFormat::Pem => {
                    let td = warden_proxy::identity::TrustDomain::new(&listing.trust_domain)?;
                    let bundle =
                        warden_proxy::identity::SpiffeBundle::parse(td, listing.bundle.as_bytes())?;
                    print!("{}", bundle.x509.to_pem());
                }
            }
        }
        BundleCommand::List { json, admin } => {
            let client = admin_client(&admin)?;
            let listing: api::BundleListing = call(client.get(api::ADMIN_BUNDLES))?;
            if json {
                println!("{}", json_shown(serde_json::to_string_pretty(&listing)?));
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{} (ours)  sequence {}",
                shown(&listing.trust_domain),
                listing.sequence
            );
            for link in &listing.federated {
                let state = match (&link.sequence, &link.last_error) {
                    (_, Some(e)) => format!("failing: {}", shown(e)),
                    (Some(_), None) => "ok".to_owned(),
                    (None, None) => "not fetched yet".to_owned(),
                };
                println!(
                    "{}  sequence {}  refreshed {}  from {} ({})  {state}",
                    shown(&link.trust_domain),
                    link.sequence.map_or("-".to_owned(), |s| s.to_string()),
                    link.refreshed_at
                        .map_or("never".to_owned(), |t| t.to_string()),
                    shown(&link.endpoint_url),
                    shown(&link.endpoint_spiffe_id),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn endpoints(command: EndpointsCommand) -> anyhow::Result<ExitCode> {
    let (admin, json) = match command {
        EndpointsCommand::List { admin, json } => (admin, json),
        EndpointsCommand::Add {
            address,
            spiffe_id,
            name,
            ports,
            admin,
        } => {
            let client = admin_client(&admin)?;
            let body = api::ServiceEndpoint {
                address,
                spiffe_id,
                name,
                ports,
            };
            let list: api::EndpointList = call(client.call(
                http::Method::PUT,
                api::ADMIN_ENDPOINTS,
                Some(serde_json::to_vec(&body)?),
                std::time::Duration::from_secs(10),
            ))?;
            for e in &list.endpoints {
                println!(
                    "{} -> {} ({})",
                    e.address,
                    shown(&e.spiffe_id),
                    shown(&e.instance)
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        EndpointsCommand::Remove { address, admin } => {
            let client = admin_client(&admin)?;
            let done: api::ServiceEndpointRemoved = call(client.call(
                http::Method::DELETE,
                &format!("{}?address={address}", api::ADMIN_ENDPOINTS),
                None,
                std::time::Duration::from_secs(10),
            ))?;
            if done.removed {
                println!("removed {address}");
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("{address} is not a service address");
            return Ok(ExitCode::FAILURE);
        }
    };
    let client = admin_client(&admin)?;
    let list: api::EndpointList = call(client.get(api::ADMIN_ENDPOINTS))?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = warden_control::store::unix_now();
    println!(
        "{:<40} {:<16} {:<50} {:<24} EXPIRES IN",
        "ADDRESS", "PORTS", "SPIFFE ID", "INSTANCE"
    );
    for e in &list.endpoints {
        let ports = if e.ports.is_empty() {
            "*".to_owned()
        } else {
            e.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let left = if e.expires_at == i64::MAX {
            "never (a service address)".to_owned()
        } else {
            let left = Duration::from_secs(e.expires_at.saturating_sub(now).max(0).unsigned_abs());
            humantime::format_duration(left).to_string()
        };
        println!(
            "{:<40} {:<16} {:<50} {:<24} {}",
            e.address,
            ports,
            shown(&e.spiffe_id),
            shown(&e.instance),
            left
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn policy_rollback(version: i64, admin: &AdminArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(admin)?;
    let done: serde_json::Value =
        call(client.post(api::ADMIN_POLICY_ROLLBACK, &api::PolicyRollback { version }))?;
    println!(
        "policy version {} ({}) is current",
        shown(&done["version"].to_string()),
        shown(done["digest"].as_str().unwrap_or(""))
    );
    Ok(ExitCode::SUCCESS)
}

pub fn policy_versions(admin: &AdminArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(admin)?;
    let versions: serde_json::Value = call(client.get(api::ADMIN_POLICIES))?;
    print_json(&versions)?;
    Ok(ExitCode::SUCCESS)
}

pub fn ca_rotate(grace: Duration, admin: &AdminArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(admin)?;
    let status: serde_json::Value = call(client.post(
        api::ADMIN_CA_ROTATE,
        &api::CaRotateRequest {
            grace_secs: Some(grace.as_secs()),
        },
    ))?;
    print_json(&status)?;
    Ok(ExitCode::SUCCESS)
}

pub fn ca_status(admin: &AdminArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(admin)?;
    let status: serde_json::Value = call(client.get(api::ADMIN_CA))?;
    print_json(&status)?;
    Ok(ExitCode::SUCCESS)
}
