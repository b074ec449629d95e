//! `warden inject` and `warden install`: Kubernetes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct InjectArgs {
    #[command(subcommand)]
    pub(crate) serve: Option<InjectCommand>,
    /// Manifests to read (YAML, several documents, or JSON; `-` or none:
    /// standard input). The result goes to standard output.
    pub(crate) files: Vec<PathBuf>,
    /// Take Warden out of the pods instead (its containers, volumes and
    /// annotations; the app's probes as they were).
    #[arg(long)]
    pub(crate) uninject: bool,
    #[command(flatten)]
    pub(crate) mesh: MeshArgs,
}

#[derive(Subcommand)]
pub(crate) enum InjectCommand {
    /// The mutating admission webhook (AdmissionReview v1 over HTTPS,
    /// `POST /inject`): pods created in namespaces labelled
    /// `warden.dev/inject=enabled` get what `warden inject` adds.
    Serve(InjectServeArgs),
}

#[derive(Args)]
pub(crate) struct InjectServeArgs {
    /// Where the webhook listens (HTTPS).
    #[arg(long, default_value = "[::]:8443")]
    pub(crate) listen: std::net::SocketAddr,
    /// Its certificate chain (PEM), signed by the CA given to the API
    /// server as `caBundle` (`warden install` makes it).
    #[arg(long)]
    pub(crate) cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// The control plane's namespace: its pods are never injected.
    #[arg(long, default_value = "warden")]
    pub(crate) control_namespace: String,
    #[command(flatten)]
    pub(crate) mesh: MeshArgs,
}

/// What an injected sidecar needs to know of its mesh.
#[derive(Args, Clone)]
pub(crate) struct MeshArgs {
    /// The trust bundle (PEM) that authenticates the control plane: the
    /// `warden-trust-bundle` ConfigMap `warden install` makes, or the
    /// control plane's `bundle.pem`. Copied into each pod.
    #[arg(long)]
    pub(crate) bundle: Option<PathBuf>,
    /// The trust domain (the control plane is `spiffe://<it>/warden/control`).
    #[arg(long)]
    pub(crate) trust_domain: Option<String>,
    /// The control plane's API as the sidecars reach it.
    #[arg(long, default_value = "warden-control.warden.svc:7443")]
    pub(crate) control_address: String,
    /// The sidecar's image.
    #[arg(long, default_value = concat!("warden:", env!("CARGO_PKG_VERSION")))]
    pub(crate) image: String,
    /// The sidecar's image pull policy (`Always`, `IfNotPresent`, `Never`);
    /// none: the cluster's default.
    #[arg(long)]
    pub(crate) image_pull_policy: Option<String>,
    /// The sidecar's uid and gid; `warden init` leaves its traffic alone.
    #[arg(long, default_value_t = 1337)]
    pub(crate) proxy_uid: u32,
    /// Lifetime of the projected service-account token (the kubelet renews
    /// it at 80%; at least 10m).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) token_ttl: Duration,
}

#[derive(Args)]
pub(crate) struct InstallArgs {
    /// A CA made by `warden ca init` (its trust domain is the mesh's). The
    /// output holds its key, in a Secret: pipe it to `kubectl apply -f -`.
    #[arg(long)]
    pub(crate) ca_dir: PathBuf,
    /// The cluster's service-account issuer keys (`kubectl get --raw
    /// /openid/v1/jwks > jwks.json`).
    #[arg(long)]
    pub(crate) k8s_jwks: PathBuf,
    /// The cluster's service-account issuer (`kubectl get --raw
    /// /.well-known/openid-configuration`, its `issuer`).
    #[arg(long, default_value = "https://kubernetes.default.svc.cluster.local")]
    pub(crate) k8s_issuer: String,
    /// Who may attest: NAMESPACE, NAMESPACE/SERVICE_ACCOUNT or '*' (repeatable).
    #[arg(long, default_value = "*")]
    pub(crate) k8s_allow: Vec<String>,
    /// Warden's namespace.
    #[arg(long, default_value = "warden")]
    pub(crate) namespace: String,
    /// The image of every Warden container.
    #[arg(long, default_value = concat!("warden:", env!("CARGO_PKG_VERSION")))]
    pub(crate) image: String,
    /// Control-plane replicas (more than one needs --database).
    #[arg(long, default_value_t = 1)]
    pub(crate) replicas: u32,
    /// Injection webhook replicas.
    #[arg(long, default_value_t = 2)]
    pub(crate) injector_replicas: u32,
    /// PostgreSQL for the control plane (`postgres://user:password@host/db`),
    /// kept in a Secret; none: SQLite on a PersistentVolumeClaim.
    #[arg(long)]
    pub(crate) database: Option<String>,
    /// Size of the SQLite volume.
    #[arg(long, default_value = "1Gi")]
    pub(crate) storage: String,
    /// The sidecar's uid (given to the injector).
    #[arg(long, default_value_t = 1337)]
    pub(crate) proxy_uid: u32,
}
