//! Fréchet distance between Gaussian fits of features (FID), exactly as pytorch-fid defines it:
//! `FID = |mu1 - mu2|² + tr S1 + tr S2 - 2 tr sqrt(S1 S2)`, with unbiased (N-1) covariances.
//!
//! Only the trace of the matrix square root is needed, and it is computed without ever forming the
//! (generally non-symmetric) product `S1 S2`: with `A = S1^(1/2)` (symmetric eigendecomposition, negative
//! eigenvalues clamped to 0), `S1 S2` is similar to the symmetric positive semi-definite `A S2 A`, so
//! `tr sqrt(S1 S2) = Σ sqrt(max(λ_i, 0))` over the eigenvalues `λ_i` of `A S2 A`. Everything is f64.
//! Eigenvalues below the numerical noise of their matrix (`|λ| ≤ n·ε·λ_max`) are treated as exact zeros,
//! so singular and rank-deficient covariances (fewer samples than dimensions) give finite, accurate values
//! instead of the `sqrt(noise)` error a naive square root would add.

use anyhow::{ensure, Result};
use faer::{Mat, Side};
use serde::{Deserialize, Serialize};

/// Fréchet distance between `N(mu1, sigma1)` and `N(mu2, sigma2)` in `dim` dimensions; covariances are
/// row-major `dim × dim` (only their symmetric part is used).
///
/// Never NaN for valid input (finite, matching lengths, positive semi-definite covariances); a tiny negative
/// result caused by rounding is clamped to 0. Returns NaN when the input is malformed — lengths that do not
/// match `dim` or non-finite values; use [`try_frechet_distance`] to get the reason instead.
pub fn frechet_distance(mu1: &[f64], sigma1: &[f64], mu2: &[f64], sigma2: &[f64], dim: usize) -> f64 {
    try_frechet_distance(mu1, sigma1, mu2, sigma2, dim).unwrap_or(f64::NAN)
}

/// [`frechet_distance`], with an error saying what is wrong when the input is malformed.
pub fn try_frechet_distance(mu1: &[f64], sigma1: &[f64], mu2: &[f64], sigma2: &[f64], dim: usize) -> Result<f64> {
    check_gaussian("first", mu1, sigma1, dim)?;
    check_gaussian("second", mu2, sigma2, dim)?;
    if dim == 0 {
        return Ok(0.0);
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let s1 = symmetric(sigma1, dim);
    let s2 = symmetric(sigma2, dim);
    let trace = |m: &Mat<f64>| (0..dim).map(|i| m[(i, i)]).sum::<f64>();
    let fid = mean_term + trace(&s1) + trace(&s2) - 2.0 * trace_sqrt_product(&s1, &s2);
    ensure!(fid.is_finite(), "the Fréchet distance overflowed (covariance entries too large)");
    Ok(fid.max(0.0))
}

/// Checks one Gaussian's shapes and values.
fn check_gaussian(which: &str, mu: &[f64], sigma: &[f64], dim: usize) -> Result<()> {
    ensure!(mu.len() == dim, "the {which} mean has {} values, expected dim = {dim}", mu.len());
    ensure!(
        Some(sigma.len()) == dim.checked_mul(dim),
        "the {which} covariance has {} values, expected dim × dim = {dim} × {dim}",
        sigma.len()
    );
    if let Some(i) = mu.iter().position(|v| !v.is_finite()) {
        anyhow::bail!("the {which} mean is not finite at index {i} ({})", mu[i]);
    }
    if let Some(i) = sigma.iter().position(|v| !v.is_finite()) {
        anyhow::bail!("the {which} covariance is not finite at ({}, {}) ({})", i / dim, i % dim, sigma[i]);
    }
    Ok(())
}

/// The symmetric part `(S + Sᵀ) / 2` of a row-major square matrix.
fn symmetric(values: &[f64], dim: usize) -> Mat<f64> {
    Mat::from_fn(dim, dim, |i, j| 0.5 * (values[i * dim + j] + values[j * dim + i]))
}

/// Makes a computed matrix exactly symmetric (products like `A S A` are symmetric only up to rounding).
fn symmetrize(m: &mut Mat<f64>) {
    let n = m.nrows();
    for i in 0..n {
        for j in 0..i {
            let v = 0.5 * (m[(i, j)] + m[(j, i)]);
            m[(i, j)] = v;
            m[(j, i)] = v;
        }
    }
}

/// Eigenvalues at or below this are numerical noise of a symmetric matrix with these eigenvalues.
fn noise_floor(eigenvalues: &[f64]) -> f64 {
    let largest = eigenvalues.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    largest * eigenvalues.len() as f64 * f64::EPSILON
}

/// `tr sqrt(S1 S2)` for symmetric positive semi-definite `S1`, `S2`.
fn trace_sqrt_product(s1: &Mat<f64>, s2: &Mat<f64>) -> f64 {
    let n = s1.nrows();
    let (values, vectors) = symmetric_eigen(s1);
    let floor = noise_floor(&values);
    // A = U diag(sqrt λ) Uᵀ, with noise-level and negative eigenvalues set to 0.
    let roots: Vec<f64> = values.iter().map(|&v| if v > floor { v.sqrt() } else { 0.0 }).collect();
    let scaled = Mat::from_fn(n, n, |i, j| vectors[(i, j)] * roots[j]);
    let mut a = &scaled * vectors.transpose();
    symmetrize(&mut a);
    let mut m = &a * s2 * &a;
    symmetrize(&mut m);
    let values = symmetric_eigenvalues(&m);
    let floor = noise_floor(&values);
    values.iter().filter(|&&v| v > floor).map(|v| v.sqrt()).sum()
}

/// Eigenvalues and eigenvectors (columns) of a symmetric matrix: faer's solver, or the Jacobi method should
/// it ever fail to converge.
fn symmetric_eigen(m: &Mat<f64>) -> (Vec<f64>, Mat<f64>) {
    if let Ok(evd) = m.self_adjoint_eigen(Side::Lower) {
        let values: Vec<f64> = evd.S().column_vector().iter().copied().collect();
        if values.iter().all(|v| v.is_finite()) {
            return (values, evd.U().to_owned());
        }
    }
    jacobi_eigen(m)
}

/// Eigenvalues of a symmetric matrix (faer, with the Jacobi method as fallback).
fn symmetric_eigenvalues(m: &Mat<f64>) -> Vec<f64> {
    match m.self_adjoint_eigenvalues(Side::Lower) {
        Ok(values) if values.iter().all(|v| v.is_finite()) => values,
        _ => jacobi_eigen(m).0,
    }
}

/// Cyclic Jacobi eigenvalue method for a symmetric matrix: slow (O(n³) per sweep) but unconditionally
/// convergent; only used if faer's solver reports no convergence.
fn jacobi_eigen(m: &Mat<f64>) -> (Vec<f64>, Mat<f64>) {
    let n = m.nrows();
    let mut a = m.to_owned();
    let mut v = Mat::<f64>::identity(n, n);
    for _sweep in 0..100 {
        let mut off = 0.0;
        let mut total = 0.0;
        for i in 0..n {
            for j in 0..n {
                let x = a[(i, j)] * a[(i, j)];
                total += x;
                if i != j {
                    off += x;
                }
            }
        }
        if off <= total * f64::EPSILON * f64::EPSILON {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[(p, q)];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[(q, q)] - a[(p, p)]) / (2.0 * apq);
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[(k, p)], a[(k, q)]);
                    a[(k, p)] = c * akp - s * akq;
                    a[(k, q)] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[(p, k)], a[(q, k)]);
                    a[(p, k)] = c * apk - s * aqk;
                    a[(q, k)] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[(k, p)], v[(k, q)]);
                    v[(k, p)] = c * vkp - s * vkq;
                    v[(k, q)] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[(i, i)]).collect(), v)
}

/// A Gaussian fit of a set of feature vectors: mean and unbiased covariance, in f64.
///
/// Serializable so the real data's statistics can be cached on disk; check a loaded file with
/// [`GaussianStats::check`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaussianStats {
    /// Mean, `dim` values.
    pub mu: Vec<f64>,
    /// Unbiased (N-1) covariance, row-major `dim × dim`.
    pub sigma: Vec<f64>,
    /// Feature dimension.
    pub dim: usize,
    /// Number of feature vectors the fit was made from.
    pub count: usize,
}

impl GaussianStats {
    /// Fits `count` feature vectors of `dim` values each (row-major in `features`). Sums are accumulated in
    /// f64; the covariance is the unbiased one (divided by `count - 1`), as pytorch-fid's `np.cov`.
    ///
    /// Errors when `count < 2`, `dim == 0`, `features.len() != count * dim`, or a feature is not finite.
    pub fn from_features(features: &[f32], count: usize, dim: usize) -> Result<GaussianStats> {
        ensure!(count >= 2, "a covariance needs at least 2 feature vectors, got {count}");
        ensure!(dim >= 1, "the feature dimension must be at least 1");
        ensure!(
            Some(features.len()) == count.checked_mul(dim),
            "{} feature values do not make {count} vectors of {dim}",
            features.len()
        );
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            anyhow::bail!("feature {} of vector {} is not finite ({})", i % dim, i / dim, features[i]);
        }
        let mut mu = vec![0.0_f64; dim];
        for row in features.chunks_exact(dim) {
            for (m, &x) in mu.iter_mut().zip(row) {
                *m += f64::from(x);
            }
        }
        for m in &mut mu {
            *m /= count as f64;
        }
        let centered = Mat::from_fn(count, dim, |i, j| f64::from(features[i * dim + j]) - mu[j]);
        let mut cov = centered.transpose() * &centered;
        symmetrize(&mut cov);
        let scale = 1.0 / (count - 1) as f64;
        let mut sigma = Vec::with_capacity(dim * dim);
        for i in 0..dim {
            for j in 0..dim {
                sigma.push(cov[(i, j)] * scale);
            }
        }
        Ok(GaussianStats { mu, sigma, dim, count })
    }

    /// Checks that the shapes agree and every value is finite (e.g. after loading a cached file).
    pub fn check(&self) -> Result<()> {
        check_gaussian("cached", &self.mu, &self.sigma, self.dim)
    }

    /// The Fréchet distance (FID) between this fit and `other`; NaN when the two are malformed or of
    /// different dimensions (see [`try_fid`](Self::try_fid) for the reason).
    pub fn fid(&self, other: &GaussianStats) -> f64 {
        self.try_fid(other).unwrap_or(f64::NAN)
    }

    /// [`fid`](Self::fid), with an error saying what is wrong when it cannot be computed.
    pub fn try_fid(&self, other: &GaussianStats) -> Result<f64> {
        ensure!(
            self.dim == other.dim,
            "the statistics have different feature dimensions ({} and {}) — were they made by the same judge?",
            self.dim,
            other.dim
        );
        try_frechet_distance(&self.mu, &self.sigma, &other.mu, &other.sigma, self.dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n × n` covariance of `rank` pseudo-random vectors (rank-deficient when `rank < n`).
    fn low_rank(n: usize, rank: usize, seed: usize) -> Mat<f64> {
        let b = Mat::from_fn(n, rank, |i, j| (((i * 31 + j * 17 + seed * 7) % 23) as f64 - 11.0) / 7.0);
        let mut m = &b * b.transpose();
        symmetrize(&mut m);
        m
    }

    /// Square root of a PSD matrix, noise-level eigenvalues set to 0 (without that, each null direction of a
    /// rank-deficient matrix adds a `sqrt(ε)`-sized error).
    fn sqrt_psd(m: &Mat<f64>) -> Mat<f64> {
        let (values, vectors) = symmetric_eigen(m);
        let floor = noise_floor(&values);
        let n = m.nrows();
        let scaled =
            Mat::from_fn(n, n, |i, j| vectors[(i, j)] * if values[j] > floor { values[j].sqrt() } else { 0.0 });
        &scaled * vectors.transpose()
    }

    #[test]
    fn trace_sqrt_equals_the_nuclear_norm_of_the_root_product() {
        // Independent route: tr sqrt(S1 S2) = Σ singular values of S1^(1/2) S2^(1/2).
        for (n, r1, r2) in [(6, 6, 6), (8, 3, 8), (10, 4, 2), (12, 12, 5)] {
            let (s1, s2) = (low_rank(n, r1, 1), low_rank(n, r2, 2));
            let product = sqrt_psd(&s1) * sqrt_psd(&s2);
            let nuclear: f64 = product.singular_values().unwrap().iter().sum();
            let ours = trace_sqrt_product(&s1, &s2);
            assert!((ours - nuclear).abs() <= 1e-9 * nuclear.max(1.0), "n {n} ranks {r1},{r2}: {ours} vs {nuclear}");
        }
    }

    #[test]
    fn jacobi_agrees_with_faer() {
        let n = 7;
        let b = Mat::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0 + if i == j { 0.5 } else { 0.0 });
        let mut m = &b * b.transpose();
        symmetrize(&mut m);
        let (mut jacobi, vectors) = jacobi_eigen(&m);
        jacobi.sort_by(f64::total_cmp);
        let faer = m.self_adjoint_eigenvalues(Side::Lower).unwrap();
        let scale = faer.iter().fold(0.0_f64, |a, v| a.max(v.abs()));
        for (a, b) in jacobi.iter().zip(&faer) {
            assert!((a - b).abs() <= 1e-12 * scale, "{a} vs {b}");
        }
        // The vectors are orthonormal.
        let vtv = vectors.transpose() * &vectors;
        for i in 0..n {
            for j in 0..n {
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((vtv[(i, j)] - expected).abs() < 1e-12);
            }
        }
    }
}
