//! Contexts in a Redis server, shared by every `kvpress serve` that points at it: key
//! `kvpress:context:<id>` holds the `.kvp` bytes. A `SET` is atomic, so a reader sees a whole
//! context or none; the bytes carry their checksums, checked when loaded.

use std::sync::Mutex;

use redis::Commands;

use super::{is_context_id, ContextStore, StoreError};

const PREFIX: &str = "kvpress:context:";

/// A Redis server holding contexts.
pub struct RedisStore {
    url: String,
    connection: Mutex<Option<redis::Connection>>,
    client: redis::Client,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .finish()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://HOST:PORT[/DB]`), checking that the server answers.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let error = |message: String| StoreError {
            store: url.to_string(),
            message,
        };
        let client = redis::Client::open(url).map_err(|e| error(format!("bad URL: {e}")))?;
        let store = Self {
            url: url.to_string(),
            connection: Mutex::new(None),
            client,
        };
        store.with(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(store)
    }

    /// Runs `f` on the connection, connecting (again) when there is none or the last one
    /// failed.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let connection = self
                .client
                .get_connection_with_timeout(std::time::Duration::from_secs(5))
                .map_err(|e| self.error(format!("cannot connect: {e}")))?;
            *slot = Some(connection);
        }
        let connection = slot.as_mut().expect("connected above");
        f(connection).map_err(|e| {
            *slot = None;
            self.error(e.to_string())
        })
    }

    fn error(&self, message: String) -> StoreError {
        StoreError {
            store: self.describe(),
            message,
        }
    }
}

impl ContextStore for RedisStore {
    fn put(&self, id: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.with(|c| c.set::<_, _, ()>(format!("{PREFIX}{id}"), bytes))
    }

    fn get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| c.get::<_, Option<Vec<u8>>>(format!("{PREFIX}{id}")))
    }

    fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| c.del::<_, usize>(format!("{PREFIX}{id}")))
            .map(|n| n > 0)
    }

    fn list(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let keys: Vec<String> = self.with(|c| {
            let keys: Vec<String> = c.scan_match(format!("{PREFIX}*"))?.collect();
            Ok(keys)
        })?;
        let mut ids = Vec::new();
        for key in keys {
            let id = &key[PREFIX.len()..];
            if !is_context_id(id) {
                continue;
            }
            let size: u64 = self.with(|c| c.strlen(&key))?;
            if size > 0 {
                ids.push((id.to_string(), size));
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
