//! The `StreamBackend` conformance suite (kcl-testkit's `conformance`), run against the in-memory
//! model (`model::*`) and against a real Kinesis API server through the AWS backend
//! (`kinesis_local::*`, ignored unless a server is there: `scripts/test.sh` starts kinesis-local).
//!
//! Both must pass; where the two differ on purpose the case says so, and the model's module docs
//! list the differences.

mod model {
    kcl_testkit::stream_backend_conformance_tests!(kcl_testkit::kinesis::Kinesis::model());
}

mod kinesis_local {
    kcl_testkit::stream_backend_conformance_tests!(
        kcl_testkit::kinesis::Kinesis::server().await,
        #[ignore = "needs a Kinesis endpoint: run scripts/test.sh"]
    );
}
