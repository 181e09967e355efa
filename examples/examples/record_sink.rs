//! record_sink: a Kinesis consumer that appends every user record to a JSON-lines file.
//!
//! The processor to copy as a starting point, and the black-box consumer of the end-to-end
//! tests. Run it as
//!
//! ```text
//! cargo run --release -p kcl-examples --example record_sink -- \
//!     --stream NAME [--stream NAME ...] [--multi-stream] --application NAME --worker-id ID \
//!     --lease-table sqlite:PATH|dynamodb|dynamodb:TABLE \
//!     --retrieval polling|fanout --initial-position trim-horizon|latest \
//!     --output FILE [--checkpoint-every N] [--failover-ms MS] \
//!     [--metrics-listen 127.0.0.1:9090] [--metrics-level detailed|summary] \
//!     [--max-in-flight N] [--delay-ms D]
//! ```
//!
//! Endpoints, region and credentials come from the standard AWS environment variables
//! (`AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_DYNAMODB`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! ...). For each user record (after KPL de-aggregation) one line is appended to FILE:
//! `{"stream", "shard_id", "sequence_number", "sub_sequence_number", "partition_key", "data" (base64),
//! "worker_id", "processed_at_ms"}`, written and flushed before the batch returns (and so
//! before the framework checkpoints it). The file is written by a thread of its own, so the
//! processors never block the async runtime.
//!
//! `--stream` given more than once consumes every stream through the one lease table (Java
//! KCL's multi-stream mode, leases keyed `account:stream:creationEpoch:shardId`); a stream may be
//! named by its name, its ARN or Java's `account:stream:creationEpoch`. `--multi-stream` uses
//! that mode with a single stream too (to share a Java multi-stream table). `stream` on every
//! line is the stream's name.
//!
//! With `--metrics-listen ADDR`, Prometheus metrics are served at `http://ADDR/metrics` and the
//! worker's health at `http://ADDR/health` (200 when ready, 503 otherwise).
//!
//! `--max-in-flight N` processes up to N batches of each shard at once, the records of each
//! partition key in order (key-ordered mode; 1, the default, is one batch at a time), and
//! `--delay-ms D` makes the processor await D ms per record, standing in for a slow downstream
//! call: together they show (and benchmark) what the mode buys.
//!
//! SIGTERM or SIGINT shuts down gracefully (in-flight batches finish, final checkpoint, leases
//! handed over) and the process exits 0; a second signal stops at once. A permanent failure
//! (the stream does not exist, access denied, an unusable lease table) ends the process with
//! status 1 and a message naming what failed. Logs go to stderr (`RUST_LOG`, default `warn`).

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use clap::{Parser, ValueEnum};
use kcl_cli::store::{self, Create, LeaseStore};
use kcl_core::aws::KinesisBackend;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::LeaseTable;
use kcl_core::metrics::MetricsLevel;
use kcl_core::processor::{
    BoxError, ConcurrentProcessor, ProcessRecordsInput, RecordProcessor, ShardInfo, ShutdownReason,
};
use kcl_core::retrieval::{FanOutConfig, Retrieval};
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::{CheckpointCadence, KeyOrdered, MultiStreamTracker, StreamConfig, Worker};
use tokio::sync::oneshot;

/// How records are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RetrievalArg {
    /// GetRecords.
    Polling,
    /// Enhanced fan-out (SubscribeToShard), through a consumer named after the application.
    Fanout,
}

/// Where a new application starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PositionArg {
    /// The oldest retained record.
    TrimHorizon,
    /// After the newest record.
    Latest,
}

/// How much detail the metrics carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LevelArg {
    /// Per shard (a `shard` label).
    Detailed,
    /// Per worker (no `shard` label), for large fleets.
    Summary,
}

/// A Kinesis consumer that appends every user record (KPL aggregates expanded) to a
/// JSON-lines file, one line per record, flushed before the batch is checkpointed.
#[derive(Debug, Parser)]
#[command(name = "record_sink", version)]
struct Args {
    /// A stream to consume: a name, an ARN or `account:stream:creationEpoch`. Give it more than
    /// once to consume several streams through one lease table (multi-stream mode).
    #[arg(long, value_name = "NAME", required = true)]
    stream: Vec<String>,
    /// Multi-stream lease keys (`account:stream:creationEpoch:shardId`) even with one stream.
    #[arg(long)]
    multi_stream: bool,
    /// The application name (the DynamoDB table's default name, the fan-out consumer's name).
    #[arg(long, value_name = "NAME")]
    application: String,
    /// This worker's id, unique among the application's workers.
    #[arg(long, value_name = "ID")]
    worker_id: String,
    /// Where leases live: sqlite:PATH (one host), dynamodb (table named after the
    /// application) or dynamodb:TABLE.
    #[arg(long, value_name = "STORE", value_parser = store::parse_lease_store)]
    lease_table: LeaseStore,
    /// How records are read.
    #[arg(long, value_enum)]
    retrieval: RetrievalArg,
    /// Where a new application starts reading.
    #[arg(long, value_enum)]
    initial_position: PositionArg,
    /// The JSON-lines file records are appended to.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Checkpoint every N records (and every 10 s); default 10,000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: Option<u64>,
    /// Failover time in milliseconds (default 10,000).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..))]
    failover_ms: Option<u64>,
    /// Serve Prometheus metrics at http://ADDR/metrics and health at http://ADDR/health.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// How much detail the metrics carry.
    #[arg(long, value_enum, default_value = "detailed")]
    metrics_level: LevelArg,
    /// Batches of each shard processed at once, the records of each partition key still in
    /// order (key-ordered mode); 1 processes one batch at a time.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    max_in_flight: u16,
    /// Milliseconds the processor awaits per record before writing it, standing in for a slow
    /// downstream call (demos and benchmarks).
    #[arg(long, value_name = "D", default_value_t = 0)]
    delay_ms: u64,
}

/// A write for the file thread, and where to say it is on disk (flushed).
type FileWrite = (Vec<u8>, oneshot::Sender<std::io::Result<()>>);

/// The JSON-lines file, written by a thread of its own: processors hand it their lines and
/// await the flush, so the async runtime never blocks on the file.
struct Sink {
    lines: Option<std::sync::mpsc::Sender<FileWrite>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Sink {
    fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = std::sync::mpsc::channel::<FileWrite>();
        let thread = std::thread::Builder::new()
            .name("record-sink-file".into())
            .spawn(move || -> std::io::Result<()> {
                let mut out = BufWriter::new(file);
                for (bytes, done) in rx {
                    let result = out.write_all(&bytes).and_then(|()| out.flush());
                    let failed = result.is_err();
                    let _ = done.send(result);
                    if failed {
                        break;
                    }
                }
                out.flush()?;
                out.get_ref().sync_all()
            })?;
        Ok(Self {
            lines: Some(tx),
            thread: Some(thread),
        })
    }

    fn writer(&self) -> Writer {
        Writer(self.lines.clone())
    }

    /// Flushes and syncs the file once every writer is gone.
    fn close(mut self) -> std::io::Result<()> {
        drop(self.lines.take());
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(std::io::Error::other("the file thread panicked")),
            None => Ok(()),
        }
    }
}

/// A processor's way to the file.
#[derive(Clone)]
struct Writer(Option<std::sync::mpsc::Sender<FileWrite>>);

impl Writer {
    /// Appends `bytes` and waits until they are flushed.
    async fn write(&self, bytes: Vec<u8>) -> Result<(), BoxError> {
        let (done, flushed) = oneshot::channel();
        let lines = self.0.as_ref().ok_or("the output is closed")?;
        lines
            .send((bytes, done))
            .map_err(|_| "the output file thread stopped")?;
        flushed
            .await
            .map_err(|_| "the output file thread stopped")??;
        Ok(())
    }
}

/// Appends each record of a batch as one JSON line, flushed before the batch returns (and so
/// before the framework checkpoints it). Batches may run concurrently (`&self`): the file
/// thread writes each batch's lines in one piece.
struct RecordSink {
    stream: String,
    shard_id: String,
    worker_id: String,
    out: Writer,
    /// Awaited per record (`--delay-ms`).
    delay: Duration,
}

impl RecordProcessor for RecordSink {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.process_batch(input).await
    }

    async fn shutdown_requested(
        &mut self,
        _reason: ShutdownReason,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        // Every batch was flushed before it returned: nothing is left to write.
        Ok(())
    }
}

impl ConcurrentProcessor for RecordSink {
    async fn process_batch(&self, input: ProcessRecordsInput<'_>) -> Result<(), BoxError> {
        let mut lines = Vec::new();
        for record in input.records {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let line = serde_json::json!({
                "stream": self.stream,
                "shard_id": self.shard_id,
                "sequence_number": record.sequence_number().as_str(),
                "sub_sequence_number": record.sub_sequence_number(),
                "partition_key": record.partition_key(),
                "data": base64::engine::general_purpose::STANDARD.encode(record.data()),
                "worker_id": self.worker_id,
                "processed_at_ms": now_ms,
            });
            serde_json::to_writer(&mut lines, &line)?;
            lines.push(b'\n');
        }
        self.out.write(lines).await
    }
}

async fn lease_table(args: &Args) -> Result<Arc<dyn LeaseTable>, BoxError> {
    Ok(store::open(&args.lease_table, &args.application, Create::IfMissing).await?)
}

async fn run(args: Args) -> Result<(), BoxError> {
    let metrics = match args.metrics_listen {
        Some(_) => Some(kcl_examples::ops::install_prometheus()?),
        None => None,
    };
    let sink = Sink::open(&args.output)?;
    // The table knows the application: the worker takes its name from there.
    let table = lease_table(&args).await?;
    let backend = Arc::new(KinesisBackend::from_env().await);
    let worker_id = args.worker_id.clone();
    let delay = Duration::from_millis(args.delay_ms);
    let factory = {
        let out = sink.writer();
        move |shard: &ShardInfo| RecordSink {
            stream: shard.stream.clone(),
            shard_id: shard.shard_id.clone(),
            worker_id: worker_id.clone(),
            out: out.clone(),
            delay,
        }
    };
    let mut builder = Worker::builder(factory);
    builder = match args.stream.as_slice() {
        [one] if !args.multi_stream => builder.stream(one),
        streams => {
            let configs = streams
                .iter()
                .map(|s| StreamConfig::parse(s).map_err(|e| format!("--stream {s}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            builder.multi_stream(MultiStreamTracker::new(configs))
        }
    };
    let mut builder = builder
        .worker_id(&args.worker_id)
        .backend(backend)
        .lease_table(table)
        .initial_position(match args.initial_position {
            PositionArg::TrimHorizon => InitialPosition::TrimHorizon,
            PositionArg::Latest => InitialPosition::Latest,
        })
        .metrics_level(match args.metrics_level {
            LevelArg::Detailed => MetricsLevel::Detailed,
            LevelArg::Summary => MetricsLevel::Summary,
        });
    if args.retrieval == RetrievalArg::Fanout {
        builder = builder.retrieval(Retrieval::FanOut(FanOutConfig::default()));
    }
    if let Some(ms) = args.failover_ms {
        builder = builder.failover_time(Duration::from_millis(ms));
    }
    if args.max_in_flight > 1 {
        builder = builder.key_ordered(KeyOrdered::new(usize::from(args.max_in_flight)));
    }
    if let Some(n) = args.checkpoint_every {
        builder = builder.checkpoint_cadence(CheckpointCadence {
            every_records: Some(n),
            every_interval: Some(Duration::from_secs(10)),
        });
    }
    let worker = builder.build()?;
    let handle = worker.handle();
    let _ops = match (args.metrics_listen, metrics) {
        (Some(listen), Some(metrics)) => {
            let server = kcl_examples::ops::serve(listen, metrics, handle.clone()).await?;
            tracing::info!(addr = %server.local_addr(), "serving /metrics and /health");
            Some(server)
        }
        _ => None,
    };
    handle.shutdown_on_signals();
    let result = worker.run().await;
    sink.close()?;
    result?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
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
            // The message names what failed and quotes the service; its sources are the SDK's
            // own error layers, which add nothing for a reader.
            eprintln!("record_sink: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(line: &str) -> Result<Args, String> {
        Args::try_parse_from(std::iter::once("record_sink").chain(line.split_whitespace()))
            .map_err(|e| e.to_string())
    }

    const VALID: &str = "--stream s --application a --worker-id w --lease-table sqlite:/tmp/l.db \
        --retrieval fanout --initial-position latest --output out.jsonl";

    #[test]
    fn a_full_command_line_parses() {
        let parsed = args(VALID).unwrap();
        assert_eq!(parsed.stream, ["s"]);
        assert!(!parsed.multi_stream);
        assert_eq!(parsed.retrieval, RetrievalArg::Fanout);
        assert_eq!(parsed.output, PathBuf::from("out.jsonl"));
        assert_eq!(parsed.lease_table, LeaseStore::Sqlite("/tmp/l.db".into()));
        assert_eq!(parsed.metrics_listen, None);
        let parsed = args(&format!("{VALID} --metrics-listen 127.0.0.1:9464")).unwrap();
        assert_eq!(
            parsed.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    #[test]
    fn a_flag_is_not_another_flag_s_value() {
        let error = args(&VALID.replace("--stream s", "--stream"))
            .err()
            .unwrap();
        assert!(error.contains("--stream <NAME>"), "{error}");
    }

    #[test]
    fn a_repeated_flag_is_named() {
        let error = args(&format!("{VALID} --worker-id other")).err().unwrap();
        assert!(error.contains("--worker-id"), "{error}");
        assert!(error.contains("cannot be used multiple times"), "{error}");
    }

    #[test]
    fn streams_may_be_given_more_than_once() {
        let parsed = args(&format!(
            "{VALID} --stream arn:aws:kinesis:us-east-1:123456789012:stream/b --multi-stream"
        ))
        .unwrap();
        assert_eq!(
            parsed.stream,
            ["s", "arn:aws:kinesis:us-east-1:123456789012:stream/b"]
        );
        assert!(parsed.multi_stream);
        let error = args(&VALID.replace("--stream s ", "")).err().unwrap();
        assert!(error.contains("--stream"), "{error}");
    }

    #[test]
    fn bad_values_are_named() {
        let error = args(&VALID.replace("sqlite:/tmp/l.db", "postgres:x"))
            .err()
            .unwrap();
        assert!(error.contains("expected sqlite:PATH"), "{error}");
        let error = args(&format!("{VALID} --metrics-listen nowhere"))
            .err()
            .unwrap();
        assert!(error.contains("--metrics-listen"), "{error}");
        let error = args(&format!("{VALID} --checkpoint-every 0"))
            .err()
            .unwrap();
        assert!(error.contains("--checkpoint-every"), "{error}");
        for bad in ["0", "257", "many"] {
            let error = args(&format!("{VALID} --max-in-flight {bad}"))
                .err()
                .unwrap();
            assert!(error.contains("--max-in-flight"), "{error}");
        }
        let error = args(&format!("{VALID} --delay-ms soon")).err().unwrap();
        assert!(error.contains("--delay-ms"), "{error}");
    }

    #[test]
    fn key_ordered_mode_and_the_delay_are_opt_in() {
        let parsed = args(VALID).unwrap();
        assert_eq!((parsed.max_in_flight, parsed.delay_ms), (1, 0));
        let parsed = args(&format!("{VALID} --max-in-flight 10 --delay-ms 25")).unwrap();
        assert_eq!((parsed.max_in_flight, parsed.delay_ms), (10, 25));
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("--max-in-flight <N>"), "{help}");
        assert!(help.contains("--delay-ms <D>"), "{help}");
    }
}
