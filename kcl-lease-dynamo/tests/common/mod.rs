//! Finding the DynamoDB server the tests run against.
//!
//! * `AWS_ENDPOINT_URL_DYNAMODB` (or `AWS_ENDPOINT_URL`): any DynamoDB API endpoint, e.g. the
//!   moto server that `scripts/servers/moto.sh start` starts (what `scripts/test.sh` does).
//! * Otherwise, with `KCL_TEST_DYNAMODB=docker`, a Docker engine and the crate's opt-in feature
//!   `docker-tests`: DynamoDB Local (`amazon/dynamodb-local`) in a container started by
//!   testcontainers, one per test process. The default test build does not compile
//!   testcontainers at all.
//! * Otherwise the test fails and says so: server tests are `#[ignore]`d, so they only run when
//!   asked for (`--run-ignored all` / `--include-ignored`), and then they must not pass silently.
//!
//! Region and credentials come from the standard environment when set; otherwise `us-east-1` and
//! static test credentials (local servers accept any).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod java;

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use kcl_core::lease::contract::Fixture;
use kcl_lease_dynamo::DynamoLeaseTable;
#[cfg(feature = "docker-tests")]
use testcontainers_modules::{
    dynamodb_local::DynamoDb,
    testcontainers::{ContainerAsync, runners::AsyncRunner},
};

/// What keeps a container alive: nothing without the `docker-tests` feature.
#[cfg(feature = "docker-tests")]
type Container = ContainerAsync<DynamoDb>;
#[cfg(not(feature = "docker-tests"))]
type Container = ();

/// The reason every server test is ignored by default.
pub const NEEDS_SERVER: &str = "needs a DynamoDB endpoint: run scripts/test.sh";

/// A server to talk to, and the container keeping it alive when there is one.
pub struct Server {
    pub config: SdkConfig,
    pub endpoint: String,
    container: Option<Container>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("endpoint", &self.endpoint)
            .field("container", &self.container.is_some())
            .finish()
    }
}

pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Connects to the configured server; panics with instructions when there is none.
pub async fn server() -> Server {
    init_tracing();
    let (endpoint, container) =
        match env("AWS_ENDPOINT_URL_DYNAMODB").or_else(|| env("AWS_ENDPOINT_URL")) {
            Some(endpoint) => (endpoint, None),
            None if env("KCL_TEST_DYNAMODB").as_deref() == Some("docker") => docker().await,
            None => panic!(
                "no DynamoDB endpoint for this test: set AWS_ENDPOINT_URL_DYNAMODB (start one with \
             `scripts/servers/moto.sh install DIR && scripts/servers/moto.sh start DIR`, or \
             run scripts/test.sh which does it), or set KCL_TEST_DYNAMODB=docker where a Docker \
             engine runs"
            ),
        };
    Server {
        config: sdk_config(&endpoint).await,
        endpoint,
        container,
    }
}

/// DynamoDB Local in a container.
#[cfg(feature = "docker-tests")]
async fn docker() -> (String, Option<Container>) {
    let container = DynamoDb::default().start().await.unwrap_or_else(|e| {
        panic!("KCL_TEST_DYNAMODB=docker but DynamoDB Local could not be started: {e}")
    });
    let host = container.get_host().await.expect("container host");
    let port = container
        .get_host_port_ipv4(8000)
        .await
        .expect("container port");
    (format!("http://{host}:{port}"), Some(container))
}

#[cfg(not(feature = "docker-tests"))]
async fn docker() -> (String, Option<Container>) {
    panic!(
        "KCL_TEST_DYNAMODB=docker needs the opt-in testcontainers build: \
         cargo test -p kcl-lease-dynamo --features docker-tests"
    )
}

/// An SdkConfig for `endpoint` from the standard chain, with local defaults for what is unset.
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).endpoint_url(endpoint);
    if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
        loader = loader.region("us-east-1");
    }
    if env("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(Credentials::new(
            "test-access-key",
            "test-secret-key",
            None,
            None,
            "kcl-lease-dynamo tests",
        ));
    }
    loader.load().await
}

/// A table name unique to this test run and call.
pub fn unique_table(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "kcl-{prefix}-{}-{nanos}-{n}-{}",
        std::process::id(),
        fastrand::u32(..)
    )
}

/// Request timeout of the tables the contract cases use: the cases treat any error other than
/// the one they test for as a failure, and a loaded CI machine can hold a request to the test
/// server (which answers one at a time) past the 5 s default.
pub const TEST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh, empty lease table on the test server, kept alive with the server.
pub async fn fresh_table() -> Fixture<DynamoLeaseTable, Server> {
    let server = server().await;
    let table = DynamoLeaseTable::builder(unique_table("contract"))
        .request_timeout(TEST_REQUEST_TIMEOUT)
        .build(&server.config)
        .await
        .expect("create a fresh lease table");
    Fixture::new(table, server)
}
