//! ThinK for kvpress-rs: key-channel pruning that stores only the kept channels.
#![warn(missing_docs)]
