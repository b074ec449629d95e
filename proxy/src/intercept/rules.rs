//! The rules that redirect a workload's TCP through its sidecar, as data:
//! what `warden init` installs, prints (`--dry-run`) and compares with what
//! is installed (so running it twice changes nothing). Inbound TCP to the
//! workload goes to the sidecar's inbound port; outbound TCP from the
//! workload goes to its transparent outbound port. Never redirected: the
//! sidecar's own traffic (its user or group), loopback, the admin port, and
//! the ports and CIDRs the operator skips.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// What to intercept, and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interception {
    /// Where redirected inbound connections go (the sidecar's inbound).
    pub inbound_port: u16,
    /// Where redirected outbound connections go (`outbound.transparent_listen`).
    pub outbound_port: u16,
    /// The sidecar's admin port: never redirected (probes reach it).
    pub admin_port: u16,
    /// The sidecar's user id: its own connections are never redirected.
    pub proxy_uid: u32,
    /// And its group id, if given.
    pub proxy_gid: Option<u32>,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// Names our chains (`<PREFIX>_INBOUND`, `<PREFIX>_OUTPUT`) and the
    /// nftables table (lowercase): nothing else is touched.
    pub prefix: String,
}

impl Interception {
    /// The defaults of `warden init`: inbound 15006, outbound 15001, admin
    /// 15000, as Istio's ports (Linkerd's are 4143/4140).
    pub fn new(proxy_uid: u32) -> Self {
        Interception {
            inbound_port: 15006,
            outbound_port: 15001,
            admin_port: 15000,
            proxy_uid,
            proxy_gid: None,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            prefix: "WARDEN".to_owned(),
        }
    }

    pub fn inbound_chain(&self) -> String {
        format!("{}_INBOUND", self.prefix)
    }

    pub fn output_chain(&self) -> String {
        format!("{}_OUTPUT", self.prefix)
    }

    /// The nftables table: the prefix in lowercase.
    pub fn nft_table(&self) -> String {
        self.prefix.to_ascii_lowercase()
    }

    /// Checks what the flags cannot: a usable prefix, distinct ports.
    pub fn check(&self) -> Result<(), RulesError> {
        let ok = !self.prefix.is_empty()
            && self.prefix.len() <= 20
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && self.prefix.as_bytes()[0].is_ascii_uppercase();
        if !ok {
            return Err(RulesError::Prefix(self.prefix.clone()));
        }
        let ports = [self.inbound_port, self.outbound_port, self.admin_port];
        if ports.contains(&0)
            || self.inbound_port == self.outbound_port
            || self.admin_port == self.inbound_port
            || self.admin_port == self.outbound_port
        {
            return Err(RulesError::Ports);
        }
        Ok(())
    }

    /// The iptables rules of one family, in the form `iptables -S` prints
    /// them, so that what is installed can be compared with them.
    pub fn iptables(&self, family: Family) -> IptablesRules {
        let inbound = self.inbound_chain();
        let output = self.output_chain();
        let mut rules = Vec::new();
        let mut add = |chain: &str, spec: String| rules.push(format!("-A {chain} {spec}"));
        // Inbound: the admin port and the skipped ports pass; the rest goes
        // to the sidecar's inbound listener.
        for port in std::iter::once(self.admin_port).chain(self.skip_inbound_ports.iter().copied())
        {
            add(&inbound, format!("-p tcp -m tcp --dport {port} -j RETURN"));
        }
        add(
            &inbound,
            format!("-p tcp -j REDIRECT --to-ports {}", self.inbound_port),
        );
        // Outbound: the sidecar's own traffic first (else it would loop
        // back into itself), then loopback, skipped ports and CIDRs.
        add(
            &output,
            format!("-m owner --uid-owner {} -j RETURN", self.proxy_uid),
        );
        if let Some(gid) = self.proxy_gid {
            add(&output, format!("-m owner --gid-owner {gid} -j RETURN"));
        }
        add(&output, "-o lo -j RETURN".to_owned());
        for port in &self.skip_outbound_ports {
            add(&output, format!("-p tcp -m tcp --dport {port} -j RETURN"));
        }
        for cidr in self
            .skip_outbound_cidrs
            .iter()
            .filter(|c| c.family() == family)
        {
            add(&output, format!("-d {cidr} -j RETURN"));
        }
        add(
            &output,
            format!("-p tcp -j REDIRECT --to-ports {}", self.outbound_port),
        );
        IptablesRules {
            chains: vec![inbound.clone(), output.clone()],
            rules,
            jumps: vec![
                ("PREROUTING".to_owned(), format!("-p tcp -j {inbound}")),
                ("OUTPUT".to_owned(), format!("-p tcp -j {output}")),
            ],
        }
    }

    /// The nftables ruleset: one `inet` table of our own, both families.
    pub fn nftables(&self) -> String {
        let mut inbound = vec![format!("tcp dport {} return", self.admin_port)];
        if !self.skip_inbound_ports.is_empty() {
            inbound.push(format!(
                "tcp dport {} return",
                set(&self.skip_inbound_ports)
            ));
        }
        inbound.push(format!(
            "meta l4proto tcp redirect to :{}",
            self.inbound_port
        ));
        let mut output = vec![format!("meta skuid {} return", self.proxy_uid)];
        if let Some(gid) = self.proxy_gid {
            output.push(format!("meta skgid {gid} return"));
        }
        output.push("oifname \"lo\" return".to_owned());
        if !self.skip_outbound_ports.is_empty() {
            output.push(format!(
                "tcp dport {} return",
                set(&self.skip_outbound_ports)
            ));
        }
        for (family, keyword) in [(Family::V4, "ip"), (Family::V6, "ip6")] {
            let cidrs: Vec<&Cidr> = self
                .skip_outbound_cidrs
                .iter()
                .filter(|c| c.family() == family)
                .collect();
            if !cidrs.is_empty() {
                output.push(format!("{keyword} daddr {} return", set(&cidrs)));
            }
        }
        output.push(format!(
            "meta l4proto tcp redirect to :{}",
            self.outbound_port
        ));
        let chain = |name: &str, hook: &str, priority: &str, rules: &[String]| {
            let mut text = format!(
                "\tchain {name} {{\n\t\ttype nat hook {hook} priority {priority}; policy accept;\n"
            );
            for rule in rules {
                text.push_str(&format!("\t\t{rule}\n"));
            }
            text.push_str("\t}\n");
            text
        };
        format!(
            "table inet {} {{\n{}{}}}\n",
            self.nft_table(),
            chain("prerouting", "prerouting", "dstnat", &inbound),
            chain("output", "output", "-100", &output),
        )
    }
}

fn set<T: fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("{{ {} }}", items.join(", "))
    }
}

/// The iptables side of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesRules {
    /// Our chains, in the `nat` table.
    pub chains: Vec<String>,
    /// Their rules, `-A CHAIN spec` as `iptables -S` prints them.
    pub rules: Vec<String>,
    /// The jumps into them from the built-in chains: (chain, spec).
    pub jumps: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// An address block, host bits cleared (as iptables prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl FromStr for Cidr {
    type Err = RulesError;

    fn from_str(text: &str) -> Result<Self, RulesError> {
        let bad = || RulesError::Cidr(text.to_owned());
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
                len.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None => max,
        };
        if len > max {
            return Err(bad());
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("{0:?} is not an address block (e.g. 10.0.0.0/8 or fd00::/8)")]
    Cidr(String),
    #[error("chain prefix {0:?}: 1 to 20 of A-Z, 0-9 and _, starting with a letter")]
    Prefix(String),
    #[error("the inbound, outbound and admin ports must be distinct and not 0")]
    Ports,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Interception {
        Interception {
            proxy_gid: Some(1337),
            skip_inbound_ports: vec![22],
            skip_outbound_ports: vec![5432, 6379],
            skip_outbound_cidrs: vec![
                "10.1.2.3/8".parse().expect("cidr"),
                "fd00::1/8".parse().expect("cidr"),
            ],
            ..Interception::new(1337)
        }
    }

    #[test]
    fn iptables_rules_skip_the_sidecar_loopback_and_what_the_operator_says() {
        let v4 = sample().iptables(Family::V4);
        assert_eq!(v4.chains, ["WARDEN_INBOUND", "WARDEN_OUTPUT"]);
        assert_eq!(
            v4.rules,
            [
                "-A WARDEN_INBOUND -p tcp -m tcp --dport 15000 -j RETURN",
                "-A WARDEN_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
                "-A WARDEN_INBOUND -p tcp -j REDIRECT --to-ports 15006",
                "-A WARDEN_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A WARDEN_OUTPUT -m owner --gid-owner 1337 -j RETURN",
                "-A WARDEN_OUTPUT -o lo -j RETURN",
                "-A WARDEN_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
                "-A WARDEN_OUTPUT -p tcp -m tcp --dport 6379 -j RETURN",
                "-A WARDEN_OUTPUT -d 10.0.0.0/8 -j RETURN",
                "-A WARDEN_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
        let v6 = sample().iptables(Family::V6);
        assert!(
            v6.rules
                .contains(&"-A WARDEN_OUTPUT -d fd00::/8 -j RETURN".to_owned())
        );
        assert!(!v6.rules.iter().any(|r| r.contains("10.0.0.0")));
        assert_eq!(
            v4.jumps,
            [
                (
                    "PREROUTING".to_owned(),
                    "-p tcp -j WARDEN_INBOUND".to_owned()
                ),
                ("OUTPUT".to_owned(), "-p tcp -j WARDEN_OUTPUT".to_owned()),
            ]
        );
    }

    #[test]
    fn the_nftables_table_is_ours_alone() {
        let text = sample().nftables();
        assert!(text.starts_with("table inet warden {\n"), "{text}");
        for line in [
            "type nat hook prerouting priority dstnat; policy accept;",
            "tcp dport 15000 return",
            "tcp dport 22 return",
            "meta l4proto tcp redirect to :15006",
            "meta skuid 1337 return",
            "meta skgid 1337 return",
            "oifname \"lo\" return",
            "tcp dport { 5432, 6379 } return",
            "ip daddr 10.0.0.0/8 return",
            "ip6 daddr fd00::/8 return",
            "meta l4proto tcp redirect to :15001",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn bad_input_is_refused() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0/8",
            "fd00::/129",
            "x",
            "10.0.0.0/+8",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(RulesError::Cidr(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "192.168.7.9".parse::<Cidr>().expect("host").to_string(),
            "192.168.7.9/32"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().expect("all").to_string(),
            "0.0.0.0/0"
        );
        for prefix in ["", "warden", "W-X", "1W", "WARDEN_PREFIX_TOO_LONG_X"] {
            let i = Interception {
                prefix: prefix.into(),
                ..Interception::new(0)
            };
            assert!(
                matches!(i.check(), Err(RulesError::Prefix(_))),
                "{prefix:?}"
            );
        }
        let same = Interception {
            outbound_port: 15006,
            ..Interception::new(0)
        };
        assert_eq!(same.check(), Err(RulesError::Ports));
        assert!(Interception::new(0).check().is_ok());
    }
}
