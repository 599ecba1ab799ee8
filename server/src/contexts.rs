//! Compressed contexts as resources: kept in memory up to a byte budget (least recently used
//! ones dropped first), every one of them in the store. A context is confirmed to a client only
//! once its bytes are in the store and have been read back from those bytes, so a confirmed
//! context is whole there and loads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use kvpress::core::press::Press;
use kvpress::hooks::context_file::{self, ContextHeader};
use kvpress::hooks::ContextSession;
use kvpress::models::LoadedModel;
use serde::Serialize;

use crate::error::ApiError;
use crate::store::{is_context_id, new_context_id, ContextStore};

/// What a client is told about a context.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContextInfo {
    /// Its id (`ctx-` and 16 hex digits).
    pub id: String,
    /// Always `"context"`.
    pub object: &'static str,
    /// Tokens of the context (as the chat template's user turn).
    pub context_tokens: usize,
    /// Fraction of the (layer, head, token) entries the press kept.
    pub kept_fraction: f64,
    /// Bytes its KV cache holds in memory.
    pub kv_bytes: usize,
    /// Bytes it takes in the store.
    pub stored_bytes: usize,
    /// The press config that compressed it.
    pub press: serde_json::Value,
}

/// A compressed context, ready to answer (each answer answers from a copy of its cache).
#[derive(Debug)]
pub struct StoredContext {
    /// What it is.
    pub info: ContextInfo,
    /// Its prefilled, compressed cache.
    pub session: ContextSession,
}

struct Memory {
    contexts: HashMap<String, (Arc<StoredContext>, u64)>,
    bytes: usize,
    clock: u64,
}

/// The contexts of a server.
pub struct Contexts {
    model: Arc<LoadedModel>,
    store: Box<dyn ContextStore>,
    memory: Mutex<Memory>,
    memory_limit: usize,
}

impl Contexts {
    /// Contexts of `model` in `store`, at most `memory_limit` bytes of them in memory.
    pub fn new(model: Arc<LoadedModel>, store: Box<dyn ContextStore>, memory_limit: usize) -> Self {
        Self {
            model,
            store,
            memory: Mutex::new(Memory {
                contexts: HashMap::new(),
                bytes: 0,
                clock: 0,
            }),
            memory_limit,
        }
    }

    /// Stores a context just compressed by `press`, then reads it back from the stored bytes;
    /// returns it once it is in the store.
    pub fn add(
        &self,
        session: &ContextSession,
        context_ids: &[u32],
        press: &dyn Press,
    ) -> Result<Arc<StoredContext>, ApiError> {
        let id = new_context_id();
        let bytes =
            context_file::to_bytes(Path::new(&id), &self.model, session, context_ids, press)
                .map_err(crate::error::from_library)?;
        self.store.put(&id, &bytes).map_err(store_error)?;
        let context = self.read(&id, &bytes)?;
        Ok(self.remember(context))
    }

    /// The context `id`, from memory or else from the store (404 when it is in neither).
    pub fn get(&self, id: &str) -> Result<Arc<StoredContext>, ApiError> {
        if !is_context_id(id) {
            return Err(not_found(id));
        }
        if let Some(context) = self.touch(id) {
            return Ok(context);
        }
        let bytes = self
            .store
            .get(id)
            .map_err(store_error)?
            .ok_or_else(|| not_found(id))?;
        let context = self.read(id, &bytes)?;
        Ok(self.remember(context))
    }

    /// Removes `id` from memory and the store (404 when it was in neither).
    pub fn delete(&self, id: &str) -> Result<(), ApiError> {
        if !is_context_id(id) {
            return Err(not_found(id));
        }
        let in_memory = {
            let mut memory = self.memory();
            match memory.contexts.remove(id) {
                Some((context, _)) => {
                    memory.bytes -= context.info.kv_bytes;
                    true
                }
                None => false,
            }
        };
        let in_store = self.store.delete(id).map_err(store_error)?;
        if in_memory || in_store {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }

    /// Every stored context: its id and stored size, and the rest of its description when it
    /// is in memory.
    pub fn list(&self) -> Result<Vec<serde_json::Value>, ApiError> {
        let stored = self.store.list().map_err(store_error)?;
        let memory = self.memory();
        Ok(stored
            .into_iter()
            .map(|(id, size)| match memory.contexts.get(&id) {
                Some((context, _)) => serde_json::to_value(&context.info).unwrap_or_default(),
                None => serde_json::json!({"id": id, "object": "context", "stored_bytes": size}),
            })
            .collect())
    }

    /// Contexts in memory and the bytes their caches hold.
    pub fn in_memory(&self) -> (usize, usize) {
        let memory = self.memory();
        (memory.contexts.len(), memory.bytes)
    }

    /// Contexts in the store and their bytes.
    pub fn in_store(&self) -> Result<(usize, u64), ApiError> {
        let stored = self.store.list().map_err(store_error)?;
        Ok((stored.len(), stored.iter().map(|(_, size)| size).sum()))
    }

    fn read(&self, id: &str, bytes: &[u8]) -> Result<StoredContext, ApiError> {
        let (session, header) = context_file::load_bytes(Path::new(id), bytes, &self.model)
            .map_err(|e| {
                ApiError::internal(format!(
                    "context {id} is in the store ({}) but cannot be loaded: {e}",
                    self.store.describe()
                ))
            })?;
        let info = ContextInfo {
            id: id.to_string(),
            object: "context",
            context_tokens: header.context_ids.len(),
            kept_fraction: kept_fraction(&self.model, &session, &header),
            kv_bytes: session.cache().bytes_reserved(),
            stored_bytes: bytes.len(),
            // The press config as saved (the press's own JSON, checked when the file loaded).
            press: header.press.clone(),
        };
        Ok(StoredContext { info, session })
    }

    fn touch(&self, id: &str) -> Option<Arc<StoredContext>> {
        let mut memory = self.memory();
        memory.clock += 1;
        let now = memory.clock;
        let (context, used) = memory.contexts.get_mut(id)?;
        *used = now;
        Some(Arc::clone(context))
    }

    /// Keeps `context` in memory, dropping the least recently used others beyond the budget.
    fn remember(&self, context: StoredContext) -> Arc<StoredContext> {
        let context = Arc::new(context);
        let mut memory = self.memory();
        memory.clock += 1;
        let now = memory.clock;
        let id = context.info.id.clone();
        if let Some((old, _)) = memory.contexts.remove(&id) {
            memory.bytes -= old.info.kv_bytes;
        }
        memory.bytes += context.info.kv_bytes;
        memory
            .contexts
            .insert(id.clone(), (Arc::clone(&context), now));
        while memory.bytes > self.memory_limit && memory.contexts.len() > 1 {
            let oldest = memory
                .contexts
                .iter()
                .filter(|(other, _)| **other != id)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(other, _)| other.clone());
            let Some(oldest) = oldest else { break };
            if let Some((dropped, _)) = memory.contexts.remove(&oldest) {
                memory.bytes -= dropped.info.kv_bytes;
            }
        }
        context
    }

    fn memory(&self) -> MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Kept (layer, head, token) entries over those of the full context: per-head lengths where
/// the file lists them, else the layer's length for every KV head.
fn kept_fraction(model: &LoadedModel, session: &ContextSession, header: &ContextHeader) -> f64 {
    let config = model.model.config();
    let lengths = session.cache().lengths();
    let kept: usize = header
        .head_lengths
        .iter()
        .zip(&lengths)
        .map(|(heads, &len)| match heads {
            Some(heads) => heads.iter().sum(),
            None => len * config.n_kv_heads,
        })
        .sum();
    let total = config.n_layers * config.n_kv_heads * header.context_ids.len();
    if total == 0 {
        1.0
    } else {
        kept as f64 / total as f64
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "context_not_found",
        format!(
            "no context `{id}`: create one with POST /v1/contexts, list them with GET /v1/contexts"
        ),
    )
}

fn store_error(error: crate::store::StoreError) -> ApiError {
    ApiError::internal(error.to_string())
}
