//! A metrics recorder for tests: keeps every counter, gauge and histogram the worker records,
//! readable by name and labels without resetting anything.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};

/// Records into a registry of atomics.
pub struct TestRecorder {
    registry: Registry<Key, AtomicStorage>,
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

/// The test binary's recorder, installed as the global one on first use.
pub fn recorder() -> &'static Arc<TestRecorder> {
    static RECORDER: OnceLock<Arc<TestRecorder>> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = Arc::new(TestRecorder {
            registry: Registry::atomic(),
        });
        metrics::set_global_recorder(recorder.clone()).expect("the only recorder of this binary");
        recorder
    })
}

impl TestRecorder {
    /// The sum over the series named `name` that carry every label in `labels`: counters and
    /// gauges by value, histograms by their number of observations.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matches = |key: &Key| {
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        };
        let counters: f64 = self
            .registry
            .get_counter_handles()
            .into_iter()
            .filter(|(key, _)| matches(key))
            .map(|(_, c)| c.load(Ordering::SeqCst) as f64)
            .sum();
        let gauges: f64 = self
            .registry
            .get_gauge_handles()
            .into_iter()
            .filter(|(key, _)| matches(key))
            .map(|(_, g)| f64::from_bits(g.load(Ordering::SeqCst)))
            .sum();
        let histograms: f64 = self
            .registry
            .get_histogram_handles()
            .into_iter()
            .filter(|(key, _)| matches(key))
            .map(|(_, h)| h.data().len() as f64)
            .sum();
        counters + gauges + histograms
    }
}
