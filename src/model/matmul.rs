//! Matrix products of the fused CPU ops, through the gemm crate directly (the kernels candle's matmul uses):
//! the output is written once (no zero fill first), a bias can be the product's starting value, and the
//! product runs on the threads the caller is allowed ([`super::cpu::Pool::threads_for_caller`]: one inside
//! a loss shard). Results do not depend on the thread count: gemm splits the output, never the sum.

use candle_core::{bail, Result};
use gemm::Parallelism;

use super::cpu::Pool;

/// A read-only matrix view: element `(i, j)` is `data[i · row_stride + j · col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose (a view: nothing is copied).
    pub(crate) fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Errors unless every element the view names lies inside its data.
    fn check(&self, what: &str) -> Result<()> {
        if self.rows == 0 || self.cols == 0 {
            return Ok(());
        }
        let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        if last >= self.data.len() {
            bail!(
                "matmul {what}: a {}×{} view needs {} values, has {}",
                self.rows,
                self.cols,
                last + 1,
                self.data.len()
            )
        }
        Ok(())
    }
}

/// `lhs · rhs` as a new row-major matrix, each row starting from `bias` when given (`bias + lhs · rhs`).
pub(crate) fn matmul(lhs: Mat<'_>, rhs: Mat<'_>, bias: Option<&[f32]>) -> Result<Vec<f32>> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k {
        bail!("matmul: {}×{} times {}×{}", lhs.rows, lhs.cols, rhs.rows, rhs.cols)
    }
    lhs.check("lhs")?;
    rhs.check("rhs")?;
    let mut dst: Vec<f32> = match bias {
        Some(bias) if bias.len() != n => bail!("matmul: bias of {} for {n} columns", bias.len()),
        Some(bias) => {
            // One row, then doubling copies of what is there: few, large copies.
            let mut rows = Vec::with_capacity(m * n);
            rows.extend_from_slice(bias);
            while rows.len() < m * n {
                rows.extend_from_within(..rows.len().min(m * n - rows.len()));
            }
            rows
        }
        None => Vec::with_capacity(m * n),
    };
    if m == 0 || n == 0 {
        return Ok(dst);
    }
    let read_dst = bias.is_some();
    let threads = Pool::global().threads_for_caller();
    let parallelism = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    // SAFETY: both views were checked to lie inside their slices (strides are unsigned, so every offset the
    // kernel forms is at most the checked last one); dst has room for m·n values in row-major order
    // (row stride n, column stride 1). With read_dst = false gemm writes every one of the m·n values
    // without reading them (k = 0 included: it then writes zeros), so the length set below covers only
    // initialised values; with read_dst = true all m·n were initialised above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            if read_dst { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        dst.set_len(m * n);
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn products_match_a_plain_loop_with_and_without_transposes_and_bias() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        let expected = naive(&a, &b, m, k, n);
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-5);
        assert!(close(&matmul(Mat::rows(&a, m, k), Mat::rows(&b, k, n), None).unwrap(), &expected));
        // bᵀ stored row-major as [n, k], used through its transpose view.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        assert!(close(&matmul(Mat::rows(&a, m, k), Mat::rows(&bt, n, k).t(), None).unwrap(), &expected));
        let bias = [1.0, -2.0, 0.5];
        let with_bias = matmul(Mat::rows(&a, m, k), Mat::rows(&b, k, n), Some(&bias)).unwrap();
        let shifted: Vec<f32> = expected.iter().enumerate().map(|(i, v)| v + bias[i % n]).collect();
        assert!(close(&with_bias, &shifted));
        assert_eq!(matmul(Mat::rows(&a, m, 0), Mat::rows(&[], 0, n), None).unwrap(), vec![0.0; m * n]);
    }

    #[test]
    fn views_outside_their_data_and_mismatched_shapes_are_refused() {
        let a = [0f32; 6];
        assert!(matmul(Mat::rows(&a, 3, 3), Mat::rows(&a, 3, 2), None).is_err());
        assert!(matmul(Mat::rows(&a, 2, 3), Mat::rows(&a, 2, 3), None).is_err());
        assert!(matmul(Mat::rows(&a, 2, 3), Mat::rows(&a, 3, 2), Some(&[1.0])).is_err());
    }
}
