//! Several compressed contexts answered together: each context keeps its own (compressed) cache
//! and question; the decoding steps run as one batch over a per-head cache that holds every
//! sequence's heads with their own lengths and positions.

use anyhow::{ensure, Context, Result};
use candle_core::Tensor;
use hooks::ContextSession;
use kvpress_core::{LayerCache, LayerSnapshot, ModelCache};
use models::{argmax, LoadedModel};

/// Answers `question_ids[i]` from `sessions[i]` greedily (at most `max_new_tokens` tokens,
/// stopping at end-of-sequence), decoding all sequences in one batch. Each question is first
/// run on its own session's cache; the caches are then put side by side (per-head layout,
/// per-sequence positions) and decoded together. Sessions are rewound afterwards, so they can
/// answer again. The answers equal those of one-at-a-time greedy answering.
pub fn answer_batch(
    model: &LoadedModel,
    sessions: &mut [ContextSession],
    question_ids: &[Vec<u32>],
    max_new_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    ensure!(
        sessions.len() == question_ids.len() && !sessions.is_empty(),
        "one question per context is needed ({} contexts, {} questions)",
        sessions.len(),
        question_ids.len()
    );
    let m = &model.model;
    let eos = model.tokenizer.eos_ids();
    let mut answers: Vec<Vec<u32>> = vec![Vec::new(); sessions.len()];
    if max_new_tokens == 0 {
        return Ok(answers);
    }
    let mut next = Vec::with_capacity(sessions.len());
    for (session, question) in sessions.iter_mut().zip(question_ids) {
        ensure!(!question.is_empty(), "an empty question");
        let input = Tensor::new(question.as_slice(), m.device())?.unsqueeze(0)?;
        let logits = m.forward(&input, session.cache_mut(), None)?;
        next.push(argmax(&logits.squeeze(0)?.to_vec1()?));
    }
    let mut cache = merge(sessions, m.config().n_kv_heads)?;
    for session in sessions.iter_mut() {
        session.rewind()?;
    }
    let mut done = vec![false; next.len()];
    loop {
        for (i, &token) in next.iter().enumerate() {
            if !done[i] {
                answers[i].push(token);
                done[i] = eos.contains(&token) || answers[i].len() >= max_new_tokens;
            }
        }
        if done.iter().all(|&d| d) || cache.seen_tokens() >= m.config().max_position_embeddings {
            break;
        }
        // Finished sequences keep decoding their last token; their outputs are ignored.
        let input = Tensor::new(next.as_slice(), m.device())?.unsqueeze(1)?;
        let logits = m.forward(&input, &mut cache, None)?;
        for (i, row) in logits.to_vec2::<f32>()?.iter().enumerate() {
            next[i] = argmax(row);
        }
    }
    Ok(answers)
}

/// Every session's cache as one batch: layer by layer, the heads of sequence `i` become heads
/// `i * n_kv_heads ..` of a flattened cache; positions stay per sequence.
fn merge(sessions: &[ContextSession], n_kv_heads: usize) -> Result<ModelCache> {
    let n_layers = sessions[0].cache().n_layers();
    let mut layers: Vec<Box<dyn LayerCache>> = Vec::with_capacity(n_layers);
    for layer_idx in 0..n_layers {
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut lengths = Vec::new();
        for session in sessions {
            let layer = session
                .cache()
                .layer(layer_idx)
                .context("a layer of a session's cache")?;
            match layer.snapshot()? {
                LayerSnapshot::Dense(Some((k, v))) => {
                    let (b, h, len, d) = k.dims4()?;
                    ensure!(b == 1, "batched answering takes single-sequence sessions");
                    keys.push(k.reshape((h * len, d))?);
                    values.push(v.reshape((h * len, d))?);
                    lengths.extend(std::iter::repeat_n(len, h));
                }
                LayerSnapshot::PerHead {
                    keys: k,
                    values: v,
                    head_lengths,
                    batch,
                    ..
                } => {
                    ensure!(
                        batch == 1,
                        "batched answering takes single-sequence sessions"
                    );
                    keys.push(k);
                    values.push(v);
                    lengths.extend(head_lengths);
                }
                LayerSnapshot::Dense(None) => anyhow::bail!("a session's cache is empty"),
            }
        }
        layers.push(Box::new(adakv::FlatLayerCache::from_rows(
            &Tensor::cat(&keys, 0)?,
            &Tensor::cat(&values, 0)?,
            &lengths,
            sessions.len(),
            n_kv_heads,
        )?));
    }
    let mut cache = ModelCache::from_layers(layers);
    cache.set_sequence_positions(sessions.iter().map(|s| s.cache().seen_tokens()).collect());
    Ok(cache)
}
