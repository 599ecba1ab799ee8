//! Fitting the surrogates as kvpress's `kvzap/train.py` does: a ridge regression per layer
//! (scikit-learn's `Ridge()`: `alpha` 1, intercept fitted on centred data) and one MLP per layer
//! trained all at once (mean squared error over every layer and head, AdamW, a cosine learning
//! rate over the epochs, gradients clipped to norm 1, shuffled mini-batches).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use kvpress_core::{Error, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// How the MLPs are trained (kvpress's defaults).
#[derive(Debug, Clone, Copy)]
pub struct MlpTraining {
    /// Width of the hidden layer.
    pub hidden_dim: usize,
    /// Passes over the training rows.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Rows per step.
    pub batch_size: usize,
    /// Seed of the initial weights' and the batches' order.
    pub seed: u64,
}

impl Default for MlpTraining {
    fn default() -> Self {
        Self {
            hidden_dim: 512,
            epochs: 15,
            lr: 5e-3,
            batch_size: 512,
            seed: 0,
        }
    }
}

/// Ridge regression of each layer: for `x` `(rows, L, D)` and `y` `(rows, L, K)`, the weights
/// `(L, K, D)` and biases `(L, K)` minimising `|y - x W - b|² + alpha |W|²`.
pub fn ridge(x: &Tensor, y: &Tensor, alpha: f64) -> Result<(Tensor, Tensor)> {
    let (rows, n_layers, d) = x.dims3()?;
    let (y_rows, y_layers, _) = y.dims3()?;
    if (y_rows, y_layers) != (rows, n_layers) {
        return Err(Error::Shape(format!(
            "kvzap: {rows} rows of {n_layers} layers of inputs, {y_rows} of {y_layers} of targets"
        )));
    }
    if rows == 0 {
        return Err(Error::InvalidArgument(
            "kvzap: no training rows".to_string(),
        ));
    }
    let mut weights = Vec::with_capacity(n_layers);
    let mut biases = Vec::with_capacity(n_layers);
    for layer in 0..n_layers {
        let xl = x.narrow(1, layer, 1)?.squeeze(1)?.to_dtype(DType::F64)?;
        let yl = y.narrow(1, layer, 1)?.squeeze(1)?.to_dtype(DType::F64)?;
        let x_mean = xl.mean_keepdim(0)?;
        let y_mean = yl.mean_keepdim(0)?;
        let xc = xl.broadcast_sub(&x_mean)?;
        let yc = yl.broadcast_sub(&y_mean)?;
        let gram = xc.t()?.matmul(&xc)?;
        let gram = (gram + (Tensor::eye(d, DType::F64, &Device::Cpu)? * alpha)?)?;
        let rhs = xc.t()?.matmul(&yc)?;
        let w = cholesky_solve(&gram.to_vec2::<f64>()?, &rhs.to_vec2::<f64>()?)?; // (D, K)
        let w = Tensor::new(w, &Device::Cpu)?; // (D, K)
        let b = (y_mean - x_mean.matmul(&w)?)?.squeeze(0)?; // (K)
        weights.push(w.t()?.to_dtype(DType::F32)?);
        biases.push(b.to_dtype(DType::F32)?);
    }
    Ok((Tensor::stack(&weights, 0)?, Tensor::stack(&biases, 0)?))
}

/// Solves `a x = b` for a symmetric positive definite `a` `(n, n)` and `b` `(n, k)`.
fn cholesky_solve(a: &[Vec<f64>], b: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
    let n = a.len();
    let mut l = vec![vec![0f64; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|p| l[i][p] * l[j][p]).sum();
            if i == j {
                let diagonal = a[i][i] - sum;
                if diagonal <= 0.0 {
                    return Err(Error::InvalidArgument(
                        "kvzap: the ridge system is not positive definite".to_string(),
                    ));
                }
                l[i][i] = diagonal.sqrt();
            } else {
                l[i][j] = (a[i][j] - sum) / l[j][j];
            }
        }
    }
    let k = b.first().map_or(0, Vec::len);
    let mut x = vec![vec![0f64; k]; n];
    for c in 0..k {
        // L z = b, then Lᵀ x = z.
        let mut z = vec![0f64; n];
        for i in 0..n {
            let sum: f64 = (0..i).map(|p| l[i][p] * z[p]).sum();
            z[i] = (b[i][c] - sum) / l[i][i];
        }
        for i in (0..n).rev() {
            let sum: f64 = (i + 1..n).map(|p| l[p][i] * x[p][c]).sum();
            x[i][c] = (z[i] - sum) / l[i][i];
        }
    }
    Ok(x)
}

/// The trained MLPs: `(weight1 (L, H, D), bias1 (L, H), weight2 (L, K, H), bias2 (L, K))`, and
/// the mean squared error of the last epoch.
pub struct TrainedMlp {
    /// First layer's weights `(L, H, D)`.
    pub weight1: Tensor,
    /// First layer's biases `(L, H)`.
    pub bias1: Tensor,
    /// Second layer's weights `(L, K, H)`.
    pub weight2: Tensor,
    /// Second layer's biases `(L, K)`.
    pub bias2: Tensor,
    /// Mean squared error over the training rows in the last epoch.
    pub final_loss: f64,
}

/// Trains one MLP per layer on `x` `(rows, L, D)` → `y` `(rows, L, K)`, all layers at once.
pub fn mlp(x: &Tensor, y: &Tensor, training: MlpTraining) -> Result<TrainedMlp> {
    let (rows, n_layers, d) = x.dims3()?;
    let k = y.dim(2)?;
    let h = training.hidden_dim;
    if rows == 0 || training.epochs == 0 || training.batch_size == 0 || h == 0 {
        return Err(Error::InvalidArgument(
            "kvzap: training needs rows, and epochs, batch size and hidden width of at least 1"
                .to_string(),
        ));
    }
    let device = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(training.seed);
    // torch's nn.Linear initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from the seed.
    let mut uniform = |shape: &[usize], fan_in: usize| -> Result<Var> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
        Ok(Var::from_tensor(&Tensor::from_vec(
            values, shape, &device,
        )?)?)
    };
    let w1 = uniform(&[n_layers, h, d], d)?;
    let b1 = uniform(&[n_layers, h], d)?;
    let w2 = uniform(&[n_layers, k, h], h)?;
    let b2 = uniform(&[n_layers, k], h)?;
    let vars = vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()];
    let params = ParamsAdamW {
        lr: training.lr,
        ..ParamsAdamW::default()
    };
    let mut optimizer = AdamW::new(vars.clone(), params)?;
    let forward = |xb: &Tensor| -> Result<Tensor> {
        // (B, L, D) -> (L, B, D) -> (L, B, H) -> (L, B, K) -> (B, L, K)
        let xl = xb.transpose(0, 1)?.contiguous()?;
        let hidden = xl
            .matmul(&w1.transpose(1, 2)?)?
            .broadcast_add(&b1.unsqueeze(1)?)?
            .gelu_erf()?;
        let out = hidden
            .matmul(&w2.transpose(1, 2)?)?
            .broadcast_add(&b2.unsqueeze(1)?)?;
        Ok(out.transpose(0, 1)?)
    };
    let mut order: Vec<u32> = (0..rows as u32).collect();
    let mut final_loss = 0.0;
    for epoch in 0..training.epochs {
        // CosineAnnealingLR with T_max = epochs, stepped once per epoch.
        let lr = training.lr
            * (1.0 + (std::f64::consts::PI * epoch as f64 / training.epochs as f64).cos())
            / 2.0;
        optimizer.set_learning_rate(lr);
        order.shuffle(&mut rng);
        let (mut total, mut seen) = (0.0, 0usize);
        for batch in order.chunks(training.batch_size) {
            let index = Tensor::new(batch, &device)?;
            let xb = x.index_select(&index, 0)?;
            let yb = y.index_select(&index, 0)?;
            let loss = (forward(&xb)? - yb)?.sqr()?.mean_all()?;
            let mut grads = loss.backward()?;
            clip_gradients(&vars, &mut grads, 1.0)?;
            optimizer.step(&grads)?;
            total += loss.to_scalar::<f32>()? as f64 * batch.len() as f64;
            seen += batch.len();
        }
        final_loss = total / seen as f64;
    }
    Ok(TrainedMlp {
        weight1: w1.as_tensor().detach(),
        bias1: b1.as_tensor().detach(),
        weight2: w2.as_tensor().detach(),
        bias2: b2.as_tensor().detach(),
        final_loss,
    })
}

/// Scales every gradient so that their joint norm is at most `max_norm` (torch's
/// `clip_grad_norm_`).
fn clip_gradients(
    vars: &[Var],
    grads: &mut candle_core::backprop::GradStore,
    max_norm: f64,
) -> Result<()> {
    let mut squares = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var) {
            squares += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = squares.sqrt();
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        for var in vars {
            if let Some(g) = grads.remove(var) {
                grads.insert(var, (g * scale)?);
            }
        }
    }
    Ok(())
}
