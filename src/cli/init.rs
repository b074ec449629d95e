//! `warden init`: transparent interception in the network namespace it
//! runs in (see `warden_proxy::intercept`).

use std::process::ExitCode;

use warden_proxy::intercept::{self, Backend, Cidr, Family, Interception};

use crate::{InitArgs, InitBackend};

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let skip_outbound_cidrs = args
        .skip_outbound_cidrs
        .iter()
        .map(|c| c.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--skip-outbound-cidrs: {e}"))?;
    let interception = Interception {
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        skip_inbound_ports: args.skip_inbound_ports,
        skip_outbound_ports: args.skip_outbound_ports,
        skip_outbound_cidrs,
        prefix: args.chain_prefix,
    };
    interception.check()?;
    let backend = match args.backend {
        Some(InitBackend::Iptables) => Backend::Iptables,
        Some(InitBackend::IptablesLegacy) => Backend::IptablesLegacy,
        Some(InitBackend::Nftables) => Backend::Nftables,
        None => Backend::detect()?,
    };
    let families: &[Family] = if args.no_ipv6 {
        &[Family::V4]
    } else {
        &[Family::V4, Family::V6]
    };
    let outcome = if args.remove {
        intercept::remove(&interception, backend, families, args.dry_run)?
    } else {
        intercept::install(&interception, backend, families, args.dry_run)?
    };
    if args.dry_run && !args.remove {
        println!("# the rules ({backend:?})");
        match backend {
            Backend::Nftables => print!("{}", interception.nftables()),
            _ => {
                for &family in families {
                    let rules = interception.iptables(family);
                    println!("# {family:?}, table nat");
                    for chain in &rules.chains {
                        println!("-N {chain}");
                    }
                    for rule in &rules.rules {
                        println!("{rule}");
                    }
                    for (chain, spec) in &rules.jumps {
                        println!("-A {chain} {spec}");
                    }
                }
            }
        }
    }
    let said = match (outcome.changed(), args.remove, args.dry_run) {
        (false, false, _) => "the rules are in place: nothing to change",
        (false, true, _) => "nothing installed: nothing to remove",
        (true, _, true) => "would run:",
        (true, _, false) => "ran:",
    };
    println!("# warden init: {said}");
    for command in &outcome.commands {
        println!("{}", command.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}
