//! record_sink: a Kinesis consumer that appends every user record to a JSON-lines file.
//!
//! The processor to copy as a starting point, and the black-box consumer of the end-to-end
//! tests. Run it as
//!
//! ```text
//! cargo run --release -p kcl-examples --example record_sink -- \
//!     --stream NAME --application NAME --worker-id ID \
//!     --lease-table sqlite:PATH|dynamodb|dynamodb:TABLE \
//!     --retrieval polling|fanout --initial-position trim-horizon|latest \
//!     --output FILE [--checkpoint-every N] [--failover-ms MS]
//! ```
//!
//! Endpoints, region and credentials come from the standard AWS environment variables
//! (`AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_DYNAMODB`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! ...). For each user record (after KPL de-aggregation) one line is appended to FILE:
//! `{"shard_id", "sequence_number", "sub_sequence_number", "partition_key", "data" (base64),
//! "worker_id", "processed_at_ms"}`, flushed before the batch is checkpointed. SIGTERM or SIGINT
//! shuts down gracefully (in-flight batches finish, final checkpoint, leases released) and the
//! process exits 0; a second signal stops at once. Logs go to stderr (`RUST_LOG`, default `warn`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use kcl_core::aws::KinesisBackend;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::LeaseTable;
use kcl_core::processor::{
    BoxError, ProcessRecordsInput, RecordProcessor, ShardInfo, ShutdownReason,
};
use kcl_core::retrieval::{FanOutConfig, Retrieval};
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::{CheckpointCadence, Worker};
use kcl_lease_dynamo::DynamoLeaseTable;
use kcl_lease_sqlite::SqliteLeaseTable;

const USAGE: &str = "usage: record_sink --stream NAME --application NAME --worker-id ID \
--lease-table sqlite:PATH|dynamodb|dynamodb:TABLE --retrieval polling|fanout \
--initial-position trim-horizon|latest --output FILE [--checkpoint-every N] [--failover-ms MS]";

/// Where leases live.
#[derive(Debug)]
enum LeaseStore {
    Sqlite(PathBuf),
    Dynamo(Option<String>),
}

/// The command line.
#[derive(Debug)]
struct Args {
    stream: String,
    application: String,
    worker_id: String,
    lease_table: LeaseStore,
    fanout: bool,
    initial_position: InitialPosition,
    output: PathBuf,
    checkpoint_every: Option<u64>,
    failover: Option<Duration>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut stream, mut application, mut worker_id, mut lease_table) = (None, None, None, None);
    let (mut retrieval, mut initial_position, mut output) = (None, None, None);
    let (mut checkpoint_every, mut failover) = (None, None);
    let mut given = std::collections::HashSet::new();
    while let Some(flag) = args.next() {
        if flag.starts_with("--") && !given.insert(flag.clone()) {
            return Err(format!("{flag} is given more than once"));
        }
        // A value is the next argument unless that is a flag: `--stream --output x` is a
        // missing stream name, not a stream named "--output".
        let mut value = || match args.next() {
            Some(v) if v.starts_with("--") => {
                Err(format!("{flag} needs a value, not the flag {v}"))
            }
            Some(v) => Ok(v),
            None => Err(format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--stream" => stream = Some(value()?),
            "--application" => application = Some(value()?),
            "--worker-id" => worker_id = Some(value()?),
            "--lease-table" => {
                let v = value()?;
                lease_table = Some(if let Some(path) = v.strip_prefix("sqlite:") {
                    if path.is_empty() {
                        return Err("--lease-table sqlite: needs a path".into());
                    }
                    LeaseStore::Sqlite(PathBuf::from(path))
                } else if v == "dynamodb" {
                    LeaseStore::Dynamo(None)
                } else if let Some(table) = v.strip_prefix("dynamodb:") {
                    LeaseStore::Dynamo(Some(table.to_owned()))
                } else {
                    return Err(format!(
                        "--lease-table {v:?}: expected sqlite:PATH, dynamodb or dynamodb:TABLE"
                    ));
                });
            }
            "--retrieval" => {
                retrieval = Some(match value()?.as_str() {
                    "polling" => false,
                    "fanout" => true,
                    other => {
                        return Err(format!("--retrieval {other:?}: expected polling or fanout"));
                    }
                })
            }
            "--initial-position" => {
                initial_position = Some(match value()?.as_str() {
                    "trim-horizon" => InitialPosition::TrimHorizon,
                    "latest" => InitialPosition::Latest,
                    other => {
                        return Err(format!(
                            "--initial-position {other:?}: expected trim-horizon or latest"
                        ));
                    }
                })
            }
            "--output" => output = Some(PathBuf::from(value()?)),
            "--checkpoint-every" => {
                let v = value()?;
                match v.parse::<u64>() {
                    Ok(n) if n > 0 => checkpoint_every = Some(n),
                    _ => {
                        return Err(format!(
                            "--checkpoint-every {v:?}: expected a positive integer"
                        ));
                    }
                }
            }
            "--failover-ms" => {
                let v = value()?;
                match v.parse::<u64>() {
                    Ok(ms) if ms > 0 => failover = Some(Duration::from_millis(ms)),
                    _ => return Err(format!("--failover-ms {v:?}: expected a positive integer")),
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let missing = |name: &str| format!("{name} is required");
    Ok(Args {
        stream: stream.ok_or_else(|| missing("--stream"))?,
        application: application.ok_or_else(|| missing("--application"))?,
        worker_id: worker_id.ok_or_else(|| missing("--worker-id"))?,
        lease_table: lease_table.ok_or_else(|| missing("--lease-table"))?,
        fanout: retrieval.ok_or_else(|| missing("--retrieval"))?,
        initial_position: initial_position.ok_or_else(|| missing("--initial-position"))?,
        output: output.ok_or_else(|| missing("--output"))?,
        checkpoint_every,
        failover,
    })
}

/// The JSON-lines file, shared by the processors of this process.
type Sink = Arc<Mutex<BufWriter<File>>>;

/// Appends each record of a batch as one JSON line, flushed before the batch returns (and so
/// before the framework checkpoints it).
struct RecordSink {
    shard_id: String,
    worker_id: String,
    sink: Sink,
    line: Vec<u8>,
}

impl RecordSink {
    fn flush(&self) -> Result<(), BoxError> {
        let mut sink = self.sink.lock().map_err(|_| "output lock poisoned")?;
        sink.flush()?;
        Ok(())
    }
}

impl RecordProcessor for RecordSink {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        self.line.clear();
        for record in input.records {
            let line = serde_json::json!({
                "shard_id": self.shard_id,
                "sequence_number": record.sequence_number().as_str(),
                "sub_sequence_number": record.sub_sequence_number(),
                "partition_key": record.partition_key(),
                "data": base64::engine::general_purpose::STANDARD.encode(record.data()),
                "worker_id": self.worker_id,
                "processed_at_ms": now_ms,
            });
            serde_json::to_writer(&mut self.line, &line)?;
            self.line.push(b'\n');
        }
        let mut sink = self.sink.lock().map_err(|_| "output lock poisoned")?;
        sink.write_all(&self.line)?;
        sink.flush()?;
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        _reason: ShutdownReason,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.flush()
    }
}

async fn lease_table(args: &Args) -> Result<Arc<dyn LeaseTable>, BoxError> {
    Ok(match &args.lease_table {
        LeaseStore::Sqlite(path) => {
            Arc::new(SqliteLeaseTable::open(path, &args.application).await?)
        }
        LeaseStore::Dynamo(None) => Arc::new(DynamoLeaseTable::from_env(&args.application).await?),
        LeaseStore::Dynamo(Some(table)) => {
            Arc::new(DynamoLeaseTable::from_env(table.as_str()).await?)
        }
    })
}

async fn run(args: Args) -> Result<(), BoxError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.output)?;
    let sink: Sink = Arc::new(Mutex::new(BufWriter::new(file)));
    let table = lease_table(&args).await?;
    let backend = Arc::new(KinesisBackend::from_env().await);
    let worker_id = args.worker_id.clone();
    let factory = {
        let sink = sink.clone();
        move |shard: &ShardInfo| RecordSink {
            shard_id: shard.shard_id.clone(),
            worker_id: worker_id.clone(),
            sink: sink.clone(),
            line: Vec::new(),
        }
    };
    let mut builder = Worker::builder(factory)
        .application_name(&args.application)
        .stream(&args.stream)
        .worker_id(&args.worker_id)
        .backend(backend)
        .lease_table(table)
        .initial_position(args.initial_position);
    if args.fanout {
        builder = builder.retrieval(Retrieval::FanOut(FanOutConfig::default()));
    }
    if let Some(failover) = args.failover {
        builder = builder.failover_time(failover);
    }
    if let Some(n) = args.checkpoint_every {
        builder = builder.checkpoint_cadence(CheckpointCadence {
            every_records: Some(n),
            every_interval: Some(Duration::from_secs(10)),
        });
    }
    let worker = builder.build()?;
    let handle = worker.handle();
    let mut running = tokio::spawn(worker.run());
    // Both listeners exist for the whole run, so a signal arriving while the loop handles the
    // previous one is queued, not missed.
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut signals = 0;
    let result = loop {
        tokio::select! {
            biased;
            result = &mut running => break result,
            _ = terminate.recv() => signals += 1,
            _ = interrupt.recv() => signals += 1,
        }
        if signals == 1 {
            tracing::info!("signal received: shutting down gracefully");
            handle.shutdown();
        } else {
            tracing::warn!("second signal: stopping now");
            handle.shutdown_now();
        }
    };
    result??;
    let mut sink = sink.lock().map_err(|_| "output lock poisoned")?;
    sink.flush()?;
    sink.get_ref().sync_all()?;
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("record_sink: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("record_sink: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("record_sink: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    const VALID: &str = "--stream s --application a --worker-id w --lease-table sqlite:/tmp/l.db \
        --retrieval fanout --initial-position latest --output out.jsonl";

    #[test]
    fn a_full_command_line_parses() {
        let parsed = args(VALID).unwrap();
        assert_eq!(parsed.stream, "s");
        assert!(parsed.fanout);
        assert_eq!(parsed.output, PathBuf::from("out.jsonl"));
    }

    #[test]
    fn a_flag_is_not_another_flag_s_value() {
        let error = args(&VALID.replace("--stream s", "--stream"))
            .err()
            .unwrap();
        assert!(
            error.contains("--stream needs a value, not the flag --application"),
            "{error}"
        );
        let error = args("--output").err().unwrap();
        assert!(error.contains("--output needs a value"), "{error}");
    }

    #[test]
    fn a_repeated_flag_is_named() {
        let error = args(&format!("{VALID} --stream other")).err().unwrap();
        assert!(
            error.contains("--stream is given more than once"),
            "{error}"
        );
    }
}
