//! ExpectedAttention for kvpress-rs: expected attention of future queries from query statistics.
#![warn(missing_docs)]
