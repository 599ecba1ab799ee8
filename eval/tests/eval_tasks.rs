//! The RULER-style generators: reproducible for a seed, contexts within the token budget, every
//! expected value hidden in the context, and RULER's prompts.

use kvpress_eval::{generate, string_match, Haystack, NeedleValue, TaskKind};

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

fn all_tasks() -> Vec<(&'static str, TaskKind)> {
    vec![
        ("niah_single", TaskKind::niah_single()),
        (
            "niah_single_essay_uuid",
            TaskKind::Niah {
                haystack: Haystack::Essay(
                    "Paul wrote essays. They were long! Were they good? Some were.".to_string(),
                ),
                value: NeedleValue::Uuids,
                n_keys: 1,
                n_values: 1,
                n_queries: 1,
            },
        ),
        ("niah_multikey", TaskKind::niah_multikey()),
        ("niah_multivalue", TaskKind::niah_multivalue()),
        ("niah_multiquery", TaskKind::niah_multiquery()),
        ("variable_tracking", TaskKind::variable_tracking()),
        ("common_words", TaskKind::CommonWords),
        ("frequent_words", TaskKind::FrequentWords),
    ]
}

#[test]
fn generated_samples_fit_the_budget_and_hide_their_answers() {
    for (name, kind) in all_tasks() {
        for budget in [300, 1200] {
            let sample = generate(&kind, budget, 3, 0.5, &words).unwrap();
            let size = words(&sample.context);
            assert!(size <= budget, "{name}: {size} > {budget}");
            assert!(
                size > budget * 8 / 10,
                "{name}: {size} is far below {budget}"
            );
            let question = &sample.questions[0];
            assert!(!question.answers.is_empty(), "{name}");
            assert_eq!(
                string_match(&sample.context, &question.answers),
                1.0,
                "{name}: every expected value is in the context"
            );
            assert_eq!(
                generate(&kind, budget, 3, 0.5, &words).unwrap(),
                sample,
                "{name}: reproducible"
            );
        }
        assert_ne!(
            generate(&kind, 300, 3, 0.5, &words).unwrap(),
            generate(&kind, 300, 4, 0.5, &words).unwrap(),
            "{name}: the seed matters"
        );
    }
}

#[test]
fn needle_depth_moves_the_needle() {
    let at = |depth: f64| {
        let sample = generate(&TaskKind::niah_single(), 600, 1, depth, &words).unwrap();
        let value = &sample.questions[0].answers[0];
        sample.context.find(value.as_str()).unwrap() as f64 / sample.context.len() as f64
    };
    let (start, middle, end) = (at(0.0), at(0.5), at(1.0));
    assert!(
        start < 0.1 && (0.4..0.6).contains(&middle) && end > 0.9,
        "{start} {middle} {end}"
    );
}

#[test]
fn ruler_prompts_and_answer_prefixes() {
    let sample = generate(&TaskKind::niah_single(), 200, 5, 0.5, &words).unwrap();
    assert!(sample.context.starts_with(
        "Some special magic numbers are hidden within the following text. Make sure to memorize \
         it. I will quiz you about the numbers afterwards.\n"
    ));
    let q = &sample.questions[0];
    assert!(q.answer_prefix.starts_with("The special magic number for "));
    assert!(q
        .answer_prefix
        .ends_with(" mentioned in the provided text is"));
    assert_eq!(q.answers[0].len(), 7);
    let multi = generate(&TaskKind::niah_multiquery(), 300, 5, 0.5, &words).unwrap();
    assert_eq!(multi.questions[0].answers.len(), 4);
    assert!(multi.questions[0]
        .question
        .starts_with("What are all the special magic numbers"));
}

#[test]
fn fixed_seed_snapshots() {
    for (name, kind) in all_tasks() {
        let sample = generate(&kind, 160, 11, 0.5, &words).unwrap();
        insta::assert_json_snapshot!(name, sample);
    }
}

/// A budget below a task's smallest context (its instructions, needles and answers without
/// filler) is refused naming that smallest size, instead of a longer context under a smaller
/// label.
#[test]
fn budgets_below_the_smallest_context_are_refused_naming_it() {
    use kvpress_eval::Error;
    for (name, kind) in all_tasks() {
        let error = generate(&kind, 10, 3, 0.5, &words).unwrap_err();
        let Error::ContextTooShort {
            context_length,
            minimum,
            ..
        } = error
        else {
            panic!("{name}: {error:?}");
        };
        assert_eq!(context_length, 10, "{name}");
        assert!(minimum > 10, "{name}: {minimum}");
        let smallest = generate(&kind, minimum, 3, 0.5, &words).unwrap();
        assert!(words(&smallest.context) <= minimum, "{name}");
        assert!(!smallest.questions[0].answers.is_empty(), "{name}");
    }
    let error = generate(&TaskKind::niah_single(), 0, 1, 0.5, &words).unwrap_err();
    assert!(
        matches!(&error, Error::ContextTooShort { task, .. } if task == "niah_single"),
        "{error:?}"
    );
    // Frequent words need three distinct words before they can rank three.
    let sample = generate(&TaskKind::FrequentWords, 40, 2, 0.5, &words).unwrap();
    assert_eq!(sample.questions[0].answers.len(), 3);
}
