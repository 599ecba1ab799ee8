//! Appending to a [`CudaFlatLayer`]: one token per head by the [`append_token`] kernel, in
//! place; several (a prefill, a question) by one copy per head into its slack; the first append
//! of an empty layer sets its layout.

use candle_core::Tensor;
use kvpress_core::{Error, Result};

use super::append::append_token;
use super::cache::{exclusive_sums, CudaFlatLayer};
use super::kernels::{check_cuda, to_u32};

/// Minimum rows of slack per head when the layer is laid out again (as the CPU cache).
const MIN_SLACK_TOKENS: usize = 64;

impl CudaFlatLayer {
    /// Appends new tokens to every head: `keys`/`values` `(batch, n_kv_heads, n_new,
    /// head_dim)`, or `(batch * n_kv_heads, head_dim)` for one token per head, on the layer's
    /// device, converted to the cache's dtype. One token is written by [`append_token`], several
    /// by one copy per head; the first append of an empty layer sets its layout, exactly sized.
    pub fn append(&mut self, keys: &Tensor, values: &Tensor) -> Result<()> {
        let (b, h, n, d) = self.check_new(keys, values)?;
        if self.host_lengths.is_empty() {
            return self.first_append(keys, values, (b, h, n, d));
        }
        let heads = b * h;
        if heads == 0 || n == 0 {
            return Ok(());
        }
        let full = self
            .host_lengths
            .iter()
            .zip(&self.host_capacities)
            .any(|(&len, &cap)| len as usize + n > cap as usize);
        if full {
            self.relayout(MIN_SLACK_TOKENS.max(self.max_len() / 4).max(n))?;
        }
        let keys = keys.reshape((heads, n, d))?.to_dtype(self.dtype)?;
        let values = values.reshape((heads, n, d))?.to_dtype(self.dtype)?;
        if n > 1 {
            return self.write_rows(&keys, &values, n);
        }
        let storage = self.storage()?;
        append_token(
            &storage.kv,
            &keys.reshape((heads, d))?,
            &values.reshape((heads, d))?,
            &storage.offsets,
            &storage.lengths,
            &storage.capacities,
        )?;
        self.host_lengths.iter_mut().for_each(|l| *l += 1);
        Ok(())
    }

    /// Checks new keys and values against the layer (device, shapes, and the layout once
    /// known): their `(batch, n_kv_heads, n_new, head_dim)`.
    pub(super) fn check_new(
        &self,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<(usize, usize, usize, usize)> {
        for (tensor, what) in [(keys, "keys"), (values, "values")] {
            check_cuda(tensor, what, None)?;
            if !tensor.device().same_device(&self.device) {
                return Err(Error::InvalidArgument(format!(
                    "{what} are on a different CUDA device than the cache"
                )));
            }
        }
        if keys.dims() != values.dims() {
            return Err(Error::Shape(format!(
                "keys {:?} and values {:?} differ in shape",
                keys.dims(),
                values.dims()
            )));
        }
        let known = !self.host_lengths.is_empty();
        let dims = match *keys.dims() {
            [b, h, n, d] => (b, h, n, d),
            [heads, d] if known && heads == self.host_lengths.len() => {
                (self.batch, self.n_kv_heads, 1, d)
            }
            _ => {
                return Err(Error::Shape(format!(
                    "keys {:?} must be (batch, n_kv_heads, tokens, head_dim), or (heads, \
                     head_dim) for one token per head of a non-empty layer",
                    keys.dims()
                )))
            }
        };
        let (b, h, _, d) = dims;
        if d == 0 || (known && (b, h, d) != (self.batch, self.n_kv_heads, self.head_dim)) {
            return Err(Error::Shape(format!(
                "cannot append {:?} to a cache of batch {}, {} KV heads, head dim {} (head dim \
                 must be positive)",
                keys.dims(),
                self.batch,
                self.n_kv_heads,
                self.head_dim
            )));
        }
        Ok(dims)
    }

    /// The first append of an empty layer: sets the layout and stores the tokens exactly.
    fn first_append(
        &mut self,
        keys: &Tensor,
        values: &Tensor,
        (b, h, n, d): (usize, usize, usize, usize),
    ) -> Result<()> {
        let lengths = vec![to_u32(n, "tokens")?; b * h];
        let offsets = exclusive_sums(&lengths)?;
        let kv = match b * h * n {
            0 => None,
            rows => {
                let keys = keys.to_dtype(self.dtype)?.reshape((rows, d))?;
                let values = values.to_dtype(self.dtype)?.reshape((rows, d))?;
                Some(Tensor::stack(&[keys, values], 0)?)
            }
        };
        (self.batch, self.n_kv_heads, self.head_dim) = (b, h, d);
        self.install(kv, offsets, lengths.clone(), lengths)
    }

    /// Copies `n` new rows of every head (`keys`/`values` `(heads, n, head_dim)` of the cache's
    /// dtype) after its stored rows, in place; every head must have room for them.
    fn write_rows(&mut self, keys: &Tensor, values: &Tensor, n: usize) -> Result<()> {
        let storage = self.storage()?;
        // (heads, 2, n, d): each head's keys and values, one contiguous (2, n, d) block.
        let rows = Tensor::stack(&[keys, values], 1)?;
        for (head, (&offset, &len)) in self.host_offsets.iter().zip(&self.host_lengths).enumerate()
        {
            storage
                .kv
                .slice_set(&rows.get(head)?, 1, offset as usize + len as usize)?;
        }
        let lengths = self
            .host_lengths
            .iter()
            .map(|&l| to_u32(l as usize + n, "head length"))
            .collect::<Result<Vec<_>>>()?;
        self.set_lengths(lengths)
    }
}
