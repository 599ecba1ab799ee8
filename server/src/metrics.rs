//! Counters and gauges of a server, written as Prometheus text (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// What the server counts.
#[derive(Debug, Default)]
pub struct Metrics {
    responses: Mutex<BTreeMap<(String, u16), u64>>,
    /// Tokens generated (all answers).
    pub tokens_generated: AtomicU64,
    /// Decoding steps run (one token of every answer of the batch each).
    pub decode_steps: AtomicU64,
    /// Microseconds spent in decoding steps.
    pub decode_micros: AtomicU64,
    /// Answers in the last decoding step.
    pub batch_size: AtomicUsize,
    /// Most answers in one decoding step so far.
    pub batch_size_max: AtomicUsize,
    /// Tokens per second of the last decoding step (all answers together), times 1000.
    pub last_step_milli_tokens_per_second: AtomicU64,
    /// Answers and compressions accepted and not finished.
    pub in_flight: AtomicUsize,
    /// Longest pause of the decoding loop between two steps while answers were running, in
    /// microseconds (a prefill or compression that stalled decoding shows here).
    pub max_step_gap_micros: AtomicU64,
    /// Contexts compressed.
    pub contexts_created: AtomicU64,
}

/// Store and memory figures read when the metrics are written.
#[derive(Debug, Default)]
pub struct StoreFigures {
    /// Contexts in memory.
    pub contexts_in_memory: usize,
    /// KV bytes of the contexts in memory.
    pub kv_bytes_in_memory: usize,
    /// Contexts in the store (`None` when the store could not be read).
    pub contexts_stored: Option<usize>,
    /// Bytes in the store.
    pub bytes_stored: Option<u64>,
}

impl Metrics {
    /// Counts a response of `route` with `status`.
    pub fn count_response(&self, route: &str, status: u16) {
        let mut responses = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        *responses.entry((route.to_string(), status)).or_default() += 1;
    }

    /// Records one decoding step of `batch` answers that took `micros`.
    pub fn record_step(&self, batch: usize, micros: u64) {
        self.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.decode_micros.fetch_add(micros, Ordering::Relaxed);
        self.batch_size.store(batch, Ordering::Relaxed);
        self.batch_size_max.fetch_max(batch, Ordering::Relaxed);
        let rate = batch as f64 * 1e6 / micros.max(1) as f64;
        self.last_step_milli_tokens_per_second
            .store((rate * 1000.0) as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, store: &StoreFigures) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP kvpress_requests_total Responses by route and HTTP status."
        );
        let _ = writeln!(out, "# TYPE kvpress_requests_total counter");
        for ((route, status), n) in self
            .responses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "kvpress_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let decode_seconds = get(&self.decode_micros) as f64 / 1e6;
        let tokens = get(&self.tokens_generated);
        let lines: [(&str, &str, &str, String); 13] = [
            (
                "kvpress_tokens_generated_total",
                "counter",
                "Tokens generated.",
                tokens.to_string(),
            ),
            (
                "kvpress_decode_steps_total",
                "counter",
                "Batched decoding steps.",
                get(&self.decode_steps).to_string(),
            ),
            (
                "kvpress_decode_seconds_total",
                "counter",
                "Seconds in decoding steps.",
                format!("{decode_seconds:.6}"),
            ),
            (
                "kvpress_decode_tokens_per_second",
                "gauge",
                "Tokens per second of the last decoding step, all answers together.",
                format!(
                    "{:.3}",
                    get(&self.last_step_milli_tokens_per_second) as f64 / 1000.0
                ),
            ),
            (
                "kvpress_batch_size",
                "gauge",
                "Answers in the last decoding step.",
                self.batch_size.load(Ordering::Relaxed).to_string(),
            ),
            (
                "kvpress_batch_size_max",
                "gauge",
                "Most answers in one decoding step so far.",
                self.batch_size_max.load(Ordering::Relaxed).to_string(),
            ),
            (
                "kvpress_in_flight",
                "gauge",
                "Answers and compressions accepted and not finished.",
                self.in_flight.load(Ordering::Relaxed).to_string(),
            ),
            (
                "kvpress_decode_max_gap_seconds",
                "gauge",
                "Longest pause between two decoding steps while answers ran.",
                format!("{:.6}", get(&self.max_step_gap_micros) as f64 / 1e6),
            ),
            (
                "kvpress_contexts_created_total",
                "counter",
                "Contexts compressed and stored.",
                get(&self.contexts_created).to_string(),
            ),
            (
                "kvpress_contexts_in_memory",
                "gauge",
                "Compressed contexts held in memory.",
                store.contexts_in_memory.to_string(),
            ),
            (
                "kvpress_kv_bytes_in_memory",
                "gauge",
                "KV-cache bytes of the contexts in memory.",
                store.kv_bytes_in_memory.to_string(),
            ),
            (
                "kvpress_contexts_stored",
                "gauge",
                "Compressed contexts in the store.",
                store
                    .contexts_stored
                    .map_or("NaN".to_string(), |n| n.to_string()),
            ),
            (
                "kvpress_bytes_stored",
                "gauge",
                "Bytes of the contexts in the store.",
                store
                    .bytes_stored
                    .map_or("NaN".to_string(), |n| n.to_string()),
            ),
        ];
        for (name, kind, help, value) in lines {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}
