//! Decode attention over one step of the default model's cache shape (30 layers x 3 KV heads,
//! 3 query rows per KV head, head dim 64) for each storage type, side by side: the kernels alone,
//! without the model. `cargo run --release -p kvpress-kernels --example decode_storage_timing
//! [TOKENS [REPEATS [STORAGE...]]]` (default 8000 tokens, 50 repeats, every storage: f32 f16
//! bf16 q8 q4); prints the fastest and the median ms per decode step (on a shared machine the
//! fastest is the steadier figure).

use half::{bf16, f16};
use kvpress_kernels::kv_quant::{QuantBits, QuantizedRows};
use kvpress_kernels::{decode_attention, CacheData, HeadProblem, HeadRows};

const HEADS: usize = 30 * 3;
const GROUP: usize = 3;
const HEAD_DIM: usize = 64;

/// The stored rows of every head in one storage type.
enum Stored {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Quantized(QuantizedRows),
}

impl Stored {
    fn data(&self) -> CacheData<'_> {
        match self {
            Stored::F32(v) => CacheData::F32(v),
            Stored::F16(v) => CacheData::F16(v),
            Stored::BF16(v) => CacheData::BF16(v),
            Stored::Quantized(rows) => CacheData::Quantized(rows.view()),
        }
    }
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn store(name: &str, rows: &[f32]) -> Stored {
    match name {
        "f32" => Stored::F32(rows.to_vec()),
        "f16" => Stored::F16(rows.iter().map(|&x| f16::from_f32(x)).collect()),
        "bf16" => Stored::BF16(rows.iter().map(|&x| bf16::from_f32(x)).collect()),
        _ => {
            let bits = if name == "q8" {
                QuantBits::Eight
            } else {
                QuantBits::Four
            };
            let mut quantized = QuantizedRows::new(bits, HEAD_DIM).expect("64 channels");
            quantized.push_rows(rows).expect("finite values");
            Stored::Quantized(quantized)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i).map_or(default, |a| {
            a.parse().expect("TOKENS and REPEATS are whole numbers")
        })
    };
    let (tokens, repeats) = (number(0, 8000), number(1, 50).max(1));
    let all = ["f32", "f16", "bf16", "q8", "q4"];
    let storages: Vec<&str> = match args.get(2..) {
        Some(names) if !names.is_empty() => names.iter().map(String::as_str).collect(),
        _ => all.to_vec(),
    };
    if let Some(bad) = storages.iter().find(|s| !all.contains(s)) {
        eprintln!("unknown storage {bad}: valid are {}", all.join(", "));
        std::process::exit(2);
    }
    let rows = HEADS * tokens * HEAD_DIM;
    let (keys, vals) = (values(rows, 1), values(rows, 2));
    let queries = values(HEADS * GROUP * HEAD_DIM, 3);
    println!("decode attention, {HEADS} KV heads x {tokens} tokens, {GROUP} query rows each");
    println!("| storage | fastest ms per step | median of {repeats} |");
    println!("|---|---:|---:|");
    for name in storages {
        // Leaked: the example runs once and exits.
        let k: &'static Stored = Box::leak(Box::new(store(name, &keys)));
        let v: &'static Stored = Box::leak(Box::new(store(name, &vals)));
        let head = |data: CacheData<'static>, h: usize| HeadRows {
            data,
            start: h * tokens * HEAD_DIM,
            row_stride: HEAD_DIM,
        };
        let problems: Vec<HeadProblem<'_>> = (0..HEADS)
            .map(|h| HeadProblem {
                queries: queries[h * GROUP * HEAD_DIM..(h + 1) * GROUP * HEAD_DIM].to_vec(),
                positions: vec![tokens - 1; GROUP],
                keys: head(k.data(), h),
                values: head(v.data(), h),
                n_keys: tokens,
            })
            .collect();
        let mut times: Vec<f64> = (0..repeats)
            .map(|_| {
                let start = std::time::Instant::now();
                let out = decode_attention(&problems, HEAD_DIM, 0.125).expect("valid problems");
                std::hint::black_box(out);
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.2} | {:.2} |",
            times[0],
            times[times.len() / 2]
        );
    }
}
