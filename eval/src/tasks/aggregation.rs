//! Aggregation tasks: name the most common words of a list (common words) or the most frequent
//! coded words of a text (frequent words).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{Question, Sample};
use crate::words::COMMON_WORDS;

pub(super) fn common_words(rng: &mut StdRng) -> Box<dyn Fn(usize) -> Sample> {
    let mut words: Vec<&str> = COMMON_WORDS.to_vec();
    words.shuffle(rng);
    let common: Vec<String> = words[..10].iter().map(|w| w.to_string()).collect();
    let uncommon: Vec<String> = words[10..].iter().map(|w| w.to_string()).collect();
    let seed = rng.random::<u64>();
    Box::new(move |n: usize| {
        // Uncommon words 3 times each, common ones more often: 30 times (RULER's frequency) in
        // long lists, fewer in short ones so that short contexts still fit.
        let common_count = (4 + n / 20).min(30);
        let mut list: Vec<String> = common
            .iter()
            .flat_map(|w| vec![w.clone(); common_count])
            .collect();
        let mut local = StdRng::seed_from_u64(seed);
        for i in 0..n {
            let word = format!("{}{}", uncommon[i % uncommon.len()], i / uncommon.len());
            list.extend(vec![word; 3]);
        }
        list.shuffle(&mut local);
        let numbered: Vec<String> = list
            .iter()
            .enumerate()
            .map(|(i, w)| format!("{}. {w}", i + 1))
            .collect();
        Sample {
            context: format!(
                "Below is a numbered list of words. In these words, some appear more often than \
                 others. Memorize the ones that appear most often.\n{}",
                numbered.join(" ")
            ),
            questions: vec![Question {
                question: "Question: What are the 10 most common words in the above list?"
                    .to_string(),
                answer_prefix: "Answer: The top 10 words that appear most often in the list are:"
                    .to_string(),
                answers: common.clone(),
            }],
        }
    })
}

pub(super) fn frequent_words(rng: &mut StdRng) -> Box<dyn Fn(usize) -> Sample> {
    let vocabulary: Vec<String> = (0..200)
        .map(|_| {
            (0..5)
                .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
                .collect()
        })
        .collect();
    let seed = rng.random::<u64>();
    Box::new(move |n: usize| {
        // Zipf(2) draws over the vocabulary: the first words are by far the most frequent.
        let weights: Vec<f64> = (1..=vocabulary.len())
            .map(|r| 1.0 / (r * r) as f64)
            .collect();
        let total: f64 = weights.iter().sum();
        let mut local = StdRng::seed_from_u64(seed);
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        let mut words = Vec::with_capacity(n);
        for _ in 0..n {
            let mut x = local.random::<f64>() * total;
            let mut index = 0;
            while index + 1 < weights.len() && x >= weights[index] {
                x -= weights[index];
                index += 1;
            }
            *counts.entry(index).or_default() += 1;
            words.push(vocabulary[index].clone());
        }
        let mut ranked: Vec<(usize, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Sample {
            context: format!(
                "Read the following coded text and track the frequency of each coded word. Find \
                 the three most frequently appeared coded words. {} ....",
                words.join(" ")
            ),
            questions: vec![Question {
                question: "Question: Do not provide any explanation. Please ignore the dots \
                           '....'. What are the three most frequently appeared words in the \
                           above coded text?"
                    .to_string(),
                answer_prefix: "Answer: According to the coded text above, the three most \
                                frequently appeared words are:"
                    .to_string(),
                answers: ranked
                    .iter()
                    .take(3)
                    .map(|(i, _)| vocabulary[*i].clone())
                    .collect(),
            }],
        }
    })
}
