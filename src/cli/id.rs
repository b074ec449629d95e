use std::process::ExitCode;

use warden_proxy::identity::SpiffeId;

pub fn check(input: &str) -> anyhow::Result<ExitCode> {
    match SpiffeId::parse(input) {
        Ok(id) => {
            println!("valid SPIFFE ID: {id}");
            println!("  trust domain: {}", id.trust_domain_name());
            println!(
                "  path:         {}",
                if id.is_root() {
                    "(none: the trust domain's own ID, not usable in an SVID)"
                } else {
                    id.path()
                }
            );
            if let Some((ns, sa)) = id.namespace_service_account() {
                println!("  namespace:    {ns}");
                println!("  service acct: {sa}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(rule) => {
            println!("invalid SPIFFE ID {input:?}: {rule}");
            Ok(ExitCode::FAILURE)
        }
    }
}
