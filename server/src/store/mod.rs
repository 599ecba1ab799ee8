//! Where compressed contexts live beyond memory: `.kvp` bytes (checksummed, [`kvpress::hooks::context_file`])
//! under an id, in a folder ([`DiskStore`]) or a Redis server ([`RedisStore`]). Every write is
//! whole or absent: a reader never sees part of a context.

mod disk;
mod redis;

pub use disk::DiskStore;
pub use redis::RedisStore;

use crate::options::StoreLocation;

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
#[error("context store ({store}): {message}")]
pub struct StoreError {
    /// Which store.
    pub store: String,
    /// What went wrong.
    pub message: String,
}

/// Compressed contexts by id.
pub trait ContextStore: Send + Sync {
    /// Stores `bytes` under `id` atomically (replacing what was there).
    fn put(&self, id: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// The bytes under `id`, `None` if there are none.
    fn get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Removes `id`; whether it was there.
    fn delete(&self, id: &str) -> Result<bool, StoreError>;
    /// Every stored id with its size in bytes.
    fn list(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// What the store is, for messages (`dir:/path`, `redis://host:port`).
    fn describe(&self) -> String;
}

/// Opens the store `location` names (creating a folder if needed, connecting to Redis).
pub fn open(location: &StoreLocation) -> Result<Box<dyn ContextStore>, StoreError> {
    Ok(match location {
        StoreLocation::Dir(dir) => Box::new(DiskStore::open(dir)?),
        StoreLocation::Redis(url) => Box::new(RedisStore::open(url)?),
    })
}

/// Whether `id` has the form the server gives contexts (`ctx-` and 16 hex digits): anything
/// else is never looked up (no path or key can be made from client input).
pub fn is_context_id(id: &str) -> bool {
    id.len() == 20
        && id.starts_with("ctx-")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A new random context id.
pub fn new_context_id() -> String {
    format!("ctx-{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_own_ids_are_context_ids() {
        let id = new_context_id();
        assert!(is_context_id(&id), "{id}");
        assert!(!is_context_id("ctx-../../etc/passwd"));
        assert!(!is_context_id("ctx-0123456789ABCDEF"));
        assert!(!is_context_id("ctx-0123456789abcde"));
        assert!(!is_context_id("abc-0123456789abcdef"));
    }
}
