//! A `warden proxy` process for the load benches: started with `--set`
//! flags, its listeners read from the lines it prints before `started`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Starts `bin proxy --set ...` with `env`, quiet but for errors; the
/// process and its listeners by name (`inbound`, `outbound[0]`, `admin`).
pub fn start(
    bin: &str,
    settings: &[String],
    env: &[(String, String)],
) -> Result<(Child, HashMap<String, SocketAddr>), Error> {
    start_command(Command::new(bin), settings, env)
}

/// As [`start`], running `command` (the binary, or a wrapper that
/// executes it, such as `ip netns exec`).
pub fn start_command(
    mut command: Command,
    settings: &[String],
    env: &[(String, String)],
) -> Result<(Child, HashMap<String, SocketAddr>), Error> {
    command.arg("proxy").env("WARDEN_LOG", "error");
    command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    for s in settings {
        command.arg("--set").arg(s);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut listeners = HashMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line == "started" {
            return Ok((child, listeners));
        }
        if let Some((what, addr)) = line.split_once(' ') {
            listeners.insert(what.to_owned(), addr.parse()?);
        }
    }
    Err("warden proxy exited before starting".into())
}
