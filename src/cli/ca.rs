use std::process::ExitCode;

use anyhow::Context;
use warden_control::ca::{CertificateAuthority, InitOptions, ParentCa};
use warden_proxy::identity::{Timestamp, TrustDomain};

use super::read_file;
use crate::CaInitArgs;

pub fn init(args: CaInitArgs) -> anyhow::Result<ExitCode> {
    let trust_domain = TrustDomain::new(&args.trust_domain).with_context(|| {
        format!(
            "--trust-domain {:?} is not a valid trust domain",
            args.trust_domain
        )
    })?;
    let mut options = InitOptions::new(trust_domain);
    options.ca_ttl = args.ca_ttl;
    options.default_svid_ttl = args.default_svid_ttl;
    options.max_svid_ttl = args.max_svid_ttl;
    if let (Some(cert), Some(key)) = (&args.root_cert, &args.root_key) {
        options.parent = Some(ParentCa {
            cert_pem: read_file(cert)?,
            key_pem: String::from_utf8(read_file(key)?)
                .with_context(|| format!("{} is not PEM text", key.display()))?,
        });
    }
    let ca = CertificateAuthority::init(&args.dir, &options)?;
    let kind = if options.parent.is_some() {
        "intermediate CA"
    } else {
        "root CA"
    };
    println!(
        "created {kind} for trust domain {} in {}",
        ca.trust_domain(),
        args.dir.display()
    );
    println!(
        "  valid until:  {}",
        Timestamp::from_system_time(ca.not_after())
    );
    println!("  trust bundle: {}", args.dir.join("bundle.pem").display());
    println!(
        "  signing key:  {} (mode 0600)",
        args.dir.join("ca.key").display()
    );
    Ok(ExitCode::SUCCESS)
}
