//! How we know the AWS backend speaks HTTP/2 to AWS (SubscribeToShard requires it).
//!
//! `the_client_negotiates_http2`: the backend's HTTP client, pointed at a local TLS server that
//! offers both `h2` and `http/1.1` by ALPN (as AWS endpoints do), picks `h2` and sends the HTTP/2
//! connection preface. `subscribe_to_shard_over_tls` (needs kinesis-local, whose TLS port also
//! selects `h2`): a whole fan-out round trip over that client.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use kcl_core::aws::KinesisBackend;
use kcl_core::backend::StreamBackend;
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
