//! Where the sidecar's SVID comes from: files, or a control plane; never
//! both, never neither. Everything a source needs is resolved here, so
//! starting it cannot find a key missing.

use std::path::PathBuf;
use std::time::Duration;

use super::file::{ControlSection, IdentitySection};
use super::{ConfigError, key_error};
use crate::control::ControlAddr;
use crate::identity::SpiffeId;

#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// SVID files (`[identity]`), polled and hot-swapped.
    Files(FileIdentity),
    /// A control plane (`[control]`) issues and renews the SVID.
    Control(ControlSource),
    /// Another SPIFFE Workload API (`identity.workload_api`) streams it.
    WorkloadApi(WorkloadApiIdentity),
}

/// `identity.workload_api`: where the SVID and bundles are streamed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadApiIdentity {
    /// `unix:///path/to/socket`, as `SPIFFE_ENDPOINT_SOCKET` is written.
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    pub poll_interval: Duration,
}

#[derive(Clone)]
pub struct ControlSource {
    pub address: ControlAddr,
    /// The control plane's SPIFFE ID; it also names the trust domain.
    pub server_id: SpiffeId,
    /// The trust bundle that authenticates the control plane.
    pub bundle: BundleSource,
    /// How to join; None when `state_dir` holds an SVID from an earlier run.
    pub join: Option<JoinToken>,
    pub state_dir: Option<PathBuf>,
    pub instance: Option<String>,
    pub svid_ttl: Option<Duration>,
    /// Take policies from the control plane.
    pub policies: bool,
    /// Registered for discovery after every new SVID: the workload's
    /// addresses (none: nothing registered) and serving ports (none: every
    /// port).
    pub endpoint_addresses: Vec<std::net::IpAddr>,
    pub endpoint_ports: Vec<u16>,
}

/// The trust bundle that authenticates the control plane: a file, or
/// its PEM text.
#[derive(Clone, Debug)]
pub enum BundleSource {
    File(PathBuf),
    Pem(String),
}

impl BundleSource {
    /// Its bytes, and what to call it in an error.
    pub fn read(&self) -> Result<(Vec<u8>, String), String> {
        match self {
            BundleSource::File(path) => std::fs::read(path)
                .map(|pem| (pem, path.display().to_string()))
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            BundleSource::Pem(pem) => Ok((pem.as_bytes().to_vec(), "control.bundle_pem".into())),
        }
    }
}

/// The single-use join token, or the file that holds it; or the pod's
/// projected service-account token.
#[derive(Clone)]
pub enum JoinToken {
    Inline(String),
    File(PathBuf),
    /// `control.k8s_token_file`, read at each attempt.
    ServiceAccount(PathBuf),
}

impl std::fmt::Debug for ControlSource {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = match &self.join {
            Some(JoinToken::Inline(_)) => "token <redacted>".to_owned(),
            Some(JoinToken::File(path)) => format!("token_file {}", path.display()),
            Some(JoinToken::ServiceAccount(path)) => format!("k8s_token_file {}", path.display()),
            None => "state_dir".to_owned(),
        };
        f.debug_struct("ControlSource")
            .field("address", &self.address)
            .field("server_id", &self.server_id)
            .field("join", &join)
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl IdentitySource {
    /// The identity source the two sections describe.
    pub(super) fn from_sections(
        identity: &IdentitySection,
        control: &ControlSection,
    ) -> Result<Self, ConfigError> {
        match control.address.clone() {
            Some(address) => {
                if identity.dir.is_some() || identity.cert.is_some() || identity.key.is_some() {
                    return Err(key_error(
                        "identity.dir",
                        "SVID files cannot be combined with control.address (the control plane issues the SVID)",
                    ));
                }
                if identity.workload_api.is_some() {
                    return Err(key_error(
                        "identity.workload_api",
                        "cannot be combined with control.address: the SVID comes from one source",
                    ));
                }
                control_source(address, control).map(IdentitySource::Control)
            }
            None => {
                if control.server_id.is_some()
                    || control.bundle.is_some()
                    || control.bundle_pem.is_some()
                    || control.token.is_some()
                    || control.token_file.is_some()
                    || control.k8s_token_file.is_some()
                    || control.policies
                    || !control.endpoint_addresses.is_empty()
                    || !control.endpoint_ports.is_empty()
                {
                    return Err(key_error(
                        "control.address",
                        "required when other control.* keys are set",
                    ));
                }
                match &identity.workload_api {
                    Some(endpoint) => {
                        workload_api_identity(identity, endpoint).map(IdentitySource::WorkloadApi)
                    }
                    None => file_identity(identity).map(IdentitySource::Files),
                }
            }
        }
    }

    /// The SVID certificate file; an error naming the key for a control
    /// plane source, which has none.
    pub fn cert_path(&self) -> Result<PathBuf, ConfigError> {
        match self {
            IdentitySource::Files(files) => Ok(files.cert.clone()),
            IdentitySource::Control(_) => Err(key_error(
                "identity.cert",
                "the control plane issues the SVID: there is no file",
            )),
            IdentitySource::WorkloadApi(_) => Err(key_error(
                "identity.cert",
                "the SVID comes from identity.workload_api: there is no file",
            )),
        }
    }

    pub fn control(&self) -> Option<&ControlSource> {
        match self {
            IdentitySource::Control(control) => Some(control),
            IdentitySource::Files(_) | IdentitySource::WorkloadApi(_) => None,
        }
    }
}

fn workload_api_identity(
    identity: &IdentitySection,
    endpoint: &str,
) -> Result<WorkloadApiIdentity, ConfigError> {
    if identity.dir.is_some()
        || identity.cert.is_some()
        || identity.key.is_some()
        || identity.bundle.is_some()
    {
        return Err(key_error(
            "identity.workload_api",
            "cannot be combined with identity files (dir, cert, key, bundle): the SVID comes from one source",
        ));
    }
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or_default();
    if !path.starts_with('/') {
        return Err(key_error(
            "identity.workload_api",
            format!("{endpoint:?} is not unix:///absolute/path/to/socket"),
        ));
    }
    Ok(WorkloadApiIdentity {
        endpoint: format!("unix://{path}"),
    })
}

fn file_identity(identity: &IdentitySection) -> Result<FileIdentity, ConfigError> {
    let file = |explicit: &Option<PathBuf>, name: &str, key: &str| match (explicit, &identity.dir) {
        (Some(path), _) => Ok(path.clone()),
        (None, Some(dir)) => Ok(dir.join(name)),
        (None, None) => Err(key_error(
            format!("identity.{key}"),
            "required (or set identity.dir)",
        )),
    };
    Ok(FileIdentity {
        cert: file(&identity.cert, "svid.pem", "cert")?,
        key: file(&identity.key, "svid.key", "key")?,
        bundle: file(&identity.bundle, "bundle.pem", "bundle")?,
        poll_interval: identity.poll_interval,
    })
}

fn control_source(
    address: ControlAddr,
    control: &ControlSection,
) -> Result<ControlSource, ConfigError> {
    let Some(server_id) = control.server_id.clone() else {
        return Err(key_error(
            "control.server_id",
            "required with control.address",
        ));
    };
    let bundle = match (&control.bundle, &control.bundle_pem) {
        (Some(path), None) => BundleSource::File(path.clone()),
        (None, Some(pem)) => BundleSource::Pem(pem.clone()),
        (None, None) => {
            return Err(key_error(
                "control.bundle",
                "required with control.address (or control.bundle_pem): the trust bundle that authenticates the control plane",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(key_error(
                "control.bundle",
                "set control.bundle (a file) or control.bundle_pem (its text), not both",
            ));
        }
    };
    let join = match (&control.token, &control.token_file, &control.k8s_token_file) {
        (Some(token), None, None) => Some(JoinToken::Inline(token.clone())),
        (None, Some(path), None) => Some(JoinToken::File(path.clone())),
        (None, None, Some(path)) => Some(JoinToken::ServiceAccount(path.clone())),
        (None, None, None) if control.state_dir.is_some() => None,
        (None, None, None) => {
            return Err(key_error(
                "control.token",
                "required with control.address (or control.token_file, control.k8s_token_file, or control.state_dir holding an SVID from an earlier run)",
            ));
        }
        _ => {
            return Err(key_error(
                "control.token",
                "set one of control.token, control.token_file and control.k8s_token_file",
            ));
        }
    };
    if let Some(instance) = &control.instance
        && !crate::control::api::is_valid_instance(instance)
    {
        return Err(key_error(
            "control.instance",
            format!(
                "at most {} bytes of letters, digits and .-_:/@+",
                crate::control::api::MAX_INSTANCE
            ),
        ));
    }
    check_endpoints(control)?;
    Ok(ControlSource {
        address,
        server_id,
        bundle,
        join,
        state_dir: control.state_dir.clone(),
        instance: control.instance.clone(),
        svid_ttl: control.svid_ttl,
        policies: control.policies,
        endpoint_addresses: control.endpoint_addresses.clone(),
        endpoint_ports: control.endpoint_ports.clone(),
    })
}

/// What the control plane would refuse, refused here first with its key.
fn check_endpoints(control: &ControlSection) -> Result<(), ConfigError> {
    use crate::control::api::{MAX_ENDPOINT_ADDRESSES, MAX_ENDPOINT_PORTS};
    let addresses = &control.endpoint_addresses;
    if addresses.len() > MAX_ENDPOINT_ADDRESSES {
        return Err(key_error(
            "control.endpoint_addresses",
            format!("at most {MAX_ENDPOINT_ADDRESSES} addresses"),
        ));
    }
    for (i, address) in addresses.iter().enumerate() {
        let canonical = address.to_canonical();
        if canonical.is_unspecified() || canonical.is_loopback() || canonical.is_multicast() {
            return Err(key_error(
                "control.endpoint_addresses",
                format!("{address} is not an address a peer can dial"),
            ));
        }
        if addresses[..i].iter().any(|a| a.to_canonical() == canonical) {
            return Err(key_error(
                "control.endpoint_addresses",
                format!("{address} is listed twice"),
            ));
        }
    }
    if addresses.is_empty() && !control.endpoint_ports.is_empty() {
        return Err(key_error(
            "control.endpoint_ports",
            "needs control.endpoint_addresses (the ports of which addresses?)",
        ));
    }
    if control.endpoint_ports.len() > MAX_ENDPOINT_PORTS || control.endpoint_ports.contains(&0) {
        return Err(key_error(
            "control.endpoint_ports",
            format!("at most {MAX_ENDPOINT_PORTS} ports, none of them 0"),
        ));
    }
    Ok(())
}
