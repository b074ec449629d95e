//! gRPC through a sidecar pair with tonic: unary and bidirectional
//! streaming calls, status codes and trailers intact, and a caller the
//! policy denies getting PERMISSION_DENIED.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::mesh::{FRONTEND, INTRUDER, Identities, ORDERS, inbound_to, route_to};
use tokio_stream::StreamExt;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Response, Status, Streaming};

/// Messages are raw bytes: no protobuf needed to exercise gRPC's framing,
/// streaming and trailers.
#[derive(Debug, Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

fn shout(b: &Bytes) -> Bytes {
    Bytes::from(b.to_ascii_uppercase())
}

/// The echo service: `Unary` answers "<CALLER> <MESSAGE>", `Stream` echoes
/// each message upper-cased, `Fail` answers NOT_FOUND.
async fn grpc_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let mut grpc = tonic::server::Grpc::new(BytesCodec);
                        let response = match req.uri().path() {
                            "/echo.Echo/Unary" => {
                                let unary = tower::service_fn(|req: Request<Bytes>| async move {
                                    let caller = req
                                        .metadata()
                                        .get("x-warden-peer-id")
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("nobody")
                                        .to_owned();
                                    let message =
                                        String::from_utf8_lossy(req.get_ref()).into_owned();
                                    Ok::<_, Status>(Response::new(Bytes::from(format!(
                                        "{caller} {message}"
                                    ))))
                                });
                                grpc.unary(unary, req).await
                            }
                            "/echo.Echo/Stream" => {
                                let streaming = tower::service_fn(
                                    |req: Request<Streaming<Bytes>>| async move {
                                        // "boom" ends the stream with ABORTED: a status
                                        // that can only travel in trailers, after data.
                                        let out = req.into_inner().map(|m| match m {
                                            Ok(b) if b == "boom" => Err(Status::aborted("boom")),
                                            other => other.map(|b| shout(&b)),
                                        });
                                        Ok::<_, Status>(Response::new(out))
                                    },
                                );
                                grpc.streaming(streaming, req).await
                            }
                            _ => {
                                let fail = tower::service_fn(|_: Request<Bytes>| async move {
                                    Err::<Response<Bytes>, _>(Status::not_found("no such thing"))
                                });
                                grpc.unary(fail, req).await
                            }
                        };
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn client(addr: SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    tonic::client::Grpc::new(channel)
}

async fn unary(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    message: &'static str,
) -> Result<Response<Bytes>, Status> {
    grpc.ready().await.expect("ready");
    grpc.unary(
        Request::new(Bytes::from_static(message.as_bytes())),
        PathAndQuery::from_static(path),
        BytesCodec,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_unary_and_streaming_calls_cross_the_pair() {
    let ids = Identities::new();
    let app = grpc_app().await;
    let server = ids.start("orders", &inbound_to(app));
    let client_sidecar = ids.start("frontend", &[route_to(server.inbound(), ORDERS)]);
    let intruder = ids.start("intruder", &[route_to(server.inbound(), ORDERS)]);
    for p in [&server, &client_sidecar, &intruder] {
        p.wait_ready().await;
    }
    let mut grpc = client(client_sidecar.outbound[0]).await;

    let reply = unary(&mut grpc, "/echo.Echo/Unary", "hello")
        .await
        .expect("unary");
    assert_eq!(reply.get_ref(), &Bytes::from(format!("{FRONTEND} hello")));

    grpc.ready().await.expect("ready");
    let messages = tokio_stream::iter(
        ["one", "two", "three", "boom"].map(|m: &'static str| Bytes::from_static(m.as_bytes())),
    );
    let response = grpc
        .streaming(
            Request::new(messages),
            PathAndQuery::from_static("/echo.Echo/Stream"),
            BytesCodec,
        )
        .await
        .expect("streaming");
    let mut stream = response.into_inner();
    let mut seen = Vec::new();
    let end = loop {
        match stream.message().await {
            Ok(Some(m)) => seen.push(String::from_utf8_lossy(&m).into_owned()),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert_eq!(seen, ["ONE", "TWO", "THREE"]);
    // The status sent in trailers after the messages made it through.
    let end = end.expect("the stream ends with the server's status");
    assert_eq!((end.code(), end.message()), (Code::Aborted, "boom"));

    let failed = unary(&mut grpc, "/echo.Echo/Fail", "x")
        .await
        .expect_err("NOT_FOUND");
    assert_eq!(failed.code(), Code::NotFound);
    assert_eq!(failed.message(), "no such thing");

    let mut denied = client(intruder.outbound[0]).await;
    let status = unary(&mut denied, "/echo.Echo/Unary", "hello")
        .await
        .expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(INTRUDER), "{}", status.message());
}
