//! The runtime on the default model: a context prefilled once answers several questions, each
//! from the same cache, exactly as a single uncompressed run would.

use kvpress::candle::{Device, Tensor};
use kvpress::hooks::{ContextSession, PromptSplit};
use kvpress::models::{generate, load_model, ChatMessage, GenerationConfig, LoadedModel};

fn model() -> LoadedModel {
    let path = kvpress::default_model::require().unwrap_or_else(|e| panic!("{e:#}"));
    load_model(&path, None, &Device::Cpu).expect("the default model loads")
}

const CONTEXT: &str = "Alice lives in Lisbon. Bob lives in Oslo. Carol lives in Quito.";
const CONFIG: GenerationConfig = GenerationConfig {
    max_new_tokens: 12,
    sampling: kvpress::models::Sampling::Greedy,
};

#[test]
fn prompt_split_reassembles_the_chat_prompt() {
    let loaded = model();
    let question = "Where does Bob live?";
    let split = PromptSplit::new(&loaded, CONTEXT, question).unwrap();
    let template = loaded.chat_template.as_ref().unwrap();
    let whole = template
        .render(&[ChatMessage::user(format!("{CONTEXT}{question}"))], true)
        .unwrap();
    assert_eq!(
        format!("{}{}", split.context_text, split.question_text),
        whole
    );
    assert!(split.context_text.ends_with(CONTEXT));
    assert!(split.question_text.starts_with(question));
}

#[test]
fn a_session_answers_many_questions_from_one_prefill() {
    let loaded = model();
    let eos = loaded.tokenizer.eos_ids();
    let questions = [" Where does Bob live?", " Where does Carol live?"];
    let split = PromptSplit::new(&loaded, CONTEXT, questions[0]).unwrap();
    let mut session = ContextSession::prefill(&loaded.model, &split.context_ids, None).unwrap();
    let lengths = session.cache().lengths();
    let seen = session.cache().seen_tokens();
    assert_eq!(seen, split.context_ids.len());

    for question in questions {
        let split = PromptSplit::new(&loaded, CONTEXT, question).unwrap();
        let first = session
            .answer(
                &loaded.model,
                &split.question_ids,
                eos,
                &CONFIG,
                &mut |_| Ok(()),
            )
            .unwrap();
        assert_eq!(
            session.cache().lengths(),
            lengths,
            "the cache is rewound after an answer"
        );
        assert_eq!(session.cache().seen_tokens(), seen);
        let again = session
            .answer(
                &loaded.model,
                &split.question_ids,
                eos,
                &CONFIG,
                &mut |_| Ok(()),
            )
            .unwrap();
        assert_eq!(
            first.tokens, again.tokens,
            "the same question gets the same answer"
        );

        // One uncompressed run over context + question gives the same tokens.
        let whole: Vec<u32> = split
            .context_ids
            .iter()
            .chain(&split.question_ids)
            .copied()
            .collect();
        let mut cache = loaded.model.new_cache();
        let direct = generate(
            &loaded.model,
            &mut cache,
            &whole,
            eos,
            &CONFIG,
            None,
            &mut |_| Ok(()),
        )
        .unwrap();
        assert_eq!(first.tokens, direct.tokens, "{question}");
        assert!(!first.tokens.is_empty());
    }
}

#[test]
fn last_context_logits_equal_a_plain_forward() {
    let loaded = model();
    let split = PromptSplit::new(&loaded, CONTEXT, "?").unwrap();
    let session = ContextSession::prefill(&loaded.model, &split.context_ids, None).unwrap();
    let mut cache = loaded.model.new_cache();
    let input = Tensor::new(split.context_ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = loaded
        .model
        .forward(&input, &mut cache, None)
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_eq!(
        session.last_logits.to_vec1::<f32>().unwrap(),
        logits.to_vec1::<f32>().unwrap()
    );
}
