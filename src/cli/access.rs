//! `warden access report|edges|graph` and `warden policy
//! propose|replay|push`: least privilege from observed use, computed by
//! the control plane over the usage its sidecars report.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use warden_proxy::control::api;

use super::control::{admin_client, ago, call, print_json};
use super::shown;
use crate::{AccessCommand, AdminArgs, PolicyPushArgs};

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

pub fn access(command: AccessCommand) -> anyhow::Result<ExitCode> {
    match command {
        AccessCommand::Report {
            since,
            identity,
            json,
            admin,
        } => report(since, identity.as_deref(), json, &admin),
        AccessCommand::Edges {
            new_since,
            json,
            admin,
        } => edges(new_since, json, &admin),
        AccessCommand::Graph { out, since, admin } => graph(&out, since, &admin),
    }
}

fn report(
    since: Duration,
    identity: Option<&str>,
    json: bool,
    admin: &AdminArgs,
) -> anyhow::Result<ExitCode> {
    let client = admin_client(admin)?;
    let mut path = format!("{}?since_secs={}", api::ADMIN_ACCESS_REPORT, secs(since));
    if let Some(id) = identity {
        path.push_str(&format!(
            "&identity={}",
            percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
        ));
    }
    let report: api::AccessReport = call(client.get(&path))?;
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "access over the last {} (policy version {})",
        humantime::format_duration(since),
        shown(&report.policy_version)
    );
    let now = warden_control::store::unix_now();
    for i in &report.identities {
        println!();
        println!("{}", shown(&i.identity));
        println!(
            "  {} allowed requests, {} denied; last call {}",
            i.requests,
            i.denied,
            i.last_seen_as_caller
                .map_or("never".to_owned(), |t| ago(now, t))
        );
        for g in &i.granted {
            println!(
                "  {:<6} {:<7} {:<24} {:<32} {:>8}  {}",
                if g.count > 0 { "used" } else { "UNUSED" },
                shown(&g.action),
                shown(&g.service),
                shown(&g.route),
                g.count,
                shown(&g.policies.join(","))
            );
        }
        println!("  => {}", shown(&i.summary));
    }
    if !report.idle_policies.is_empty() {
        println!();
        println!(
            "policies that decided nothing: {}",
            shown(&report.idle_policies.join(", "))
        );
    }
    for b in &report.broad_policies {
        println!(
            "broad policy {}: allows {} identities, {} used it",
            shown(&b.policy),
            b.covers,
            b.used_by
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn edges(new_since: Duration, json: bool, admin: &AdminArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(admin)?;
    let list: api::EdgeList = call(client.get(&format!(
        "{}?new_since_secs={}",
        api::ADMIN_ACCESS_EDGES,
        secs(new_since)
    )))?;
    if json {
        print_json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.edges.is_empty() {
        eprintln!(
            "no new edge in the last {}",
            humantime::format_duration(new_since)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let now = warden_control::store::unix_now();
    println!(
        "{:<14} {:<50} {:<50} {:<20} FROM",
        "FIRST SEEN", "CALLER", "CALLEE", "SERVICE"
    );
    for e in &list.edges {
        println!(
            "{:<14} {:<50} {:<50} {:<20} {}",
            ago(now, e.first_seen),
            shown(&e.caller),
            shown(&e.callee),
            shown(&e.service),
            if e.kind == "source" {
                shown(&e.value).into_owned()
            } else {
                "(first call)".to_owned()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn graph(out: &Path, since: Duration, admin: &AdminArgs) -> anyhow::Result<ExitCode> {
    let client = admin_client(admin)?;
    let page = call(client.call_raw(
        http::Method::GET,
        &format!("{}?since_secs={}", api::ADMIN_ACCESS_GRAPH, secs(since)),
        None,
        Duration::from_secs(60),
    ))?;
    if out == Path::new("-") {
        std::io::stdout().lock().write_all(&page)?;
    } else {
        std::fs::write(out, &page).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {} ({} bytes)", out.display(), page.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn propose(since: Duration, out: Option<&Path>, admin: &AdminArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = out
        && dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty: give a new or empty directory (nothing is overwritten)",
            dir.display()
        );
    }
    let client = admin_client(admin)?;
    let proposal: api::PolicyProposal = call(client.call(
        http::Method::GET,
        &format!("{}?since_secs={}", api::ADMIN_ACCESS_PROPOSE, secs(since)),
        None,
        Duration::from_secs(60),
    ))?;
    if proposal.files.is_empty() {
        eprintln!(
            "no allowed traffic was recorded in the last {}: nothing to propose, nothing written",
            humantime::format_duration(since)
        );
        return Ok(ExitCode::FAILURE);
    }
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            // Names as a policy directory holds them, nothing else.
            warden_proxy::authz::PolicyFiles::from_named(&proposal.files)
                .map_err(|e| anyhow::anyhow!("the control plane sent unusable files: {e}"))?;
            for (name, text) in &proposal.files {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            eprintln!(
                "wrote {} ({} permits from {} allowed requests, {} forbids kept); \
                 check it with `warden policy replay {}`",
                dir.display(),
                proposal.permits,
                proposal.requests,
                proposal.forbids_kept,
                dir.display()
            );
        }
        None => {
            for (name, text) in &proposal.files {
                println!("// ===== {name} =====");
                println!("{}", shown_keep_lines(text));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn shown_keep_lines(text: &str) -> String {
    text.lines()
        .map(|l| shown(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The directory's policy files as the control plane takes them.
fn named_files(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let files = warden_proxy::authz::read_policy_dir(dir)?;
    // Checked here first: the same loader the control plane and sidecars use.
    warden_proxy::authz::PolicySnapshot::from_files(files.clone())?;
    let mut named: BTreeMap<String, String> = files
        .sources
        .into_iter()
        .map(|s| (s.name, s.text))
        .collect();
    if let Some(schema) = files.schema {
        named.insert(
            warden_proxy::authz::policy_files::SCHEMA_FILE.to_owned(),
            schema,
        );
    }
    Ok(named)
}

fn replay_report(
    client: &warden_proxy::control::ControlClient,
    files: &BTreeMap<String, String>,
    since: Duration,
) -> anyhow::Result<api::ReplayReport> {
    let body = serde_json::to_vec(&api::ReplayRequest {
        files: files.clone(),
        since_secs: secs(since),
    })?;
    call(client.call(
        http::Method::POST,
        api::ADMIN_ACCESS_REPLAY,
        Some(body),
        Duration::from_secs(120),
    ))
}

fn print_changes(report: &api::ReplayReport, since: Duration) {
    let (breaks, allows): (Vec<_>, Vec<_>) = report.changes.iter().partition(|c| c.was == "allow");
    let requests = |v: &[&api::ReplayChange]| v.iter().map(|c| c.count).sum::<u64>();
    println!(
        "replayed {} recorded aggregates of the last {}: {} would be denied ({} requests), {} newly allowed ({} requests)",
        report.replayed,
        humantime::format_duration(since),
        breaks.len(),
        requests(&breaks),
        allows.len(),
        requests(&allows)
    );
    for c in &report.changes {
        println!(
            "  {:<5} -> {:<5} {:<50} {:<7} {:<20} {:<32} {:>8}",
            c.was,
            c.now,
            shown(&c.caller),
            shown(&c.action),
            shown(&c.service),
            shown(&c.route),
            c.count
        );
    }
}

pub fn replay(
    dir: &Path,
    since: Duration,
    json: bool,
    admin: &AdminArgs,
) -> anyhow::Result<ExitCode> {
    let files = named_files(dir).with_context(|| format!("{}", dir.display()))?;
    let client = admin_client(admin)?;
    let report = replay_report(&client, &files, since)?;
    if json {
        print_json(&report)?;
    } else {
        print_changes(&report, since);
    }
    Ok(if report.changes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `warden policy push`: the replay's summary first; a change is pushed
/// only when confirmed (or with --yes).
pub fn policy_push(args: &PolicyPushArgs) -> anyhow::Result<ExitCode> {
    let files = named_files(&args.dir).with_context(|| format!("{}", args.dir.display()))?;
    let client = admin_client(&args.admin)?;
    match replay_report(&client, &files, args.since) {
        Ok(report) => {
            print_changes(&report, args.since);
            if !report.changes.is_empty() && !args.yes && !confirm()? {
                eprintln!("not pushed");
                return Ok(ExitCode::FAILURE);
            }
        }
        Err(e) if args.yes => eprintln!("warning: no replay before the push: {e}"),
        Err(e) => bail!(
            "cannot replay the recorded usage before the push ({e}); push with --yes to skip it"
        ),
    }
    let pushed: api::PolicyPushResponse =
        call(client.post(api::ADMIN_POLICIES, &api::PolicyPush { files }))?;
    if pushed.changed {
        println!(
            "policy version {} ({}, {} policies) is current",
            pushed.version,
            shown(&pushed.digest),
            pushed.policies
        );
    } else {
        println!(
            "unchanged: version {} ({}) is already current",
            pushed.version,
            shown(&pushed.digest)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal (or reads a line from stdin): push anyway?
fn confirm() -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("push this policy set anyway? [y/N] ");
        std::io::stderr().flush()?;
    } else {
        eprintln!("push this policy set anyway? (answer y on stdin, or use --yes)");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
