//! The DynamoDB request-unit rules the cost figures (`lease_figures`) are computed with.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod counting;

use counting::{read_units, write_units};

#[test]
fn units_follow_the_read_kind_and_size() {
    assert_eq!(read_units(0.0, false), 1000, "at least one unit");
    assert_eq!(read_units(4096.0, false), 1000);
    assert_eq!(read_units(4097.0, false), 2000);
    assert_eq!(read_units(4097.0, true), 1000, "eventual reads cost half");
    assert_eq!(read_units(100.0, true), 500);
    assert_eq!(write_units(300.0), 1);
    assert_eq!(write_units(1025.0), 2);
}
