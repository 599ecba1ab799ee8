use std::time::Instant;
fn main() {
    for (n, k) in [(1536usize, 576usize), (49152, 576)] {
        let w: Vec<f32> = (0..n * k).map(|i| (i % 97) as f32 * 0.01).collect();
        let x: Vec<f32> = (0..k).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut y = vec![0f32; n];
        let reps = 100;
        let s = Instant::now();
        for _ in 0..reps { kvpress::core::cpu::matvec_f32(&w, n, k, &x, 1, &mut y); }
        let el = s.elapsed().as_secs_f64() / reps as f64;
        println!("matvec {n}x{k}: {:.3} ms, {:.1} GB/s", el * 1e3, (n * k * 4) as f64 / el / 1e9);
    }
}
