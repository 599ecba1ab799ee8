//! Variable tracking: chains of variable assignments in noise; find every variable holding a
//! value.

use rand::rngs::StdRng;
use rand::Rng;

use super::haystack::{insert_needles, NOISE};
use super::{Question, Sample};

fn variable_name(rng: &mut StdRng) -> String {
    (0..5)
        .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
        .collect()
}

pub(super) fn variable_tracking(
    n_chains: usize,
    n_hops: usize,
    depth: f64,
    rng: &mut StdRng,
) -> Box<dyn Fn(usize) -> Sample> {
    let mut statements = Vec::new();
    let mut queried_names = Vec::new();
    let mut queried_value = String::new();
    for chain in 0..n_chains.max(1) {
        let value = rng.random_range(10_000..100_000u32).to_string();
        let names: Vec<String> = (0..=n_hops).map(|_| variable_name(rng)).collect();
        statements.push(format!("VAR {} = {value}.", names[0]));
        for hop in 1..names.len() {
            statements.push(format!("VAR {} = VAR {}.", names[hop], names[hop - 1]));
        }
        if chain == 0 {
            queried_names = names;
            queried_value = value;
        }
    }
    let question = format!(
        "Question: Find all variables that are assigned the value {queried_value} in the text \
         above."
    );
    let prefix = format!(
        "Answer: According to the chain(s) of variable assignment in the text above, {} \
         variables are assigned the value {queried_value}, they are:",
        queried_names.len()
    );
    Box::new(move |n: usize| {
        // Statements keep their order (a chain must be read forward), spread through the noise.
        let units = insert_needles(vec![NOISE.to_string(); n], &statements, depth * 0.5);
        Sample {
            context: format!(
                "Memorize and track the chain(s) of variable assignment hidden in the following \
                 text.\n\n{}",
                units.join(" ")
            ),
            questions: vec![Question {
                question: question.clone(),
                answer_prefix: prefix.clone(),
                answers: queried_names.clone(),
            }],
        }
    })
}
