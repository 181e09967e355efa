//! How we know the AWS backend speaks HTTP/2 to AWS (SubscribeToShard requires it).
//!
//! `the_client_negotiates_http2`: the backend's HTTP client, pointed at a local TLS server that
//! offers both `h2` and `http/1.1` by ALPN (as AWS endpoints do), picks `h2` and sends the HTTP/2
//! connection preface. `subscribe_to_shard_over_tls` (needs kinesis-local, whose TLS port also
//! selects `h2`): a whole fan-out round trip over that client.
//! `unread_subscriptions_do_not_starve_the_others`: against a local HTTP/2 server pushing events
//! as fast as flow control allows, subscriptions nobody reads (backpressured shards) do not stop
//! another subscription's events.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use kcl_core::aws::KinesisBackend;
use kcl_core::backend::{FanOut, StreamBackend};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncReadExt;

const CERT: &[u8] = include_bytes!("../../scripts/servers/tls/test-cert.pem");
const KEY: &[u8] = include_bytes!("../../scripts/servers/tls/test-key.pem");
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .load()
        .await
}

#[tokio::test]
async fn the_client_negotiates_http2() {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(CERT).unwrap()],
            PrivateKeyDer::from_pem_slice(KEY).unwrap(),
        )
        .unwrap();
    // Offered in the server's order of preference, as an AWS endpoint does.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut first = vec![0u8; PREFACE.len()];
        tls.read_exact(&mut first).await.unwrap();
        (alpn, first)
    });
    let backend = KinesisBackend::builder()
        .native_roots(false)
        .trust_pem_certificate(CERT)
        .read_timeout(Duration::from_secs(2))
        .build(&sdk_config(&format!("https://127.0.0.1:{port}")).await)
        .unwrap();
    // The server answers nothing: the call fails, what it sent is what counts.
    let call = tokio::spawn(async move { backend.describe_stream("any").await });
    let (alpn, first) = tokio::time::timeout(Duration::from_secs(20), seen)
        .await
        .expect("the client connected")
        .unwrap();
    call.abort();
    assert_eq!(
        alpn.as_deref(),
        Some(&b"h2"[..]),
        "ALPN picked by the client"
    );
    assert_eq!(first, PREFACE, "the client speaks HTTP/2");
}

#[tokio::test]
#[ignore = "needs kinesis-local over TLS: run scripts/test.sh"]
async fn subscribe_to_shard_over_tls() {
    use futures::StreamExt;
    let endpoint = std::env::var("KCL_TEST_KINESIS_TLS_ENDPOINT")
        .expect("KCL_TEST_KINESIS_TLS_ENDPOINT is not set: run scripts/test.sh");
    let cert = std::fs::read(std::env::var("KCL_TEST_TLS_CERT").unwrap()).unwrap();
    let backend = KinesisBackend::builder()
        .native_roots(false)
        .trust_pem_certificate(cert)
        .build(&sdk_config(&endpoint).await)
        .unwrap();
    let stream = format!("h2-{}", std::process::id());
    backend
        .create_stream(&stream, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let put = backend
        .put_records(
            &stream,
            vec![kcl_core::model::PutRecordsEntry::new("k", &b"over h2"[..])],
        )
        .await
        .unwrap();
    assert_eq!(put.failed_record_count, 0);
    let consumer = backend
        .register_stream_consumer(&stream, "h2")
        .await
        .unwrap();
    let mut active = consumer.clone();
    for _ in 0..100 {
        if active.status == kcl_core::backend::ConsumerStatus::Active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        active = backend
            .describe_stream_consumer(&stream, "h2")
            .await
            .unwrap();
    }
    let shard = put.records[0].shard_id().unwrap().to_owned();
    let mut sub = backend
        .subscribe_to_shard(
            &consumer.arn,
            &shard,
            kcl_core::backend::StartingPosition::TrimHorizon,
        )
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.records[0].data().as_ref(), b"over h2");
}

/// A `SubscribeToShardEvent` message (event-stream framing) with one record of `data` zero bytes
/// (none when 0), continuing after sequence number `seq`.
fn subscribe_event(seq: u64, data: usize) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let records = if data == 0 {
        String::new()
    } else {
        // Base64 of zero bytes: "AAAA" per 3 bytes.
        let base64 = "AAAA".repeat(data / 3);
        format!(
            r#"{{"SequenceNumber":"{seq}","ApproximateArrivalTimestamp":1.0,"Data":"{base64}","PartitionKey":"k"}}"#
        )
    };
    let payload = format!(
        r#"{{"ContinuationSequenceNumber":"{seq}","MillisBehindLatest":0,"Records":[{records}]}}"#
    );
    let message = Message::new(payload.into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String("SubscribeToShardEvent".into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
    out
}

/// A TLS server speaking only HTTP/2 that answers every request with an event stream: a first
/// empty event, then 16 events of 256 KiB records, sent as fast as HTTP/2 flow control lets it
/// (the client must read for more to go). Counts connections opened and closed, and the bytes
/// flow control let through over all streams.
struct PushServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    closed: tokio::sync::watch::Receiver<usize>,
    sent: tokio::sync::watch::Receiver<usize>,
}

async fn push_server() -> PushServer {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(CERT).unwrap()],
            PrivateKeyDer::from_pem_slice(KEY).unwrap(),
        )
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let (sent_tx, sent) = tokio::sync::watch::channel(0usize);
    let sent_tx = Arc::new(sent_tx);
    let (closed_tx, closed) = tokio::sync::watch::channel(0usize);
    let closed_tx = Arc::new(closed_tx);
    let mut body = subscribe_event(1, 0);
    for seq in 2..18 {
        body.extend(subscribe_event(seq, 256 * 1024));
    }
    let body = bytes::Bytes::from(body);
    {
        let connections = connections.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, sent_tx, body) = (acceptor.clone(), sent_tx.clone(), body.clone());
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.unwrap();
                    let mut conn = h2::server::handshake(tls).await.unwrap();
                    while let Some(Ok((_request, mut respond))) = conn.accept().await {
                        let (sent_tx, mut rest) = (sent_tx.clone(), body.clone());
                        tokio::spawn(async move {
                            let response = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/vnd.amazon.eventstream")
                                .body(())
                                .unwrap();
                            let mut send = respond.send_response(response, false).unwrap();
                            while !rest.is_empty() {
                                send.reserve_capacity(rest.len());
                                let granted =
                                    match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                                        Some(Ok(n)) => n.min(rest.len()),
                                        _ => return,
                                    };
                                if granted == 0 {
                                    continue;
                                }
                                if send.send_data(rest.split_to(granted), false).is_err() {
                                    return;
                                }
                                sent_tx.send_modify(|sent| *sent += granted);
                            }
                            // Keep the stream open, as a subscription is for minutes.
                            std::future::pending::<()>().await;
                            drop(send);
                        });
                    }
                    closed_tx.send_modify(|closed| *closed += 1);
                });
            }
        });
    }
    PushServer {
        port,
        connections,
        closed,
        sent,
    }
}

#[tokio::test]
async fn unread_subscriptions_do_not_starve_the_others() {
    use futures::StreamExt;
    use kcl_core::backend::StartingPosition;
    const MIB: usize = 1024 * 1024;
    const ARN: &str = "arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/c:1";
    let mut server = push_server().await;
    let backend = KinesisBackend::builder()
        .native_roots(false)
        .trust_pem_certificate(CERT)
        .build(&sdk_config(&format!("https://127.0.0.1:{}", server.port)).await)
        .unwrap();
    // Three subscriptions whose shards are backpressured: nothing reads them.
    let mut unread = Vec::new();
    for shard in 0..3 {
        let shard = format!("shardId-{shard:012}");
        let subscription = tokio::time::timeout(
            Duration::from_secs(30),
            backend.subscribe_to_shard(ARN, &shard, StartingPosition::TrimHorizon),
        )
        .await
        .expect("subscribed")
        .unwrap();
        unread.push(subscription);
    }
    // They take what flow control gives them: HTTP/2's default windows are 2 MiB per stream and
    // (hyper's client) 5 MiB per connection, so on one shared connection 5 MiB fill it.
    tokio::time::timeout(
        Duration::from_secs(30),
        server.sent.wait_for(|sent| *sent >= 5 * MIB - 256 * 1024),
    )
    .await
    .expect("the server pushed the unread subscriptions' windows full")
    .unwrap();
    // Another shard's subscription still gets its events. (The bound only turns a starved
    // subscription into a failure instead of a hang.)
    let received = tokio::time::timeout(Duration::from_secs(30), async {
        let mut subscription = backend
            .subscribe_to_shard(ARN, "shardId-000000000003", StartingPosition::TrimHorizon)
            .await
            .unwrap();
        let mut received = 0;
        while received < MIB {
            let event = subscription.next().await.expect("an event").unwrap();
            received += event.records.iter().map(|r| r.data().len()).sum::<usize>();
        }
        received
    })
    .await;
    assert!(
        received.is_ok(),
        "a subscription starved behind three unread ones ({} connections)",
        server.connections.load(Ordering::SeqCst)
    );
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        4,
        "one connection per subscription"
    );
    // Each connection closes with its subscription.
    drop(unread);
    tokio::time::timeout(
        Duration::from_secs(30),
        server.closed.wait_for(|closed| *closed == 4),
    )
    .await
    .expect("the subscriptions' connections closed")
    .unwrap();
}
