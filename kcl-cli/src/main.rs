//! `kcl`: an operator's command-line tool for Kinesin (and Java KCL) lease tables.
//!
//! ```text
//! kcl describe --lease-table sqlite:leases.db --application orders [--stream orders] [--output json]
//! kcl workers  --lease-table dynamodb --application orders
//! kcl reset    --lease-table dynamodb --application orders --stream orders \
//!              --to at-timestamp:2026-12-03T09:00:00Z [--shard shardId-000000000001 ...] [--dry-run]
//! kcl cleanup  --lease-table dynamodb --application orders [--apply]
//! kcl completions bash > /etc/bash_completion.d/kcl
//! ```
//!
//! Endpoints, region and credentials come from the standard AWS environment
//! (`AWS_ENDPOINT_URL_DYNAMODB`, `AWS_ENDPOINT_URL_KINESIS`, `AWS_REGION`, profiles, roles).
//! The lease logic is `kcl_core::lease::admin`, the same code for every store.

#![deny(missing_docs)]

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use kcl_cli::store::{self, Create, LeaseStore};
use kcl_core::aws::KinesisBackend;
use kcl_core::backend::StreamBackend;
use kcl_core::lease::LeaseTable;
use kcl_core::lease::admin::describe::{self, Description};
use kcl_core::lease::admin::reset::{self, ApplyOptions, ResetPlan, ResetRequest, ResetTarget};
use kcl_core::lease::admin::{self as admin, cleanup, watch_workers};
use kcl_core::record::{ExtendedSequenceNumber, SequenceNumber};
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Inspect and administer the lease table of a Kinesis consumer application (Kinesin or Java
/// KCL): who owns which shard and how far behind it is, move checkpoints, clean up.
#[derive(Debug, Parser)]
#[command(name = "kcl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One row per lease (state, owner, checkpoint, owner switches, and with --stream the lag
    /// behind the shard's tip) and one per worker.
    Describe {
        #[command(flatten)]
        table: TableArgs,
        /// The stream, to show how far each lease is behind the tip of its shard: a name, an ARN
        /// or ACCOUNT:STREAM:CREATION_EPOCH (in a multi-stream table, that stream's leases).
        #[arg(long, value_name = "STREAM")]
        stream: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One row per worker: heartbeat counter, seen alive or stale, leases held.
    Workers {
        #[command(flatten)]
        table: TableArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Move checkpoints: to the trim horizon, the tip, a time, or after a sequence number.
    ///
    /// Resharding is taken into account as a fresh start at the target would: shards open at the
    /// target start there, their descendants wait for them, shards closed before it are skipped.
    /// Leases live workers are processing are handed over cooperatively first (the worker
    /// finishes its batch, checkpoints, and gets the lease back at the new position); if one
    /// does not within --wait, it gets its lease back untouched and the reset stops.
    Reset {
        #[command(flatten)]
        table: TableArgs,
        /// The stream (its shards and, for a timestamp, its records are read): a name, an ARN or
        /// ACCOUNT:STREAM:CREATION_EPOCH. In a multi-stream table only this stream's leases are
        /// reset; a name with two incarnations in the table must be given with its epoch.
        #[arg(long, value_name = "STREAM")]
        stream: String,
        /// Where to: trim-horizon, latest, at-timestamp:RFC3339 (the first record that arrived
        /// at or after it is delivered next) or sequence:SEQ (delivery restarts after that
        /// record; needs exactly one --shard).
        #[arg(long, value_name = "TARGET", value_parser = parse_target)]
        to: ResetTarget,
        /// Reset only this shard (and its descendants); repeat for several. Default: all.
        #[arg(long = "shard", value_name = "ID")]
        shards: Vec<String>,
        /// Print exactly what would change, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for each live worker to hand its lease over, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        wait: u64,
        /// The owner name written while the tool holds a lease during its reset.
        #[arg(long, value_name = "NAME", default_value = admin::ADMIN_OWNER)]
        admin_id: String,
    },
    /// Finished leases whose children progressed, and heartbeat rows of stale workers that own
    /// nothing. Prints them; deletes them only with --apply.
    Cleanup {
        #[command(flatten)]
        table: TableArgs,
        /// Delete the rows listed (each conditional on the row as read).
        #[arg(long)]
        apply: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Which lease table, and how long to watch heartbeats.
#[derive(Debug, Args)]
struct TableArgs {
    /// Where leases live: sqlite:PATH, dynamodb (table named after the application) or
    /// dynamodb:TABLE. A missing file or table is an error (never created).
    #[arg(long, value_name = "STORE", value_parser = store::parse_lease_store)]
    lease_table: LeaseStore,
    /// The application name.
    #[arg(long, value_name = "NAME")]
    application: String,
    /// How long to watch heartbeat counters to tell live workers from stale ones, in
    /// milliseconds: longer than the workers' renewal interval (half their failover time).
    #[arg(long, value_name = "MS", default_value_t = 6000)]
    watch_ms: u64,
}

impl TableArgs {
    async fn open(&self) -> Result<Arc<dyn LeaseTable>, BoxError> {
        Ok(store::open(&self.lease_table, &self.application, Create::Never).await?)
    }

    fn watch(&self) -> Duration {
        Duration::from_millis(self.watch_ms)
    }
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

fn parse_target(value: &str) -> Result<ResetTarget, String> {
    match value {
        "trim-horizon" => Ok(ResetTarget::TrimHorizon),
        "latest" => Ok(ResetTarget::Latest),
        _ => {
            if let Some(at) = value.strip_prefix("at-timestamp:") {
                let parsed = aws_smithy_types::DateTime::from_str(
                    at,
                    aws_smithy_types::date_time::Format::DateTime,
                )
                .map_err(|e| format!("{at:?} is not an RFC 3339 timestamp: {e}"))?;
                let at = SystemTime::try_from(parsed)
                    .map_err(|e| format!("{at:?} is out of range: {e}"))?;
                Ok(ResetTarget::AtTimestamp(at))
            } else if let Some(seq) = value.strip_prefix("sequence:") {
                SequenceNumber::new(seq)
                    .map(ResetTarget::Sequence)
                    .map_err(|e| format!("{seq:?}: {e}"))
            } else {
                Err("expected trim-horizon, latest, at-timestamp:RFC3339 or sequence:SEQ".into())
            }
        }
    }
}

fn checkpoint_text(position: &ExtendedSequenceNumber) -> String {
    match position {
        ExtendedSequenceNumber::Sequence {
            sequence,
            sub_sequence,
        } => {
            if *sub_sequence >= i64::MAX as u64 {
                format!("{sequence} (whole record)")
            } else if *sub_sequence == 0 {
                sequence.to_string()
            } else {
                format!("{sequence}/{sub_sequence}")
            }
        }
        other => other.to_string(),
    }
}

/// Prints rows as aligned columns.
fn print_table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.trim_end().to_owned()
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| (*h).to_owned()).collect())
    )?;
    for row in rows {
        writeln!(out, "{}", line(row.clone()))?;
    }
    Ok(())
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

fn workers_rows(workers: &[admin::WorkerInfo]) -> Vec<Vec<String>> {
    workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.heartbeat_counter
                    .map_or("- (no row)".to_owned(), |c| c.to_string()),
                if w.leaving {
                    format!("{} (leaving)", w.liveness.as_str())
                } else {
                    w.liveness.as_str().to_owned()
                },
                w.leases_held.to_string(),
            ]
        })
        .collect()
}

const WORKER_HEADER: [&str; 4] = ["WORKER", "HEARTBEAT", "SEEN", "LEASES"];

fn workers_json(workers: &[admin::WorkerInfo]) -> serde_json::Value {
    workers
        .iter()
        .map(|w| {
            json!({
                "id": w.id,
                "heartbeat_counter": w.heartbeat_counter,
                "seen": w.liveness.as_str(),
                "leaving": w.leaving,
                "leases_held": w.leases_held,
            })
        })
        .collect()
}

fn print_description(d: &Description, output: Output) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            let leases: Vec<serde_json::Value> = d
                .leases
                .iter()
                .map(|l| {
                    json!({
                        "lease_key": l.key,
                        "stream": l.stream,
                        "shard_id": l.shard,
                        "state": l.state.as_str(),
                        "owner": l.owner,
                        "handing_over_from": l.handing_over_from,
                        "checkpoint": l.checkpoint.checkpoint_text(),
                        "checkpoint_sub_sequence": l.checkpoint.sub_sequence(),
                        "owner_switches": l.owner_switches,
                        "parents": l.parents,
                        "children": l.children,
                        "records_behind": l.lag.as_ref().map(|g| g.records_behind),
                        "records_behind_capped": l.lag.as_ref().map(|g| g.capped),
                        "millis_behind_latest": l.lag.as_ref().and_then(|g| g.millis_behind_latest),
                    })
                })
                .collect();
            let value = json!({
                "leases": leases,
                "workers": workers_json(&d.workers),
                "watched_ms": u64::try_from(d.watched_for.as_millis()).unwrap_or(u64::MAX),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)
        }
        Output::Table => {
            let with_lag = d.leases.iter().any(|l| l.lag.is_some());
            let multi = d.leases.iter().any(|l| l.stream.is_some());
            let mut header = vec!["SHARD", "STATE", "OWNER", "CHECKPOINT", "SWITCHES"];
            if multi {
                header.insert(0, "STREAM");
            }
            if with_lag {
                header.extend(["BEHIND", "MILLIS_BEHIND"]);
            }
            let rows: Vec<Vec<String>> = d
                .leases
                .iter()
                .map(|l| {
                    let owner = match &l.handing_over_from {
                        Some(from) => format!("{from} -> {}", or_dash(l.owner.as_deref())),
                        None => or_dash(l.owner.as_deref()),
                    };
                    let mut row = vec![
                        l.shard.clone(),
                        l.state.as_str().to_owned(),
                        owner,
                        checkpoint_text(&l.checkpoint),
                        l.owner_switches.to_string(),
                    ];
                    if multi {
                        row.insert(0, or_dash(l.stream.as_deref()));
                    }
                    if with_lag {
                        match &l.lag {
                            Some(lag) => {
                                row.push(format!(
                                    "{}{}",
                                    lag.records_behind,
                                    if lag.capped { "+" } else { "" }
                                ));
                                row.push(
                                    lag.millis_behind_latest
                                        .map_or("-".to_owned(), |m| m.to_string()),
                                );
                            }
                            None => row.extend(["-".to_owned(), "-".to_owned()]),
                        }
                    }
                    row
                })
                .collect();
            print_table(&mut out, &header, &rows)?;
            writeln!(out)?;
            print_table(&mut out, &WORKER_HEADER, &workers_rows(&d.workers))?;
            writeln!(
                out,
                "\n(workers judged by whether their heartbeat counter moved during {} ms)",
                d.watched_for.as_millis()
            )
        }
    }
}

fn print_plan(plan: &ResetPlan, dry_run: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if plan.changes.is_empty() {
        return writeln!(out, "nothing to change: every lease is already there");
    }
    writeln!(
        out,
        "{} {} lease(s) to {}{}:",
        if dry_run { "would reset" } else { "resetting" },
        plan.changes.len(),
        plan.request.target,
        match plan.naming.stream() {
            Some(stream) => format!(" (stream {stream}, leases keyed {stream}:SHARD)"),
            None => String::new(),
        }
    )?;
    let rows: Vec<Vec<String>> = plan
        .changes
        .iter()
        .map(|c| {
            vec![
                c.shard.clone(),
                c.from
                    .as_ref()
                    .map_or("(no lease: created)".to_owned(), checkpoint_text),
                checkpoint_text(&c.to),
                or_dash(c.owner.as_deref()),
                if c.handoff {
                    "live owner: cooperative handoff".to_owned()
                } else {
                    "direct conditional write".to_owned()
                },
                c.reason.as_str().to_owned(),
            ]
        })
        .collect();
    print_table(
        &mut out,
        &["SHARD", "FROM", "TO", "OWNER", "HOW", "WHY"],
        &rows,
    )
}

async fn backend() -> Arc<dyn StreamBackend> {
    Arc::new(KinesisBackend::from_env().await)
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::Describe {
            table,
            stream,
            output,
        } => {
            let lease_table = table.open().await?;
            let backend = match &stream {
                Some(_) => Some(backend().await),
                None => None,
            };
            let stream_access = backend.as_deref().zip(stream.as_deref());
            let description =
                describe::describe(lease_table.as_ref(), stream_access, table.watch()).await?;
            print_description(&description, output)?;
        }
        Command::Workers { table, output } => {
            let lease_table = table.open().await?;
            let view = watch_workers(lease_table.as_ref(), table.watch()).await?;
            let mut out = std::io::stdout().lock();
            match output {
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&workers_json(&view.workers))?
                )?,
                Output::Table => table_out(&mut out, &view.workers)?,
            }
        }
        Command::Reset {
            table,
            stream,
            to,
            shards,
            dry_run,
            wait,
            admin_id,
        } => {
            let lease_table = table.open().await?;
            let backend = backend().await;
            let request = ResetRequest { target: to, shards };
            let plan = reset::plan(
                lease_table.as_ref(),
                backend.as_ref(),
                &stream,
                request,
                table.watch(),
                SystemTime::now(),
            )
            .await?;
            print_plan(&plan, dry_run)?;
            if !dry_run && !plan.changes.is_empty() {
                let options = ApplyOptions {
                    admin_id,
                    wait: Duration::from_secs(wait),
                    ..ApplyOptions::default()
                };
                let applied = reset::apply(lease_table.as_ref(), &plan, &options).await?;
                let mut out = std::io::stdout().lock();
                for a in &applied {
                    match &a.handed_over_by {
                        Some(worker) => writeln!(
                            out,
                            "reset {} to {} (handed over by {worker}, given back to it)",
                            a.key,
                            checkpoint_text(&a.to)
                        )?,
                        None => writeln!(out, "reset {} to {}", a.key, checkpoint_text(&a.to))?,
                    }
                }
                writeln!(out, "done: {} lease(s) reset", applied.len())?;
            }
        }
        Command::Cleanup { table, apply } => {
            let lease_table = table.open().await?;
            let view = watch_workers(lease_table.as_ref(), table.watch()).await?;
            let plan = cleanup::plan(&view);
            let mut out = std::io::stdout().lock();
            if plan.is_empty() {
                writeln!(out, "nothing to clean up")?;
                return Ok(());
            }
            let rows: Vec<Vec<String>> = plan
                .iter()
                .map(|c| vec![c.key.clone(), c.why.as_str().to_owned()])
                .collect();
            writeln!(
                out,
                "{} {} row(s):",
                if apply {
                    "deleting"
                } else {
                    "would delete (run with --apply)"
                },
                plan.len()
            )?;
            print_table(&mut out, &["ROW", "WHY"], &rows)?;
            if apply {
                let (deleted, kept) = cleanup::apply(lease_table.as_ref(), &plan).await?;
                writeln!(out, "deleted {} row(s)", deleted.len())?;
                if !kept.is_empty() {
                    writeln!(out, "kept (changed since read): {}", kept.join(", "))?;
                }
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kcl", &mut std::io::stdout());
        }
    }
    Ok(())
}

fn table_out(out: &mut impl Write, workers: &[admin::WorkerInfo]) -> std::io::Result<()> {
    print_table(out, &WORKER_HEADER, &workers_rows(workers))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kcl: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = format!("kcl: error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_and_argument_has_help() {
        Cli::command().debug_assert();
        let command = Cli::command();
        for sub in command.get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some() || arg.get_id() == "help",
                    "{} --{} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn targets_parse_and_bad_ones_are_named() {
        assert_eq!(parse_target("latest"), Ok(ResetTarget::Latest));
        assert_eq!(parse_target("trim-horizon"), Ok(ResetTarget::TrimHorizon));
        assert_eq!(
            parse_target("at-timestamp:1970-01-01T00:00:10Z"),
            Ok(ResetTarget::AtTimestamp(
                SystemTime::UNIX_EPOCH + Duration::from_secs(10)
            ))
        );
        assert!(matches!(
            parse_target("sequence:123"),
            Ok(ResetTarget::Sequence(_))
        ));
        let bad = parse_target("at-timestamp:yesterday").unwrap_err();
        assert!(bad.contains("yesterday"), "{bad}");
        assert!(parse_target("sequence:12a").is_err());
        assert!(parse_target("earliest").is_err());
    }
}
