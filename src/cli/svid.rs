use std::process::ExitCode;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;
use warden_control::ca::CertificateAuthority;
use warden_proxy::identity::{
    ExpectedIdentity, PeerRole, SpiffeId, Timestamp, TrustBundle, TrustBundleSet, inspect_leaf,
    verify_peer_svid,
};

use super::read_file;
use crate::{SvidInspectArgs, SvidIssueArgs};

pub fn issue(args: SvidIssueArgs) -> anyhow::Result<ExitCode> {
    let spiffe_id = SpiffeId::parse(&args.spiffe_id)
        .with_context(|| format!("--spiffe-id {:?} is not a valid SPIFFE ID", args.spiffe_id))?;
    let ca = CertificateAuthority::load(&args.ca_dir)?;
    let svid = ca.issue_to_dir(&spiffe_id, args.ttl, &args.out)?;
    let (key, cert, bundle) = (
        args.out.join("svid.key"),
        args.out.join("svid.pem"),
        args.out.join("bundle.pem"),
    );
    println!("issued {}", svid.spiffe_id);
    println!("  serial:      {}", svid.serial);
    println!("  valid:       {} .. {}", svid.not_before, svid.not_after);
    println!("  certificate: {}", cert.display());
    println!("  key:         {} (mode 0600)", key.display());
    println!("  bundle:      {}", bundle.display());
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct InspectOutput {
    file: String,
    spiffe_id: Option<String>,
    uri_sans: Vec<String>,
    serial: String,
    subject: String,
    issuer: String,
    not_before: String,
    not_after: String,
    seconds_left: i64,
    key: String,
    chain_length: usize,
    broken_rules: Vec<String>,
    bundle_check: Option<Result<(), String>>,
}

pub fn inspect(args: SvidInspectArgs) -> anyhow::Result<ExitCode> {
    let file = args.file.display().to_string();
    let bytes = read_file(&args.file)?;
    let chain: Vec<CertificateDer<'static>> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN")
    {
        CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("{file}: malformed PEM: {e}"))?
    } else {
        vec![CertificateDer::from(bytes)]
    };
    let leaf = chain
        .first()
        .ok_or_else(|| anyhow::anyhow!("{file}: holds no certificate"))?;
    let now = Timestamp::now();
    let report = inspect_leaf(leaf, now).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;

    let bundle_check = match &args.bundle {
        None => None,
        Some(path) => {
            let td = report
                .spiffe_id
                .as_ref()
                .map(SpiffeId::trust_domain)
                .context("cannot check against a bundle: the certificate has no valid SPIFFE ID")?;
            let bundle = TrustBundle::from_bytes(td, &read_file(path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let bundles = TrustBundleSet::new().with(bundle);
            let mut result = Ok(());
            for role in [PeerRole::Client, PeerRole::Server] {
                if let Err(e) = verify_peer_svid(
                    &bundles,
                    leaf,
                    &chain[1..],
                    UnixTime::now(),
                    role,
                    &ExpectedIdentity::AnyTrusted,
                ) {
                    result = Err(e.to_string());
                    break;
                }
            }
            Some(result)
        }
    };

    let out = InspectOutput {
        file,
        spiffe_id: report.spiffe_id.as_ref().map(ToString::to_string),
        uri_sans: report.uri_sans.clone(),
        serial: report.serial.clone(),
        subject: report.subject.clone(),
        issuer: report.issuer.clone(),
        not_before: report.not_before.to_string(),
        not_after: report.not_after.to_string(),
        seconds_left: report.not_after.0 - now.0,
        key: report.key.clone(),
        chain_length: chain.len(),
        broken_rules: report.broken.iter().map(ToString::to_string).collect(),
        bundle_check,
    };
    let ok = out.broken_rules.is_empty() && !matches!(out.bundle_check, Some(Err(_)));
    if args.json {
        println!("{}", super::json_shown(serde_json::to_string_pretty(&out)?));
    } else {
        print_text(&out);
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(out: &InspectOutput) {
    println!("file:        {}", out.file);
    match &out.spiffe_id {
        Some(id) => println!("spiffe id:   {id}"),
        None => println!("spiffe id:   (none valid; URI SANs: {:?})", out.uri_sans),
    }
    println!("serial:      {}", out.serial);
    println!("subject:     {}", super::shown(&out.subject));
    println!("issuer:      {}", super::shown(&out.issuer));
    println!("not before:  {}", out.not_before);
    println!("not after:   {}", out.not_after);
    println!("time left:   {}", describe_left(out.seconds_left));
    println!("key:         {}", out.key);
    println!("chain:       {} certificate(s)", out.chain_length);
    if out.broken_rules.is_empty() {
        println!("SPIFFE X.509-SVID rules: all satisfied");
    } else {
        println!("SPIFFE X.509-SVID rules broken:");
        for rule in &out.broken_rules {
            println!("  - certificate {rule}");
        }
    }
    match &out.bundle_check {
        None => {}
        Some(Ok(())) => println!("bundle:      chain validates"),
        Some(Err(e)) => println!("bundle:      DOES NOT validate: {e}"),
    }
}

fn describe_left(seconds: i64) -> String {
    let human = |s: u64| humantime::format_duration(std::time::Duration::from_secs(s)).to_string();
    if seconds >= 0 {
        human(seconds.unsigned_abs())
    } else {
        format!("expired {} ago", human(seconds.unsigned_abs()))
    }
}
