//! `kvpress serve`: the OpenAI-compatible server (crate `kvpress-server`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use kvpress_server::{ServeOptions, Server, StoreLocation};

use crate::cli::ModelArgs;
use crate::values;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Where compressed contexts are kept: a folder, or redis://HOST:PORT shared by several
    /// servers [default: $KVPRESS_HOME/contexts].
    #[arg(long, value_parser = StoreLocation::parse)]
    store: Option<StoreLocation>,
    /// Bearer key every request must carry (`Authorization: Bearer KEY`); also read from
    /// $KVPRESS_API_KEY.
    #[arg(long, env = "KVPRESS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most answers decoded together.
    #[arg(long, default_value_t = 16, value_parser = values::at_least::<1>)]
    max_batch: usize,
    /// Most further requests waiting (then 429 with Retry-After).
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Bytes of compressed contexts kept in memory (least recently used ones are dropped from
    /// memory, and loaded from the store again when asked for).
    #[arg(long, default_value_t = 1 << 30)]
    context_memory: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 4096, value_parser = values::at_least::<1>)]
    max_tokens_limit: usize,
    /// Seconds running answers get to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
}

pub fn run(args: Args) -> Result<()> {
    super::note_debug_build();
    let model = args.model.load()?;
    let options = ServeOptions {
        address: SocketAddr::new(args.host, args.port),
        store: args
            .store
            .unwrap_or_else(|| StoreLocation::Dir(kvpress_server::options::default_store_dir())),
        api_key: args.api_key,
        max_batch: args.max_batch,
        max_queue: args.max_queue,
        context_memory: args.context_memory,
        max_body_bytes: args.max_body_bytes,
        max_tokens_limit: args.max_tokens_limit,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        handle_signals: true,
    };
    let store = options.store.clone();
    let server = Server::start(model, options).context("cannot start the server")?;
    // Scripts wait for this line (the port is in it when --port 0 chose one).
    println!(
        "kvpress serve: listening on http://{} (store: {store})",
        server.address()
    );
    server.wait();
    Ok(())
}
