//! Merging for kvpress-rs: evict, then merge evicted values into similar survivors (kvpress 0.5.5's merging press).
#![warn(missing_docs)]
