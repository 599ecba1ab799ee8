//! What `kvpress serve` is started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where compressed contexts are kept beyond memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// `.kvp` files in a folder (written atomically, checksummed).
    Dir(PathBuf),
    /// A Redis server (`redis://HOST:PORT[/DB]`) that several servers share.
    Redis(String),
}

impl StoreLocation {
    /// Parses `--store`: a `redis://` URL, else a folder.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("the store is empty: give a folder or redis://HOST:PORT".to_string());
        }
        if text.starts_with("redis://") {
            return Ok(Self::Redis(text.to_string()));
        }
        if text.contains("://") {
            return Err(format!(
                "unknown store `{text}`: give a folder, or redis://HOST:PORT for a Redis server \
                 (TLS, rediss://, is not supported)"
            ));
        }
        Ok(Self::Dir(PathBuf::from(text)))
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::Redis(url) => f.write_str(url),
        }
    }
}

/// Settings of a server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to listen on (port 0: any free port).
    pub address: SocketAddr,
    /// Where contexts are stored.
    pub store: StoreLocation,
    /// Bearer key every request must carry (`None`: no key needed).
    pub api_key: Option<String>,
    /// Most answers decoded together (one token each per step).
    pub max_batch: usize,
    /// Most requests waiting for a place (answers beyond `max_batch`, context compressions);
    /// more are answered 429 with `Retry-After`.
    pub max_queue: usize,
    /// Bytes of compressed contexts kept in memory; the least recently used ones beyond it are
    /// dropped from memory (they stay in the store and are loaded back when asked for).
    pub context_memory: usize,
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_limit: usize,
    /// After SIGTERM (or [`crate::Server::shutdown`]): how long running answers may
    /// take to finish before the server stops anyway.
    pub shutdown_grace: Duration,
    /// Shut down gracefully on SIGTERM and Ctrl-C (what `kvpress serve` does); otherwise only
    /// through [`crate::Server::shutdown`].
    pub handle_signals: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 8080)),
            store: StoreLocation::Dir(default_store_dir()),
            api_key: None,
            max_batch: 16,
            max_queue: 64,
            context_memory: 1 << 30,
            max_body_bytes: 8 << 20,
            max_tokens_limit: 4096,
            shutdown_grace: Duration::from_secs(30),
            handle_signals: false,
        }
    }
}

impl ServeOptions {
    /// Refuses settings that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch == 0 {
            return Err("--max-batch must be at least 1".to_string());
        }
        if self.max_body_bytes < 1024 {
            return Err("--max-body-bytes must be at least 1024".to_string());
        }
        if self.max_tokens_limit == 0 {
            return Err("--max-tokens-limit must be at least 1".to_string());
        }
        if let Some(key) = &self.api_key {
            if key.trim().is_empty() || key.chars().any(|c| c.is_whitespace()) {
                return Err("--api-key must be non-empty and without whitespace".to_string());
            }
        }
        Ok(())
    }
}

/// `$KVPRESS_HOME/contexts` (`~/.cache/kvpress/contexts` by default).
pub fn default_store_dir() -> PathBuf {
    kvpress::models::default_model::kvpress_home().join("contexts")
}
