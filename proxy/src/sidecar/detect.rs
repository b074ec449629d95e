//! HTTP or not, from a connection's first bytes, left unread: how the
//! transparent listeners tell a request (HTTP/1 request line, or the
//! HTTP/2 preface) from any other TCP protocol.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// What a connection's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detected {
    /// An HTTP/1 request line or the HTTP/2 preface.
    Http,
    /// Anything else, or nothing within the timeout (a protocol where the
    /// server speaks first).
    Opaque,
    /// Closed (or failed) before a byte.
    Closed,
}

/// The request methods recognized, each with the space that ends it.
const METHODS: [&[u8]; 8] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
];

/// The start of HTTP/2's connection preface (prior knowledge, h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// The verdict on the bytes seen so far; None while they could still
/// become either.
pub(crate) fn classify(first: &[u8]) -> Option<bool> {
    if first.is_empty() {
        return None;
    }
    let mut undecided = false;
    for candidate in METHODS.iter().copied().chain([H2_PREFACE]) {
        let n = first.len().min(candidate.len());
        if first[..n] == candidate[..n] {
            if n == candidate.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    (!undecided).then_some(false)
}

/// Peeks at `stream` until its first bytes decide, or `timeout` passes.
pub(crate) async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 16];
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Detected::Opaque,
            Ok(Err(_) | Ok(0)) => return Detected::Closed,
            Ok(Ok(n)) => match classify(&buf[..n]) {
                Some(true) => return Detected::Http,
                Some(false) => return Detected::Opaque,
                // A request line split across segments: rare, and a peek
                // returns at once while bytes wait, so wait a little.
                None if Instant::now() + Duration::from_millis(2) < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                None => return Detected::Opaque,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_preface_are_http_anything_else_is_not() {
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x",
            b"OPTIONS *",
            b"PRI * HTTP/2.0\r\n\r\nSM",
        ] {
            assert_eq!(classify(http), Some(true), "{http:?}");
        }
        for opaque in [
            &b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[..], // PostgreSQL SSLRequest
            b"*1\r\n$4\r\nPING\r\n",                  // Redis
            b"GETX",
            b"get / HTTP/1.1",
            b"\x16\x03\x01",
        ] {
            assert_eq!(classify(opaque), Some(false), "{opaque:?}");
        }
        for undecided in [&b"G"[..], b"GE", b"DELE", b"PRI * HTTP/2"] {
            assert_eq!(classify(undecided), None, "{undecided:?}");
        }
    }

    #[tokio::test]
    async fn a_split_request_line_waits_and_a_silent_client_is_opaque() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.write_all(b"PO").await.expect("write");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"ST / HTTP/1.1\r\n").await.expect("write");
            client
        });
        assert_eq!(
            detect(&server, Duration::from_secs(5)).await,
            Detected::Http
        );
        let client = writer.await.expect("writer");
        let silent = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        assert_eq!(
            detect(&server, Duration::from_millis(50)).await,
            Detected::Opaque
        );
        drop(silent);
        drop(client);
    }
}
