//! The SPIFFE Workload API (`[workload_api]`): gRPC on a unix socket, as
//! the SPIFFE Workload API and Workload Endpoint standards say, so apps
//! written against go-spiffe, py-spiffe or the `spiffe` crate, and tools
//! such as spiffe-helper, take their identity from the sidecar.
//!
//! **Which identity the workload gets: the sidecar's own SVID.** A pod is
//! one workload with one identity, as Istio's SDS serves it: the app and
//! its sidecar prove the same SPIFFE ID, and the key the app receives is the
//! sidecar's key, made in the sidecar and rotated with it. A second SVID per
//! pod would need a second registration path in the control plane and would
//! split one workload's inventory entry in two, for no gain in isolation:
//! the app's uid is what the socket admits (`workload_api.allowed_uids`,
//! checked against the socket's peer credentials on every call).
//!
//! Every call must carry the `workload.spiffe.io: true` metadata
//! (`InvalidArgument` otherwise) and come from an allowed uid
//! (`PermissionDenied` otherwise, before anything is read from the store).

mod caller;
mod capped;
mod jwt_svids;
mod messages;
mod socket;
mod upstream;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::control::ControlClient;
use crate::identity::{SvidStore, validate_jwt_svid};

pub use socket::{BoundSocket, bind};
pub use upstream::follow_upstream;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    // The proto has no package, so prost names the file `_`.
    tonic::include_proto!("_");

    /// The encoded descriptors of `workload.proto`, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/workload_descriptor.bin"));
}

use pb::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};

/// The largest request message read (requests are a few audiences or one token).
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Concurrent calls on one connection.
const MAX_CALLS_PER_CONNECTION: usize = 32;
/// Open streams (FetchX509SVID and the like) on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// The Workload API server of one sidecar.
#[derive(Clone)]
pub struct WorkloadApi {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<SvidStore>,
    jwt: jwt_svids::JwtSvids,
    allowed_uids: Vec<u32>,
    /// Whether JWT bundles will come (from a control plane, or an upstream
    /// Workload API): without, FetchJWTBundles answers Unavailable.
    jwt_bundles: bool,
    shutdown: watch::Receiver<bool>,
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

impl WorkloadApi {
    /// Serves `store`'s SVID and bundles; JWT-SVIDs come from `control`
    /// (none without a control plane); `jwt_bundles`: whether the store
    /// will hold JWT bundles.
    pub fn new(
        store: Arc<SvidStore>,
        control: Option<ControlClient>,
        allowed_uids: Vec<u32>,
        jwt_bundles: bool,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        WorkloadApi {
            inner: Arc::new(Inner {
                store,
                jwt: jwt_svids::JwtSvids::new(control),
                allowed_uids,
                jwt_bundles,
                shutdown,
            }),
        }
    }

    /// Serves on `socket` until shutdown; every stream ends then, and the
    /// socket file is removed.
    pub async fn serve(self, socket: BoundSocket) {
        let mut shutdown = self.inner.shutdown.clone();
        let (listener, _remove_on_drop) = socket.into_parts();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .build_v1();
        let reflection = match reflection {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "gRPC reflection is off");
                None
            }
        };
        let service =
            SpiffeWorkloadApiServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES);
        let served = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .add_service(service)
            .add_optional_service(reflection)
            .serve_with_incoming_shutdown(
                capped::incoming(listener, capped::MAX_CONNECTIONS),
                async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                },
            )
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the Workload API stopped");
        }
    }

    /// Sends what `make` gives at once and again whenever `changes` moves
    /// and the message differs, until the caller leaves or the sidecar
    /// shuts down. `None` from `make`: nothing to send yet.
    fn follow<T>(
        &self,
        mut changes: watch::Receiver<u64>,
        make: impl Fn() -> Option<Result<T, Status>> + Send + 'static,
    ) -> Stream<T>
    where
        T: PartialEq + Clone + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(2);
        let mut shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let mut last: Option<T> = None;
            loop {
                changes.borrow_and_update();
                match make() {
                    Some(Ok(message)) if last.as_ref() != Some(&message) => {
                        if tx.send(Ok(message.clone())).await.is_err() {
                            return;
                        }
                        last = Some(message);
                    }
                    Some(Err(status)) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    _ => {}
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    () = tx.closed() => return,
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchJWTBundlesStream = Stream<pb::JwtBundlesResponse>;
    type FetchX509SVIDStream = Stream<pb::X509svidResponse>;
    type FetchX509BundlesStream = Stream<pb::X509BundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        caller::admit(&request, &self.inner.allowed_uids, "FetchX509SVID")?;
        let store = self.inner.store.clone();
        let changes = store.subscribe();
        Ok(Response::new(
            self.follow(changes, move || messages::x509_svid(&store)),
        ))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        caller::admit(&request, &self.inner.allowed_uids, "FetchX509Bundles")?;
        let store = self.inner.store.clone();
        let changes = store.subscribe();
        Ok(Response::new(self.follow(changes, move || {
            messages::x509_bundles(&store).map(Ok)
        })))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        caller::admit(&request, &self.inner.allowed_uids, "FetchJWTBundles")?;
        if !self.inner.jwt_bundles {
            return Err(Status::unavailable(
                "this sidecar takes its identity from files: it holds no JWT bundles",
            ));
        }
        let store = self.inner.store.clone();
        let changes = store.subscribe_jwt_bundles();
        Ok(Response::new(self.follow(changes, move || {
            messages::jwt_bundles(&store).map(Ok)
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        caller::admit(&request, &self.inner.allowed_uids, "FetchJWTSVID")?;
        let asked = request.into_inner();
        let svid = self
            .inner
            .jwt
            .fetch(&self.inner.store, &asked.audience, &asked.spiffe_id)
            .await?;
        Ok(Response::new(pb::JwtsvidResponse { svids: vec![svid] }))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        caller::admit(&request, &self.inner.allowed_uids, "ValidateJWTSVID")?;
        let asked = request.into_inner();
        if asked.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if asked.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let bundles = self.inner.store.jwt_bundles();
        match validate_jwt_svid(&bundles, &asked.svid, &asked.audience) {
            Ok(valid) => Ok(Response::new(pb::ValidateJwtsvidResponse {
                spiffe_id: valid.spiffe_id.to_string(),
                claims: Some(messages::claims_struct(valid.claims)),
            })),
            Err(e) => Err(Status::invalid_argument(format!("invalid JWT-SVID: {e}"))),
        }
    }
}
