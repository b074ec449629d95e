//! `warden inject`, `warden inject serve` and `warden install`.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use warden_proxy::identity::{SpiffeId, TrustBundle, TrustDomain};

use crate::inject::InjectOptions;
use crate::inject::install::{self, InstallOptions};
use crate::inject::manifest::{self, Format};
use crate::inject::webhook::{self, WebhookOptions};
use crate::{InjectArgs, InjectServeArgs, InstallArgs, MeshArgs};

/// The injection options from the flags; the bundle is checked to be PEM
/// certificates (it is copied into every pod).
fn inject_options(mesh: &MeshArgs) -> anyhow::Result<InjectOptions> {
    let bundle = mesh
        .bundle
        .as_deref()
        .context("--bundle is required: the trust bundle sidecars authenticate the control plane with (the warden-trust-bundle ConfigMap)")?;
    let trust_domain = mesh
        .trust_domain
        .as_deref()
        .context("--trust-domain is required (the CA's; `warden ca init --trust-domain`)")?;
    let trust_domain = trust_domain
        .parse::<TrustDomain>()
        .map_err(|e| anyhow::anyhow!("--trust-domain {trust_domain:?}: {e}"))?;
    let pem = std::fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    let parsed = TrustBundle::from_bytes(trust_domain.clone(), &pem)
        .map_err(|e| anyhow::anyhow!("--bundle {}: {e}", bundle.display()))?;
    let server_id = SpiffeId::parse(&format!("spiffe://{trust_domain}/warden/control"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    mesh.control_address
        .parse::<warden_proxy::control::ControlAddr>()
        .map_err(|e| anyhow::anyhow!("--control-address: {e}"))?;
    if let Some(policy) = &mesh.image_pull_policy {
        anyhow::ensure!(
            ["Always", "IfNotPresent", "Never"].contains(&policy.as_str()),
            "--image-pull-policy {policy:?}: Always, IfNotPresent or Never"
        );
    }
    anyhow::ensure!(!mesh.image.is_empty(), "--image is empty");
    let ttl = mesh.token_ttl.as_secs();
    anyhow::ensure!(
        (600..=u64::from(u32::MAX)).contains(&ttl),
        "--token-ttl must be at least 10m (the Kubernetes minimum)"
    );
    anyhow::ensure!(
        mesh.proxy_uid != 0,
        "--proxy-uid 0: the sidecar must not run as root"
    );
    Ok(InjectOptions {
        image: mesh.image.clone(),
        image_pull_policy: mesh.image_pull_policy.clone(),
        proxy_uid: mesh.proxy_uid,
        control_address: mesh.control_address.clone(),
        control_server_id: server_id.to_string(),
        bundle_pem: parsed.to_pem(),
        token_ttl_seconds: u32::try_from(ttl).unwrap_or(u32::MAX),
    })
}

/// `warden inject [FILES] [--uninject]`.
pub fn inject(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let options = if args.uninject {
        None
    } else {
        Some(inject_options(&args.mesh)?)
    };
    let mut inputs = Vec::new();
    if args.files.is_empty() || args.files.iter().any(|f| f.as_os_str() == "-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        inputs.push(("standard input".to_owned(), text));
    }
    for file in args.files.iter().filter(|f| f.as_os_str() != "-") {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        inputs.push((file.display().to_string(), text));
    }
    let mut format = None;
    let mut documents = Vec::new();
    for (name, text) in &inputs {
        let (this, docs) = manifest::parse(text).with_context(|| name.clone())?;
        format.get_or_insert(this);
        documents.extend(docs);
    }
    let original = documents.clone();
    // A placeholder for --uninject, which reads no option.
    let options = options.unwrap_or_else(|| InjectOptions {
        image: String::new(),
        image_pull_policy: None,
        proxy_uid: 0,
        control_address: String::new(),
        control_server_id: String::new(),
        bundle_pem: String::new(),
        token_ttl_seconds: 0,
    });
    let reports = manifest::transform(&mut documents, &options, args.uninject);
    let mut stderr = std::io::stderr().lock();
    let mut failed = false;
    for report in &reports {
        writeln!(
            stderr,
            "{}",
            crate::cli::shown(&manifest::describe(report, args.uninject))
        )?;
        failed |= manifest::is_failure(report);
    }
    let workloads = reports
        .iter()
        .any(|r| !matches!(&r.result, Err(crate::inject::Refused(m)) if m.starts_with("kind ")));
    if !workloads {
        writeln!(stderr, "no pod or workload in the input; nothing injected")?;
        failed = true;
    }
    drop(stderr);
    // What was refused stays exactly as it was read.
    debug_assert_eq!(original.len(), documents.len());
    let out = manifest::render(format.unwrap_or(Format::Yaml), &documents)
        .map_err(|e| anyhow::anyhow!("cannot write the result: {e}"))?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `warden inject serve`.
pub fn serve(args: InjectServeArgs) -> anyhow::Result<ExitCode> {
    let options = WebhookOptions {
        inject: inject_options(&args.mesh)?,
        control_namespace: args.control_namespace,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = warden_proxy::sidecar::bind_listener("--listen", args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let address = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "webhook {address}")?;
        writeln!(out, "started")?;
        out.flush()?;
        drop(out);
        tracing::info!(%address, "injection webhook started");
        let shutdown = async {
            let _ = crate::cli::proxy::wait_for_termination().await;
        };
        webhook::serve(listener, &args.cert, &args.key, options, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `warden install`.
pub fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let options = InstallOptions {
        namespace: args.namespace,
        image: args.image,
        ca_dir: args.ca_dir,
        replicas: args.replicas,
        injector_replicas: args.injector_replicas,
        database: args.database,
        storage: args.storage,
        k8s_issuer: args.k8s_issuer,
        k8s_jwks: args.k8s_jwks,
        k8s_allow: args.k8s_allow,
        proxy_uid: args.proxy_uid,
    };
    let documents = install::manifests(&options)?;
    let mut out = manifest::render(Format::Yaml, &documents)
        .map_err(|e| anyhow::anyhow!("cannot write the manifests: {e}"))?;
    out.push_str(&install::example(&options.namespace));
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}
