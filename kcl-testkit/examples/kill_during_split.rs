//! A processor tested against "kill one of three workers during a split", in virtual time,
//! printing the report: `cargo run -p kcl-testkit --example kill_during_split [SEED]`.

use std::time::{Duration, Instant};

use kcl_core::checkpoint::Checkpointer;
use kcl_core::processor::{BoxError, ProcessRecordsInput, RecordProcessor, ShardInfo};
use kcl_testkit::Cluster;

/// Sums the payload lengths it sees, as a stand-in for real work.
#[derive(Default)]
struct Summer {
    bytes: usize,
}

impl RecordProcessor for Summer {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.bytes += input.records.iter().map(|r| r.data().len()).sum::<usize>();
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let wall = Instant::now();
    let mut cluster = Cluster::builder(|_: &ShardInfo| Summer::default())
        .workers(3)
        .seed(seed)
        .start()
        .await;
    cluster.produce(1_000).await;
    // The leases spread over the three workers; each has records in flight when w1 dies.
    cluster.run_for(Duration::from_secs(5)).await;
    cluster.produce(1_000).await;
    cluster.run_for(Duration::from_millis(1_500)).await;
    cluster.split(0);
    cluster.kill(1).await;
    cluster.produce(1_000).await;
    let report = cluster.finish().await;
    println!("{report}");
    println!("(real time: {:?})", wall.elapsed());
    report.assert_complete_and_ordered();
}
