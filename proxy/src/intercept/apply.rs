//! Installing, comparing and removing the rules with the system's own
//! tools (`iptables`/`ip6tables`, their `-legacy` variants, or `nft`),
//! touching only Warden's chains or table. Every step is a command line, so
//! `--dry-run` prints exactly what would run.

use std::process::Command;

use super::rules::{Family, Interception, IptablesRules};

/// Which tool manages the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables`/`ip6tables` as installed (nft-backed on current distributions).
    Iptables,
    /// `iptables-legacy`/`ip6tables-legacy` (the x_tables kernel interface).
    IptablesLegacy,
    /// `nft`: one `inet` table for both families.
    Nftables,
}

impl Backend {
    /// The first backend whose tool is installed: iptables, then nft.
    pub fn detect() -> Result<Backend, InitError> {
        if found("iptables") {
            Ok(Backend::Iptables)
        } else if found("nft") {
            Ok(Backend::Nftables)
        } else {
            Err(InitError::Missing(
                "neither iptables nor nft is installed (Debian: apt-get install iptables nftables)"
                    .into(),
            ))
        }
    }

    fn iptables(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::IptablesLegacy, Family::V4) => "iptables-legacy",
            (Backend::IptablesLegacy, Family::V6) => "ip6tables-legacy",
            (_, Family::V4) => "iptables",
            (_, Family::V6) => "ip6tables",
        }
    }
}

fn found(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Missing(String),
    #[error(
        "{command}: {message} (warden init needs CAP_NET_ADMIN in the workload's network namespace: run it as root, or as an init container with that capability)"
    )]
    Permission { command: String, message: String },
    #[error("{command}: {message}")]
    Failed { command: String, message: String },
}

/// What a run did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The commands run (or to run); empty when nothing needed changing.
    pub commands: Vec<Vec<String>>,
}

impl Outcome {
    pub fn changed(&self) -> bool {
        !self.commands.is_empty()
    }
}

/// Installs the rules for `families` (or, with `dry_run`, only works out
/// the commands). Rules already exactly in place are left alone.
pub fn install(
    interception: &Interception,
    backend: Backend,
    families: &[Family],
    dry_run: bool,
) -> Result<Outcome, InitError> {
    if backend == Backend::Nftables {
        return nft_install(interception, dry_run);
    }
    let mut commands = Vec::new();
    for &family in families {
        let tool = backend.iptables(family);
        let current = run(&[tool, "-t", "nat", "-S"])?;
        commands.extend(iptables_install(
            tool,
            &interception.iptables(family),
            &current,
        ));
    }
    run_all(&commands, dry_run)?;
    Ok(Outcome { commands })
}

/// nftables: our table replaced in one transaction (nft lists a ruleset in
/// its own spelling, so what is installed is compared before and after
/// rather than with what we give it): the same table twice is no change.
fn nft_install(interception: &Interception, dry_run: bool) -> Result<Outcome, InitError> {
    let table = interception.nft_table();
    let command = nft_replace(&table, &interception.nftables());
    if dry_run {
        return Ok(Outcome {
            commands: vec![command],
        });
    }
    let before = nft_table(&table)?;
    run_all(std::slice::from_ref(&command), false)?;
    let after = nft_table(&table)?;
    Ok(Outcome {
        commands: if before == after {
            Vec::new()
        } else {
            vec![command]
        },
    })
}

fn run_all(commands: &[Vec<String>], dry_run: bool) -> Result<(), InitError> {
    if !dry_run {
        for command in commands {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            run(&args)?;
        }
    }
    Ok(())
}

/// Removes exactly what `install` adds; nothing installed is no change.
pub fn remove(
    interception: &Interception,
    backend: Backend,
    families: &[Family],
    dry_run: bool,
) -> Result<Outcome, InitError> {
    let mut commands = Vec::new();
    match backend {
        Backend::Nftables => {
            let table = interception.nft_table();
            if nft_table(&table)?.is_some() {
                commands.push(argv(&["nft", "delete", "table", "inet", &table]));
            }
        }
        _ => {
            for &family in families {
                let tool = backend.iptables(family);
                let current = run(&[tool, "-t", "nat", "-S"])?;
                commands.extend(iptables_remove(
                    tool,
                    &interception.iptables(family),
                    &current,
                ));
            }
        }
    }
    run_all(&commands, dry_run)?;
    Ok(Outcome { commands })
}

/// The commands that make `current` (`iptables -t nat -S`) hold `wanted`:
/// none when it already does. Our chains are flushed and refilled whole;
/// each jump into them is left alone if present exactly once.
pub fn iptables_install(tool: &str, wanted: &IptablesRules, current: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = current.lines().map(str::trim).collect();
    let mut commands = Vec::new();
    for chain in &wanted.chains {
        let exists = lines.contains(&format!("-N {chain}").as_str());
        let prefix = format!("-A {chain} ");
        let have: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with(&prefix))
            .collect();
        let want: Vec<&str> = wanted
            .rules
            .iter()
            .map(String::as_str)
            .filter(|r| r.starts_with(&prefix))
            .collect();
        if exists && have == want {
            continue;
        }
        let step = if exists { "-F" } else { "-N" };
        commands.push(argv(&[tool, "-t", "nat", step, chain]));
        for rule in want {
            let mut command = argv(&[tool, "-t", "nat"]);
            command.extend(rule.split(' ').map(str::to_owned));
            commands.push(command);
        }
    }
    for (chain, spec) in &wanted.jumps {
        let line = format!("-A {chain} {spec}");
        let count = lines.iter().filter(|l| **l == line).count();
        if count == 1 {
            continue;
        }
        for _ in 0..count {
            commands.push(rule_command(tool, "-D", chain, spec));
        }
        commands.push(rule_command(tool, "-A", chain, spec));
    }
    commands
}

/// The commands that take `wanted`'s jumps and chains out of `current`.
pub fn iptables_remove(tool: &str, wanted: &IptablesRules, current: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = current.lines().map(str::trim).collect();
    let mut commands = Vec::new();
    for (chain, spec) in &wanted.jumps {
        let line = format!("-A {chain} {spec}");
        for _ in lines.iter().filter(|l| **l == line) {
            commands.push(rule_command(tool, "-D", chain, spec));
        }
    }
    for chain in &wanted.chains {
        if lines.contains(&format!("-N {chain}").as_str()) {
            commands.push(argv(&[tool, "-t", "nat", "-F", chain]));
            commands.push(argv(&[tool, "-t", "nat", "-X", chain]));
        }
    }
    commands
}

fn rule_command(tool: &str, op: &str, chain: &str, spec: &str) -> Vec<String> {
    let mut command = argv(&[tool, "-t", "nat", op, chain]);
    command.extend(spec.split(' ').map(str::to_owned));
    command
}

/// `nft -f -` with the table declared, deleted and declared again in one
/// transaction: the result is the wanted table, atomically.
fn nft_replace(table: &str, wanted: &str) -> Vec<String> {
    let script = format!("table inet {table}\ndelete table inet {table}\n{wanted}");
    argv(&["nft", "-f", "-", &script])
}

/// The table as `nft` lists it, None if there is none.
fn nft_table(table: &str) -> Result<Option<String>, InitError> {
    match run(&["nft", "-nn", "list", "table", "inet", table]) {
        Ok(text) => Ok(Some(normalize_nft(&text))),
        Err(InitError::Failed { message, .. }) if message.contains("No such file") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whitespace-insensitive form of a ruleset, for comparison.
fn normalize_nft(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

/// Runs a command and returns its standard output.
fn run(args: &[&str]) -> Result<String, InitError> {
    use std::io::Write;
    let (program, rest) = args.split_first().expect("a command");
    // `nft -f - SCRIPT`: the script goes to nft's standard input.
    let (rest, stdin_script) = match rest {
        ["-f", "-", script] => (&rest[..2], Some(*script)),
        _ => (rest, None),
    };
    let shown = format!("{program} {}", rest.join(" "));
    let mut command = Command::new(program);
    command
        .args(rest)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => InitError::Missing(format!(
            "{program} is not installed (Debian: apt-get install {})",
            if program.starts_with("nft") {
                "nftables"
            } else {
                "iptables"
            }
        )),
        _ => InitError::Failed {
            command: shown.clone(),
            message: e.to_string(),
        },
    })?;
    if let (Some(script), Some(mut stdin)) = (stdin_script, child.stdin.take()) {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| InitError::Failed {
                command: shown.clone(),
                message: e.to_string(),
            })?;
    }
    let output = child.wait_with_output().map_err(|e| InitError::Failed {
        command: shown.clone(),
        message: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let denied = [
        "Permission denied",
        "Operation not permitted",
        "you must be root",
    ];
    if denied.iter().any(|d| message.contains(d)) {
        Err(InitError::Permission {
            command: shown,
            message,
        })
    } else {
        Err(InitError::Failed {
            command: shown,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> IptablesRules {
        Interception::new(1337).iptables(Family::V4)
    }

    #[test]
    fn nothing_installed_creates_chains_rules_and_jumps() {
        let commands = iptables_install("iptables", &wanted(), "-P PREROUTING ACCEPT\n");
        let text: Vec<String> = commands.iter().map(|c| c.join(" ")).collect();
        assert_eq!(text[0], "iptables -t nat -N WARDEN_INBOUND");
        assert!(
            text.contains(&"iptables -t nat -A PREROUTING -p tcp -j WARDEN_INBOUND".to_owned())
        );
        assert!(text.contains(&"iptables -t nat -A OUTPUT -p tcp -j WARDEN_OUTPUT".to_owned()));
        assert!(text.contains(&"iptables -t nat -A WARDEN_OUTPUT -o lo -j RETURN".to_owned()));
    }

    #[test]
    fn exactly_what_is_wanted_is_no_change_and_a_drift_is_repaired() {
        let w = wanted();
        let mut installed: Vec<String> = w.chains.iter().map(|c| format!("-N {c}")).collect();
        installed.extend(w.rules.iter().cloned());
        installed.extend(w.jumps.iter().map(|(c, s)| format!("-A {c} {s}")));
        let current = installed.join("\n");
        assert!(iptables_install("iptables", &w, &current).is_empty());
        // One rule lost and a jump doubled: that chain is refilled and the
        // jump left once.
        let drifted = current.replace("-A WARDEN_OUTPUT -o lo -j RETURN\n", "")
            + "\n-A OUTPUT -p tcp -j WARDEN_OUTPUT";
        let text: Vec<String> = iptables_install("iptables", &w, &drifted)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert!(
            text.contains(&"iptables -t nat -F WARDEN_OUTPUT".to_owned()),
            "{text:?}"
        );
        assert!(
            !text.iter().any(|t| t.contains("-F WARDEN_INBOUND")),
            "{text:?}"
        );
        let deletes = text.iter().filter(|t| t.contains("-D OUTPUT")).count();
        assert_eq!(deletes, 2, "{text:?}");
        // Removing deletes the jumps, then flushes and deletes the chains.
        let removal: Vec<String> = iptables_remove("iptables", &w, &current)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        assert_eq!(
            removal,
            [
                "iptables -t nat -D PREROUTING -p tcp -j WARDEN_INBOUND",
                "iptables -t nat -D OUTPUT -p tcp -j WARDEN_OUTPUT",
                "iptables -t nat -F WARDEN_INBOUND",
                "iptables -t nat -X WARDEN_INBOUND",
                "iptables -t nat -F WARDEN_OUTPUT",
                "iptables -t nat -X WARDEN_OUTPUT",
            ]
        );
        assert!(iptables_remove("iptables", &w, "-P OUTPUT ACCEPT").is_empty());
    }
}
