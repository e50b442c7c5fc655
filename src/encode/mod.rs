//! Pure formatting: outbox records to the bytes a receiver expects. No I/O, no clocks, no config
//! lookups; every function here is deterministic and unit-tested byte for byte.

pub mod cef;
pub mod decimal;
pub mod hec;
pub mod json;
pub mod syslog;
pub mod timestamp;
