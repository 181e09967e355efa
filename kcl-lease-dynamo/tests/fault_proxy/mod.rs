//! A TCP proxy in front of the DynamoDB server that injects faults no emulator produces:
//! throttling, 5xx answers, denied permissions and lost replies. The client under test is the
//! real SDK client; the server behind is the real test server.
//!
//! The server closes every connection after one answer (moto does; the proxy also forces it by
//! closing), so "the n-th connection" is "the n-th request". Each connection that carries a
//! request gets the next [`Fault`] of the script, then everything passes through.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do with one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Pass request and answer through.
    Pass,
    /// Answer with this DynamoDB error without forwarding the request (it is not applied).
    Refuse { status: u16, error_type: String },
    /// Forward the request, wait for the server's answer (so it is applied), then answer with
    /// this error instead.
    ApplyThenFail { status: u16, error_type: String },
    /// Answer with this raw HTTP status, content type and body, without forwarding the request.
    Raw {
        status: u16,
        content_type: String,
        body: String,
    },
    /// Forward the request, wait for the server's answer, then close the connection without
    /// answering: the reply is lost after the write landed.
    LoseReply,
}

impl Fault {
    pub fn throttle() -> Self {
        Self::Refuse {
            status: 400,
            error_type: "ProvisionedThroughputExceededException".into(),
        }
    }

    pub fn throttling_exception() -> Self {
        Self::Refuse {
            status: 400,
            error_type: "ThrottlingException".into(),
        }
    }

    pub fn server_error() -> Self {
        Self::Refuse {
            status: 500,
            error_type: "InternalServerError".into(),
        }
    }

    pub fn denied() -> Self {
        Self::Refuse {
            status: 400,
            error_type: "AccessDeniedException".into(),
        }
    }
}

/// The running proxy.
pub struct FaultProxy {
    addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Fault>>>,
    /// Faults applied so far (not counting `Pass`).
    pub applied: Arc<Mutex<Vec<Fault>>>,
    task: tokio::task::JoinHandle<()>,
}

/// `host:port` of an `http://host:port` endpoint.
pub fn endpoint_addr(endpoint: &str) -> String {
    let rest = endpoint
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(endpoint);
    rest.trim_end_matches('/').to_owned()
}

/// Reads one HTTP request (headers and a Content-Length body) from `client`.
async fn read_request(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let headers = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length: usize = headers
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                return Some(buffer);
            }
        }
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Forwards `request` to the server and waits for the first bytes of its answer.
async fn apply(upstream: &str, request: &[u8]) {
    let mut server = TcpStream::connect(upstream).await.unwrap();
    server.write_all(request).await.unwrap();
    let mut answer = [0u8; 1];
    let _ = server.read(&mut answer).await;
}

async fn respond(client: &mut TcpStream, status: u16, error_type: &str) {
    let body = format!(
        "{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{error_type}\",\"message\":\"injected by the test proxy: {error_type}\"}}"
    );
    respond_raw(client, status, "application/x-amz-json-1.0", &body).await;
}

async fn respond_raw(client: &mut TcpStream, status: u16, content_type: &str, body: &str) {
    let reason = match status {
        500.. => "Internal Server Error",
        403 => "Forbidden",
        _ => "Bad Request",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         x-amzn-RequestId: injected\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`host:port`) applying `script`, one fault per connection.
    pub async fn start(upstream: String, script: Vec<Fault>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let applied = Arc::new(Mutex::new(Vec::new()));
        let (queue, log) = (Arc::clone(&script), Arc::clone(&applied));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let (queue, log) = (Arc::clone(&queue), Arc::clone(&log));
                tokio::spawn(async move {
                    // The fault is taken only once a request arrived: a connection the client
                    // opens and drops unused (its pool may race a new connection against a
                    // returning one) must not consume the next fault.
                    let Some(request) = read_request(&mut client).await else {
                        return;
                    };
                    let fault = queue.lock().unwrap().pop_front().unwrap_or(Fault::Pass);
                    if let Fault::Pass = fault {
                        let mut server = TcpStream::connect(&upstream).await.unwrap();
                        if server.write_all(&request).await.is_err() {
                            return;
                        }
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                    // Logged before the client can see the outcome, so a test that awaited the
                    // request sees the fault counted.
                    match fault.clone() {
                        Fault::Pass => {}
                        Fault::Refuse { status, error_type } => {
                            log.lock().unwrap().push(fault);
                            respond(&mut client, status, &error_type).await;
                        }
                        Fault::Raw {
                            status,
                            content_type,
                            body,
                        } => {
                            log.lock().unwrap().push(fault);
                            respond_raw(&mut client, status, &content_type, &body).await;
                        }
                        Fault::ApplyThenFail { status, error_type } => {
                            apply(&upstream, &request).await;
                            log.lock().unwrap().push(fault);
                            respond(&mut client, status, &error_type).await;
                        }
                        Fault::LoseReply => {
                            apply(&upstream, &request).await;
                            log.lock().unwrap().push(fault);
                            drop(client);
                        }
                    }
                });
            }
        });
        Self {
            addr,
            script,
            applied,
            task,
        }
    }

    /// Queues more faults.
    pub fn push(&self, faults: impl IntoIterator<Item = Fault>) {
        self.script.lock().unwrap().extend(faults);
    }

    /// Replaces the faults still queued.
    pub fn replace(&self, faults: impl IntoIterator<Item = Fault>) {
        *self.script.lock().unwrap() = faults.into_iter().collect();
    }

    pub fn applied(&self) -> usize {
        self.applied.lock().unwrap().len()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
