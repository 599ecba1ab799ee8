//! The decoding loop: continuous batching over the answers the prefill worker hands over.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use kvpress::core::ModelCache;
use kvpress::models::LoadedModel;

use super::answer::Answer;
use crate::error::ApiError;
use crate::metrics::Metrics;

pub(super) struct Decoder {
    pub model: Arc<LoadedModel>,
    pub metrics: Arc<Metrics>,
    pub max_batch: usize,
}

impl Decoder {
    /// Runs until the prefill worker is gone and every answer has finished.
    pub fn run(self, ready: mpsc::Receiver<Answer>) {
        let mut running: Vec<Answer> = Vec::new();
        let mut last_step: Option<Instant> = None;
        loop {
            if running.is_empty() {
                last_step = None;
                match ready.recv() {
                    Ok(answer) => self.join(&mut running, answer),
                    Err(_) => return,
                }
            }
            while running.len() < self.max_batch {
                match ready.try_recv() {
                    Ok(answer) => self.join(&mut running, answer),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if running.is_empty() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            running.retain(|answer| !answer.finished && !answer.abandoned());
            if running.is_empty() {
                continue;
            }
            if let Some(last) = last_step {
                let gap = last.elapsed().as_micros() as u64;
                self.metrics
                    .max_step_gap_micros
                    .fetch_max(gap, Ordering::Relaxed);
            }
            let start = Instant::now();
            self.step(&mut running);
            self.metrics
                .record_step(running.len(), start.elapsed().as_micros() as u64);
            last_step = Some(Instant::now());
            running.retain(|answer| !answer.finished);
        }
    }

    fn join(&self, running: &mut Vec<Answer>, answer: Answer) {
        if !answer.finished {
            running.push(answer);
        }
    }

    /// One token of every running answer, in one forward.
    fn step(&self, running: &mut [Answer]) {
        let tokens: Vec<[u32; 1]> = running.iter().map(|a| [a.next]).collect();
        let tokens: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
        let mut caches: Vec<&mut ModelCache> = running.iter_mut().map(|a| &mut a.cache).collect();
        let logits = match self.model.model.forward_sequences(&tokens, &mut caches) {
            Ok(logits) => logits,
            Err(e) => {
                let error = ApiError::internal(format!("a decoding step failed: {e}"));
                for answer in running.iter_mut() {
                    answer.fail(error.clone());
                }
                return;
            }
        };
        for (i, answer) in running.iter_mut().enumerate() {
            let next = logits
                .get(i)
                .map_err(|e| ApiError::internal(e.to_string()))
                .and_then(|row| answer.sample(&row));
            match next {
                Ok(id) => answer.accept(&self.model, &self.metrics, id),
                Err(error) => answer.fail(error),
            }
        }
    }
}
