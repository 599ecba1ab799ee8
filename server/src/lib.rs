//! `kvpress serve`: an OpenAI-compatible server where compressed contexts are resources.
//!
//! - `POST /v1/contexts` compresses a text once with any press and stores it; chat completions
//!   that carry its `context_id` answer from it, on any replica that shares the store.
//! - `POST /v1/chat/completions` and `/v1/completions` as OpenAI defines them (streaming
//!   included), decoded with continuous batching ([`engine`]).
//! - Contexts stay in memory up to a byte budget and always in the store ([`store`]: a folder
//!   of `.kvp` files, or Redis), so they survive restarts and are shared between servers.
//!
//! ```no_run
//! use kvpress_server::{ServeOptions, Server};
//!
//! let model = kvpress::models::load_model(&kvpress::default_model::require()?, None,
//!                                         &candle_core::Device::Cpu)?;
//! let server = Server::start(model, ServeOptions::default())?;
//! println!("listening on {}", server.address());
//! server.wait();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod contexts;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod options;
mod routes;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kvpress::models::LoadedModel;
use tokio::sync::watch;

pub use options::{ServeOptions, StoreLocation};

/// A failure to start a server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The options are invalid.
    #[error("{0}")]
    Options(String),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The address cannot be bound, or a thread cannot start.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running server: its address, and how to stop it.
pub struct Server {
    address: SocketAddr,
    shutdown: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Loads the store, starts the engine and listens on `options.address` (in threads of its
    /// own); returns once the server accepts connections.
    pub fn start(model: LoadedModel, options: ServeOptions) -> Result<Self, StartError> {
        options.validate().map_err(StartError::Options)?;
        let model = Arc::new(model);
        let store = store::open(&options.store)?;
        let metrics = Arc::new(metrics::Metrics::default());
        let contexts = Arc::new(contexts::Contexts::new(
            Arc::clone(&model),
            store,
            options.context_memory,
        ));
        let engine = engine::Engine::start(
            Arc::clone(&model),
            Arc::clone(&contexts),
            Arc::clone(&metrics),
            engine::EngineLimits {
                max_batch: options.max_batch,
                max_queue: options.max_queue,
            },
        )?;
        let app = Arc::new(routes::App {
            model_id: model_id(&model),
            model,
            engine,
            contexts,
            metrics,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            options: options.clone(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(options.address))?;
        let address = listener.local_addr()?;
        let (shutdown, mut stop) = watch::channel(false);
        let shutdown_on_signal = shutdown.clone();
        let grace = options.shutdown_grace;
        let signals = options.handle_signals;
        let thread = std::thread::Builder::new()
            .name("kvpress-http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let router = routes::router(app);
                    if signals {
                        tokio::spawn(forward_signals(shutdown_on_signal));
                    }
                    let mut deadline = stop.clone();
                    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    });
                    // After the signal, running answers get `grace` to finish.
                    tokio::select! {
                        _ = server => {}
                        _ = async {
                            let _ = deadline.wait_for(|s| *s).await;
                            tokio::time::sleep(grace).await;
                        } => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Self {
            address,
            shutdown,
            thread,
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting connections; running answers finish (within the grace period), then
    /// the server stops. Returns once it has.
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.thread.join();
    }

    /// A handle that asks the server to shut down (from a signal handler's thread).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Waits until the server has stopped.
    pub fn wait(self) {
        let _ = self.thread.join();
    }
}

/// Asks a server to shut down gracefully.
#[derive(Clone)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Stops accepting connections and lets running answers finish.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

/// Asks for a graceful shutdown on SIGTERM or Ctrl-C.
async fn forward_signals(shutdown: watch::Sender<bool>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("kvpress serve: shutting down (running answers finish first)");
    let _ = shutdown.send(true);
}

/// The model's id in the API: its file name without extension (GGUF), or its folder's name.
pub fn model_id(model: &LoadedModel) -> String {
    let path = &model.path;
    let name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    name.map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned())
}
