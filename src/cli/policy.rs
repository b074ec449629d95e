use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use warden_proxy::authz::{
    HttpRequestFacts, Mode, Outcome, Peer, PolicyEngine, PolicySnapshot, ServiceInfo,
    TcpConnectionFacts, TlsVersion, UnauthenticatedKind,
};
use warden_proxy::identity::SpiffeId;
use warden_proxy::sidecar::normalize::{PathRules, normalize_host, normalize_path};

use crate::{PolicyCheckArgs, PolicyEvalArgs};

pub fn check(args: PolicyCheckArgs) -> anyhow::Result<ExitCode> {
    match PolicySnapshot::load_dir(&args.dir) {
        Ok(snapshot) => {
            if snapshot.is_empty() {
                println!(
                    "WARNING: {} holds no policies: every request would be DENIED",
                    args.dir.display()
                );
            } else {
                println!("ok: {} policies valid against the schema", snapshot.len());
            }
            println!("version: {}", snapshot.version());
            println!(
                "declared headers: {}",
                snapshot.declared_headers().join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!(
                "{}: {}",
                args.dir.display(),
                super::shown_lines(&e.to_string())
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn eval(args: PolicyEvalArgs) -> anyhow::Result<ExitCode> {
    let snapshot =
        PolicySnapshot::load_dir(&args.dir).with_context(|| format!("{}", args.dir.display()))?;
    let peer = if args.principal == "unauthenticated" {
        Peer::Unauthenticated(UnauthenticatedKind::Plaintext)
    } else {
        Peer::Workload(SpiffeId::parse(&args.principal).with_context(|| {
            format!(
                "--principal {:?} is not a SPIFFE ID (or `unauthenticated`)",
                args.principal
            )
        })?)
    };
    let service = match &args.service_id {
        Some(id) => {
            let id = SpiffeId::parse(id)
                .with_context(|| format!("--service-id {id:?} is not a SPIFFE ID"))?;
            ServiceInfo::from_identity(&args.service, &id)
        }
        None => ServiceInfo {
            name: args.service.clone(),
            trust_domain: match &peer {
                Peer::Workload(id) => id.trust_domain_name().to_owned(),
                Peer::Unauthenticated(_) => String::new(),
            },
            namespace: None,
        },
    };
    let headers: Vec<(String, String)> = args
        .header
        .iter()
        .map(|h| {
            h.split_once('=')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .with_context(|| format!("--header {h:?} must be NAME=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let now = match &args.at {
        Some(t) => {
            let parsed =
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .with_context(|| format!("--at {t:?} is not an RFC 3339 time"))?;
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(
                    u64::try_from(parsed.unix_timestamp()).unwrap_or(0),
                )
        }
        None => SystemTime::now(),
    };
    // Decided over the request as a sidecar with the default rules would
    // see it: the normalized path and host.
    let rules = PathRules::default();
    let path = normalize_path(&args.path, rules)
        .map_err(|e| anyhow::anyhow!("--path {:?}: {e} (a sidecar answers 400)", args.path))?;
    let host = normalize_host(&args.host, 80)
        .map_err(|e| anyhow::anyhow!("--host {:?}: {e} (a sidecar answers 400)", args.host))?;
    let tls_version = if matches!(peer, Peer::Workload(_)) {
        TlsVersion::Tls13
    } else {
        TlsVersion::Plaintext
    };
    let engine = Arc::new(PolicyEngine::new(service, Mode::Enforce));
    let version = snapshot.version().to_owned();
    engine.install(snapshot);
    let active = engine.snapshot().context("policy set vanished")?;
    let authorizer = engine.for_peer(peer);
    let decision = if args.tcp {
        let Some(port) = host.port else {
            anyhow::bail!(
                "--tcp decides a connection to a port: give it in --host (`--host db:5432`)"
            );
        };
        authorizer.authorize_tcp(&TcpConnectionFacts {
            port,
            source_ip: args.source_ip,
            tls_version,
            now,
        })
    } else {
        authorizer.authorize_http(&HttpRequestFacts {
            method: &args.method,
            path: &path,
            host: &host.name,
            port: host.port.unwrap_or(80),
            source_ip: args.source_ip,
            headers: &header_refs,
            tls_version,
            now,
        })
    };
    if args.json {
        println!("{}", decision.audit_json());
    } else {
        if *path != args.path || host.authority() != args.host {
            println!("normalized:     {} {}", host.authority(), path);
        }
        println!(
            "decision:       {}",
            decision.decision.as_str().to_uppercase()
        );
        println!("principal:      {}", decision.principal);
        println!("action:         Action::\"{}\"", decision.action);
        println!("resource:       {}", decision.resource);
        if decision.policies.is_empty() {
            let why = if decision.decision == Outcome::Deny && decision.errors.is_empty() {
                " (default deny: no permit matched)"
            } else {
                ""
            };
            println!("policies:       none{why}");
        }
        for id in &decision.policies {
            let at = active
                .origin(id)
                .map(|o| format!(" ({o})"))
                .unwrap_or_default();
            println!("policies:       {id}{at}");
        }
        for e in &decision.errors {
            println!("error:          {}", super::shown(e));
        }
        println!("policy version: {version}");
    }
    Ok(if decision.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
