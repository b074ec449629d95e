use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use warden_proxy::sidecar::{LogControl, Sidecar, SidecarConfig};

use crate::ProxyArgs;

/// `warden proxy`: loads and validates the configuration, binds every
/// listener, prints one `LISTENER ADDRESS` line per listener on stdout (so a
/// supervisor or test can find ports chosen with `:0`), then serves until
/// SIGTERM or SIGINT and drains.
pub fn run(args: ProxyArgs, log_control: LogControl) -> anyhow::Result<ExitCode> {
    let workers = std::num::NonZeroUsize::new(args.workers)
        .context("--workers (WARDEN_WORKERS) must be at least 1")?;
    exit_with_parent()?;
    warden_proxy::process::raise_open_files_limit();
    let config = SidecarConfig::load(args.config.as_deref(), std::env::vars(), &args.set)
        .context("invalid configuration")?;
    // This thread is worker 0 (and runs the rest of the sidecar); each
    // further worker gets a thread and a runtime of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Take over SIGHUP before anything else: it asks for a policy reload,
        // and its default action would kill the process.
        let _hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot handle SIGHUP")?;
        let sidecar = Sidecar::start_with_workers(config, Some(log_control), workers).await?;
        let addresses = sidecar.addresses().clone();
        let mut out = std::io::stdout().lock();
        writeln!(out, "admin {}", addresses.admin)?;
        if let Some(inbound) = addresses.inbound {
            writeln!(out, "inbound {inbound}")?;
        }
        if let Some(proxy) = addresses.proxy {
            writeln!(out, "proxy {proxy}")?;
        }
        for (i, opaque) in addresses.opaque.iter().enumerate() {
            writeln!(out, "opaque[{i}] {opaque}")?;
        }
        for (i, route) in addresses.outbound.iter().enumerate() {
            writeln!(out, "outbound[{i}] {route}")?;
        }
        if let Some(transparent) = addresses.transparent {
            writeln!(out, "transparent {transparent}")?;
        }
        writeln!(out, "started")?;
        out.flush()?;
        drop(out);
        tracing::info!(?addresses, "warden proxy started");
        wait_for_termination().await?;
        tracing::info!("draining");
        let left = sidecar.drain().await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain deadline passed with connections open"
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The environment variable a supervisor (`warden demo`) sets to its own
/// pid so that the sidecar it starts does not outlive it.
pub(crate) const PARENT_PID_ENV: &str = "WARDEN_PARENT_PID";

/// With `WARDEN_PARENT_PID` set: asks the kernel for SIGTERM (a drain) when
/// the parent dies, however it dies (a SIGKILL included), and exits at once
/// if the parent is already gone (it died before the request was made).
fn exit_with_parent() -> anyhow::Result<()> {
    let Some(expected) = std::env::var_os(PARENT_PID_ENV) else {
        return Ok(());
    };
    let expected: i32 = expected
        .to_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{PARENT_PID_ENV} must be a process id"))?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .context("cannot ask to be signalled when the parent exits")?;
    let parent = rustix::process::Pid::as_raw(rustix::process::getppid());
    if parent != expected {
        anyhow::bail!("the parent process {expected} is gone; not starting");
    }
    Ok(())
}

pub(crate) async fn wait_for_termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
