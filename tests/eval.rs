//! Integration tests of the evaluation maths and decision rules through the public API: FID against values
//! derived by hand, top-k and IoU on hand-made inputs, early stopping on scripted metric sequences, the best
//! tracker, the Pareto front, the recommendation, and gate alerts on scripted gate sequences.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick::config::{EarlyStoppingConfig, MetricMode};
use wick::eval::{
    box_iou, fmt_value, frechet_distance, mean_iou, ordinal, pareto_front, recommend, top_k_all, top_k_hits,
    try_frechet_distance, BestTracker, CheckpointRow, EarlyStopDecision, EarlyStopping, GateAlertConfig, GateAlertKind,
    GateMonitor, GaussianStats,
};

// ── helpers ─────────────────────────────────────────────────────────────────────────────────────────────

#[track_caller]
fn assert_close(actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "expected {expected}, got {actual} (difference {:e} > {tolerance:e})",
        (actual - expected).abs()
    );
}

/// `count × dim` features, each uniform in [-1, 1) plus a per-dimension offset, correlated through a shared
/// component so the covariance is not diagonal.
fn features(seed: u64, count: usize, dim: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(count * dim);
    for _ in 0..count {
        let shared: f32 = rng.random_range(-1.0..1.0);
        for j in 0..dim {
            let own: f32 = rng.random_range(-1.0..1.0);
            out.push(own + shared * (j % 3) as f32 + j as f32 * 0.1);
        }
    }
    out
}

/// A random symmetric positive definite `dim × dim` matrix, row-major: `B Bᵀ + 0.1 I`.
fn spd(seed: u64, dim: usize) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let b: Vec<f64> = (0..dim * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut m = vec![0.0; dim * dim];
    for i in 0..dim {
        for j in 0..dim {
            m[i * dim + j] = (0..dim).map(|k| b[i * dim + k] * b[j * dim + k]).sum::<f64>();
        }
        m[i * dim + i] += 0.1;
    }
    m
}

fn diag(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    let mut m = vec![0.0; n * n];
    for (i, v) in values.iter().enumerate() {
        m[i * n + i] = *v;
    }
    m
}

fn outer(u: &[f64]) -> Vec<f64> {
    u.iter().flat_map(|a| u.iter().map(move |b| a * b)).collect()
}

// ── FID ─────────────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn fid_of_identical_distributions_is_zero() {
    let mu = [1.0, 2.0, 3.0];
    let sigma = [2.0, 0.5, 0.0, 0.5, 1.0, 0.2, 0.0, 0.2, 3.0];
    assert_close(frechet_distance(&mu, &sigma, &mu, &sigma, 3), 0.0, 1e-12);
    let big = spd(7, 32);
    let mu = vec![0.5; 32];
    assert_close(frechet_distance(&mu, &big, &mu, &big, 32), 0.0, 1e-9);
}

#[test]
fn fid_of_diagonal_covariances_has_the_closed_form() {
    // mu1 = 0, mu2 = (1, 2, 0): |mu1 - mu2|² = 1 + 4 = 5.
    // S1 = diag(1, 4, 9), S2 = diag(4, 1, 9): Σ s1 + s2 - 2 sqrt(s1 s2) = (5 - 4) + (5 - 4) + (18 - 18) = 2.
    // FID = 7.
    let fid = frechet_distance(&[0.0; 3], &diag(&[1.0, 4.0, 9.0]), &[1.0, 2.0, 0.0], &diag(&[4.0, 1.0, 9.0]), 3);
    assert_close(fid, 7.0, 1e-12);
}

#[test]
fn fid_of_non_commuting_covariances_matches_the_2x2_formula() {
    // For 2×2 M with non-negative eigenvalues λ1, λ2: tr sqrt(M) = √λ1 + √λ2 = sqrt(tr M + 2 sqrt(det M)).
    // S1 = [[2, 1], [1, 2]], S2 = diag(1, 3): S1 S2 = [[2, 3], [1, 6]], tr 8, det 9 → tr sqrt = √14.
    // FID = tr S1 + tr S2 - 2√14 = 8 - 2√14 ≈ 0.516685.
    let fid = frechet_distance(&[0.0, 0.0], &[2.0, 1.0, 1.0, 2.0], &[0.0, 0.0], &diag(&[1.0, 3.0]), 2);
    assert_close(fid, 8.0 - 2.0 * 14f64.sqrt(), 1e-12);
}

#[test]
fn fid_is_symmetric() {
    for (seed, dim) in [(1, 2), (2, 5), (3, 16), (4, 64)] {
        let (s1, s2) = (spd(seed, dim), spd(seed + 100, dim));
        let mu1: Vec<f64> = (0..dim).map(|i| i as f64 * 0.1).collect();
        let mu2: Vec<f64> = (0..dim).map(|i| 1.0 - i as f64 * 0.05).collect();
        let ab = frechet_distance(&mu1, &s1, &mu2, &s2, dim);
        let ba = frechet_distance(&mu2, &s2, &mu1, &s1, dim);
        assert!(ab.is_finite() && ab > 0.0);
        assert_close(ab, ba, 1e-9 * ab);
    }
}

#[test]
fn fid_with_singular_covariances_is_finite_and_exact() {
    // S1 = u uᵀ with u = (1, 2, 2) (rank 1, |u|² = 9), S2 = I: sqrt(S1) = u uᵀ / |u|, so
    // tr sqrt(S1 S2) = tr(u uᵀ)/|u| = |u| = 3 and FID = 9 + 3 - 2·3 = 6.
    let u = [1.0, 2.0, 2.0];
    let identity = diag(&[1.0, 1.0, 1.0]);
    assert_close(frechet_distance(&[0.0; 3], &outer(&u), &[0.0; 3], &identity, 3), 6.0, 1e-12);
    assert_close(frechet_distance(&[0.0; 3], &identity, &[0.0; 3], &outer(&u), 3), 6.0, 1e-12);
    // Both rank 1: S1 = u uᵀ, S2 = v vᵀ with v = (0, 3, 4): S1 S2 = (u·v) u vᵀ has the single non-zero
    // eigenvalue (u·v)², so tr sqrt = |u·v| = 14 and FID = |u|² + |v|² - 28 = 9 + 25 - 28 = 6.
    let v = [0.0, 3.0, 4.0];
    assert_close(frechet_distance(&[0.0; 3], &outer(&u), &[0.0; 3], &outer(&v), 3), 6.0, 1e-12);
    // Orthogonal rank-1 covariances share nothing: FID = |u|² + |w|² = 9 + 9.
    let w = [2.0, 1.0, -2.0];
    assert_close(frechet_distance(&[0.0; 3], &outer(&u), &[0.0; 3], &outer(&w), 3), 18.0, 1e-12);
    // All-zero covariances: only the means count.
    assert_close(frechet_distance(&[0.0; 3], &[0.0; 9], &[1.0, 1.0, 1.0], &[0.0; 9], 3), 3.0, 0.0);
}

#[test]
fn fid_of_one_dimension_is_the_squared_difference_of_standard_deviations() {
    // N(0, a) vs N(0, b): a + b - 2 sqrt(ab) = (√a - √b)². a = 2, b = 8: (√2 - 2√2)² = 2.
    assert_close(frechet_distance(&[0.0], &[2.0], &[0.0], &[8.0], 1), 2.0, 1e-12);
    for (a, b) in [(1.0, 4.0), (0.3, 0.7), (5.0, 0.0), (1e-6, 1e6)] {
        let expected = (f64::sqrt(a) - f64::sqrt(b)).powi(2);
        assert_close(frechet_distance(&[0.0], &[a], &[0.0], &[b], 1), expected, 1e-9 * expected.max(1.0));
    }
}

#[test]
fn stats_from_features_match_a_hand_computed_fit() {
    // Corners of a 2×2 square: mean (1, 1); unbiased variance Σ(x - 1)² / 3 = 4/3 per axis; covariance
    // Σ(x - 1)(y - 1) / 3 = (1 - 1 - 1 + 1) / 3 = 0.
    let stats = GaussianStats::from_features(&[0.0, 0.0, 2.0, 0.0, 0.0, 2.0, 2.0, 2.0], 4, 2).unwrap();
    assert_eq!((stats.dim, stats.count), (2, 4));
    assert_eq!(stats.mu, vec![1.0, 1.0]);
    for (got, want) in stats.sigma.iter().zip([4.0 / 3.0, 0.0, 0.0, 4.0 / 3.0]) {
        assert_close(*got, want, 1e-15);
    }
    // Against the Gaussian N((1, 1), I) the FID is Σ (4/3 + 1 - 2 sqrt(4/3)).
    let unit = GaussianStats { mu: vec![1.0, 1.0], sigma: diag(&[1.0, 1.0]), dim: 2, count: 0 };
    let expected = 2.0 * (4.0 / 3.0 + 1.0 - 2.0 * f64::sqrt(4.0 / 3.0));
    assert_close(stats.fid(&unit), expected, 1e-12);
}

#[test]
fn features_against_themselves_give_zero() {
    // More samples than dimensions (full-rank covariance) and fewer (rank-deficient: 6 samples in 16 dims).
    for (count, dim) in [(200, 8), (60, 32), (6, 16), (3, 64)] {
        let stats = GaussianStats::from_features(&features(count as u64, count, dim), count, dim).unwrap();
        let fid = stats.fid(&stats);
        assert!((0.0..=1e-9).contains(&fid), "count {count}, dim {dim}: self-FID {fid:e}");
    }
}

#[test]
fn shifting_features_by_a_constant_adds_its_squared_norm() {
    // Features and shift are multiples of 1/8 so x + v is exact in f32 and only v changes.
    let (count, dim) = (40, 6);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f32> = (0..count * dim).map(|_| rng.random_range(-16i32..16) as f32 / 8.0).collect();
    let v = [0.5f32, -1.0, 0.0, 2.0, 0.125, -0.25];
    let shifted: Vec<f32> = x.iter().enumerate().map(|(i, a)| a + v[i % dim]).collect();
    let norm2: f64 = v.iter().map(|&a| f64::from(a) * f64::from(a)).sum(); // 0.25 + 1 + 4 + 1/64 + 1/16
    let a = GaussianStats::from_features(&x, count, dim).unwrap();
    let b = GaussianStats::from_features(&shifted, count, dim).unwrap();
    assert_close(a.fid(&b), norm2, 1e-9 * norm2);
    assert_close(b.fid(&a), norm2, 1e-9 * norm2);
    // Shifting both sets by the same vector changes nothing.
    let y: Vec<f32> = (0..count * dim).map(|_| rng.random_range(-16i32..16) as f32 / 8.0).collect();
    let y_shifted: Vec<f32> = y.iter().enumerate().map(|(i, a)| a + v[i % dim]).collect();
    let c = GaussianStats::from_features(&y, count, dim).unwrap();
    let d = GaussianStats::from_features(&y_shifted, count, dim).unwrap();
    assert_close(b.fid(&d), a.fid(&c), 1e-9 * a.fid(&c));
}

#[test]
fn malformed_input_is_an_error_or_nan() {
    assert!(GaussianStats::from_features(&[1.0, 2.0], 1, 2).is_err(), "one sample has no covariance");
    assert!(GaussianStats::from_features(&[1.0, 2.0, 3.0], 2, 2).is_err(), "length mismatch");
    assert!(GaussianStats::from_features(&[1.0, f32::NAN, 3.0, 4.0], 2, 2).is_err(), "NaN feature");
    assert!(GaussianStats::from_features(&[], 2, 0).is_err(), "zero dimension");
    assert!(frechet_distance(&[0.0], &[1.0, 0.0], &[0.0], &[1.0], 1).is_nan());
    assert!(frechet_distance(&[f64::NAN], &[1.0], &[0.0], &[1.0], 1).is_nan());
    let message = try_frechet_distance(&[0.0, 0.0], &[1.0], &[0.0, 0.0], &[1.0; 4], 2).unwrap_err().to_string();
    assert!(message.contains("first covariance has 1 values"), "{message}");
    let a = GaussianStats::from_features(&features(1, 10, 3), 10, 3).unwrap();
    let b = GaussianStats::from_features(&features(1, 10, 4), 10, 4).unwrap();
    assert!(a.fid(&b).is_nan());
    assert!(a.try_fid(&b).unwrap_err().to_string().contains("different feature dimensions"));
    assert_eq!(frechet_distance(&[], &[], &[], &[], 0), 0.0);
}

#[test]
fn stats_survive_a_json_round_trip() {
    let stats = GaussianStats::from_features(&features(9, 30, 5), 30, 5).unwrap();
    let text = serde_json::to_string(&stats).unwrap();
    let back: GaussianStats = serde_json::from_str(&text).unwrap();
    // serde_json without its `float_roundtrip` feature may parse a 17-digit float 1 ulp off.
    assert_eq!((back.dim, back.count), (stats.dim, stats.count));
    for (a, b) in back.mu.iter().chain(&back.sigma).zip(stats.mu.iter().chain(&stats.sigma)) {
        assert_close(*a, *b, 4.0 * f64::EPSILON * b.abs());
    }
    back.check().unwrap();
    let broken = GaussianStats { sigma: vec![0.0; 3], ..stats };
    assert!(broken.check().is_err());
}

#[test]
fn fid_at_the_judges_dimension_is_finite_and_deterministic() {
    // The evaluation's size: 500 samples of the judge's 128-d features (its time: `cargo bench --bench fid`).
    let (count, dim) = (500, 128);
    let a = GaussianStats::from_features(&features(11, count, dim), count, dim).unwrap();
    let b = GaussianStats::from_features(&features(12, count, dim), count, dim).unwrap();
    let fid = a.fid(&b);
    assert!(fid.is_finite() && fid > 0.0, "{fid}");
    for _ in 0..3 {
        assert_eq!(a.fid(&b).to_bits(), fid.to_bits(), "FID is deterministic");
    }
    let again = GaussianStats::from_features(&features(11, count, dim), count, dim).unwrap();
    assert_eq!(again.fid(&b).to_bits(), fid.to_bits(), "refitting the same features gives the same FID");
}

// ── top-k and IoU ───────────────────────────────────────────────────────────────────────────────────────

#[test]
fn top_k_counts_targets_among_the_largest_logits() {
    let logits = [
        0.1, 2.0, 0.5, -1.0, // target 1 is the largest: a top-1 hit
        3.0, 1.0, 2.0, 0.0, // target 2 is second: a top-2 hit
        0.0, 0.0, 0.0, 0.0, // target 3 ties with three lower indices, which rank first: only a top-4 hit
    ];
    let targets = [1, 2, 3];
    assert_eq!(top_k_all(&logits, 4, &targets), [1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0]);
    assert_eq!(top_k_hits(&logits, 4, &targets, 4), 1.0);
    assert_eq!(top_k_hits(&logits, 4, &targets, 100), 1.0, "k ≥ classes: every target is a hit");
    assert_eq!(top_k_hits(&logits, 4, &targets, 0), 0.0);
}

#[test]
fn top_k_breaks_ties_by_lower_index_and_ranks_nan_last() {
    assert_eq!(top_k_hits(&[1.0, 1.0, 0.0], 3, &[0], 1), 1.0, "tied with a higher index: ranks first");
    assert_eq!(top_k_hits(&[1.0, 1.0, 0.0], 3, &[1], 1), 0.0, "tied with a lower index: ranks second");
    assert_eq!(top_k_hits(&[1.0, 1.0, 0.0], 3, &[1], 2), 1.0);
    assert_eq!(top_k_hits(&[f32::NAN, 0.0], 2, &[0], 1), 0.0, "a NaN logit ranks below every number");
    assert_eq!(top_k_hits(&[f32::NAN, -1e30], 2, &[1], 1), 1.0);
    assert_eq!(top_k_hits(&[1.0, 2.0], 2, &[2], 2), 0.0, "a target outside the classes is never a hit");
    assert!(top_k_hits(&[1.0, 2.0, 3.0], 2, &[0], 1).is_nan(), "shape mismatch");
    assert!(top_k_hits(&[], 2, &[], 1).is_nan(), "no rows");
}

#[test]
fn iou_of_hand_made_boxes() {
    let unit = [0.0, 0.0, 1.0, 1.0];
    let b = [0.1, 0.2, 0.5, 0.6];
    assert_eq!(box_iou(b, b), 1.0);
    assert_eq!(box_iou(unit, [1.5, 0.0, 2.5, 1.0]), 0.0, "disjoint");
    assert_eq!(box_iou(unit, [1.0, 0.0, 2.0, 1.0]), 0.0, "touching edges");
    // Shifted by half a width: intersection 1/2, union 3/2.
    assert_eq!(box_iou(unit, [0.5, 0.0, 1.5, 1.0]), 1.0 / 3.0);
    // Contained: intersection = the small box, union = the large box, IoU = area ratio 0.25.
    assert_eq!(box_iou(unit, [0.25, 0.25, 0.75, 0.75]), 0.25);
    assert_eq!(box_iou([0.25, 0.25, 0.75, 0.75], unit), 0.25);
    assert_eq!(box_iou([0.2, 0.2, 0.2, 0.8], [0.2, 0.2, 0.2, 0.8]), 0.0, "zero width");
    assert_eq!(box_iou(unit, [0.3, 0.5, 0.9, 0.5]), 0.0, "zero height");
    assert_eq!(box_iou([1.0, 1.0, 0.0, 0.0], unit), 1.0, "swapped corners are normalised");
    assert_eq!(box_iou([0.5, 1.0, 1.5, 0.0], unit), 1.0 / 3.0);
    assert_eq!(box_iou([f32::NAN, 0.0, 1.0, 1.0], unit), 0.0);
}

#[test]
fn mean_iou_averages_pairs() {
    let unit = [0.0, 0.0, 1.0, 1.0];
    let requested = [unit, unit, unit];
    let judged = [unit, [0.25, 0.25, 0.75, 0.75], [2.0, 2.0, 3.0, 3.0]];
    assert_eq!(mean_iou(&requested, &judged), (1.0 + 0.25 + 0.0) / 3.0);
    assert!(mean_iou(&[], &[]).is_nan());
    assert!(mean_iou(&requested, &judged[..2]).is_nan());
}

// ── early stopping ──────────────────────────────────────────────────────────────────────────────────────

fn rule(metric: &str, mode: MetricMode, patience: u32, min_delta: f64) -> EarlyStopping {
    EarlyStopping::new(&EarlyStoppingConfig { metric: metric.to_string(), mode, patience, min_delta })
}

#[test]
fn early_stopping_in_min_mode() {
    let mut es = rule("loss", MetricMode::Min, 2, 0.0);
    assert_eq!(es.observe(5.0), EarlyStopDecision::Improved);
    assert_eq!(es.observe(4.0), EarlyStopDecision::Improved);
    assert_eq!(es.observe(4.2), EarlyStopDecision::NoImprovement { evals_without: 1, patience: 2 });
    assert_eq!(es.reason("loss"), "loss has not improved for 1 evaluation (best 4 at the 2nd evaluation); patience 2");
    assert_eq!(es.observe(4.1), EarlyStopDecision::Stop { best: 4.0, evals_without: 2 });
    assert_eq!((es.best(), es.evals_without_improvement(), es.evals(), es.should_stop()), (Some(4.0), 2, 4, true));
    assert_eq!(
        es.reason("loss"),
        "loss has not improved for 2 evaluations (best 4 at the 2nd evaluation); stopping the stage"
    );
}

#[test]
fn early_stopping_in_max_mode_needs_strict_improvement() {
    let mut es = rule("top1", MetricMode::Max, 2, 0.0);
    assert_eq!(es.observe(0.5), EarlyStopDecision::Improved);
    assert_eq!(es.observe(0.6), EarlyStopDecision::Improved);
    assert_eq!(es.observe(0.6), EarlyStopDecision::NoImprovement { evals_without: 1, patience: 2 }, "equal");
    assert_eq!(es.observe(0.7), EarlyStopDecision::Improved, "an improvement resets the count");
    assert_eq!(es.observe(0.65), EarlyStopDecision::NoImprovement { evals_without: 1, patience: 2 });
    assert_eq!(es.observe(0.1), EarlyStopDecision::Stop { best: 0.7, evals_without: 2 });
}

#[test]
fn early_stopping_min_delta_must_be_exceeded() {
    let mut es = rule("fid", MetricMode::Min, 3, 0.5);
    assert_eq!(es.observe(10.0), EarlyStopDecision::Improved);
    assert!(matches!(es.observe(9.6), EarlyStopDecision::NoImprovement { evals_without: 1, .. }), "by 0.4");
    assert!(matches!(es.observe(9.5), EarlyStopDecision::NoImprovement { evals_without: 2, .. }), "by exactly 0.5");
    assert_eq!(es.observe(9.4), EarlyStopDecision::Improved, "by 0.6 from the best, 10");
    assert_eq!(es.best(), Some(9.4));

    // The event sentence of a run that stalls after its 4th evaluation.
    let mut es = rule("fid", MetricMode::Min, 3, 0.5);
    let decisions: Vec<_> = [20.0, 15.0, 13.0, 12.3, 12.1, 12.0, 11.9].map(|v| es.observe(v)).into();
    assert_eq!(decisions[3], EarlyStopDecision::Improved);
    assert_eq!(decisions[6], EarlyStopDecision::Stop { best: 12.3, evals_without: 3 });
    assert_eq!(
        es.reason("fid"),
        "fid has not improved by more than 0.5 for 3 evaluations (best 12.3 at the 4th evaluation); stopping the stage"
    );
}

#[test]
fn early_stopping_counts_non_finite_values_as_no_improvement() {
    let mut es = rule("fid", MetricMode::Min, 2, 0.0);
    assert_eq!(es.observe(f64::NAN), EarlyStopDecision::NoImprovement { evals_without: 1, patience: 2 });
    assert_eq!(es.best(), None);
    assert_eq!(es.observe(5.0), EarlyStopDecision::Improved, "the first finite value improves");
    assert!(matches!(es.observe(f64::NAN), EarlyStopDecision::NoImprovement { .. }));
    assert!(matches!(es.observe(f64::NEG_INFINITY), EarlyStopDecision::Stop { evals_without: 2, .. }));
    assert_eq!(es.best(), Some(5.0));

    let mut es = rule("fid", MetricMode::Min, 1, 0.0);
    match es.observe(f64::NAN) {
        EarlyStopDecision::Stop { best, evals_without: 1 } => assert!(best.is_nan()),
        other => panic!("{other:?}"),
    }
    assert_eq!(es.reason("fid"), "fid has not improved for 1 evaluation (no finite value yet); stopping the stage");
}

#[test]
fn early_stopping_resumes_exactly_from_json() {
    let values = [3.0, 2.0, 2.5, 1.9, 2.2, 2.1, 2.3];
    let mut straight = rule("loss", MetricMode::Min, 3, 0.05);
    let expected: Vec<_> = values.iter().map(|&v| straight.observe(v)).collect();
    let mut first = rule("loss", MetricMode::Min, 3, 0.05);
    let mut got: Vec<_> = values[..4].iter().map(|&v| first.observe(v)).collect();
    let mut resumed: EarlyStopping = serde_json::from_str(&serde_json::to_string(&first).unwrap()).unwrap();
    assert_eq!(resumed, first);
    got.extend(values[4..].iter().map(|&v| resumed.observe(v)));
    assert_eq!(got, expected);
    assert_eq!(resumed, straight);
    assert_eq!(expected[6], EarlyStopDecision::Stop { best: 1.9, evals_without: 3 });
}

// ── best tracker and Pareto front ───────────────────────────────────────────────────────────────────────

#[test]
fn best_tracker_keeps_the_strictly_best_value_and_its_checkpoint() {
    let mut best = BestTracker::for_metric("fid").unwrap();
    assert_eq!((best.metric(), best.mode()), ("fid", MetricMode::Min));
    assert!(!best.attach_checkpoint("step-00000050"), "nothing to attach to yet");
    assert!(best.observe(10.0, 100));
    assert!(best.attach_checkpoint("step-00000100"));
    assert!(!best.observe(12.0, 200));
    assert!(!best.observe(10.0, 300), "a tie is not a new best");
    assert!(!best.observe(f64::NAN, 350));
    let entry = best.best().unwrap();
    assert_eq!((entry.value, entry.step, entry.checkpoint.as_deref()), (10.0, 100, Some("step-00000100")));
    assert!(best.observe(8.0, 400));
    assert_eq!(best.best().unwrap().checkpoint, None, "a new best has no checkpoint until one is attached");
    best.attach_checkpoint("step-00000400");

    let back: BestTracker = serde_json::from_str(&serde_json::to_string(&best).unwrap()).unwrap();
    assert_eq!(back, best);

    let mut top1 = BestTracker::for_metric("top1").unwrap();
    assert!(top1.observe(0.5, 1) && top1.observe(0.6, 2) && !top1.observe(0.55, 3));
    assert_eq!(top1.best().unwrap().value, 0.6);
    assert!(BestTracker::for_metric("accuracy").is_none());
    let mut custom = BestTracker::new("iou", MetricMode::Max);
    assert!(custom.observe(-1.0, 0), "the first finite value is a best");
}

#[test]
fn pareto_front_keeps_non_dominated_points() {
    let points = [
        (10.0, 0.5),     // 0: dominated by 1
        (8.0, 0.6),      // 1: front
        (8.0, 0.6),      // 2: duplicate of 1 — equal points do not dominate each other
        (12.0, 0.9),     // 3: front (best top-1)
        (9.0, 0.55),     // 4: dominated by 1
        (f64::NAN, 1.0), // 5: not finite: never on the front
        (15.0, 0.9),     // 6: dominated by 3 (same top-1, worse FID)
        (7.5, f64::NAN), // 7: not finite, and dominates nothing
    ];
    assert_eq!(pareto_front(&points), vec![1, 2, 3]);
    assert_eq!(pareto_front(&[]), Vec::<usize>::new());
    assert_eq!(pareto_front(&[(1.0, 0.0)]), vec![0]);
    assert_eq!(pareto_front(&[(1.0, 0.1), (2.0, 0.2), (3.0, 0.3)]), vec![0, 1, 2], "a pure trade-off");
}

// ── recommendation ──────────────────────────────────────────────────────────────────────────────────────

fn row(step: u64, stage: &str, fid: Option<f64>, top1: Option<f64>, iou: Option<f64>, gate: f64) -> CheckpointRow {
    CheckpointRow { step, stage: stage.to_string(), fid, top1, iou, gate_mean: gate }
}

#[test]
fn recommendation_picks_the_lowest_fid_and_names_the_trade_off() {
    let rows = vec![
        row(400, "base", Some(20.0), Some(0.5), None, 0.0),
        row(800, "adapter", Some(9.0), Some(0.95), Some(0.6), 0.05),
        row(1200, "adapter", Some(8.1), Some(0.91), Some(0.62), 0.08),
        row(1600, "adapter", Some(8.5), Some(0.9), None, 0.09),
        row(1800, "finetune", None, None, None, 0.09),
        row(2000, "finetune", Some(8.3), Some(0.93), None, 0.1),
    ];
    let r = recommend(&rows);
    assert_eq!(r.index, Some(2));
    assert_eq!(
        r.message,
        "Use step-00001200 (stage adapter): lowest FID 8.1 among 5 evaluated checkpoints of 6, top-1 0.91, \
         IoU 0.62, and it is on the FID/top-1 Pareto front. For class accuracy, step-00000800 (stage adapter) \
         has top-1 0.95 at FID 9."
    );

    // Every checkpoint evaluated and the lowest FID also has the best top-1.
    let rows = vec![
        row(400, "base", Some(20.0), Some(0.5), None, 0.0),
        row(1200, "adapter", Some(8.1), Some(0.91), None, 0.08),
        row(1600, "adapter", Some(8.5), Some(0.9), None, 0.09),
    ];
    let r = recommend(&rows);
    assert_eq!(r.index, Some(1));
    assert_eq!(
        r.message,
        "Use step-00001200 (stage adapter): lowest FID 8.1 among 3 checkpoints, top-1 0.91, and it is on the \
         FID/top-1 Pareto front."
    );
}

#[test]
fn recommendation_ties_and_fallbacks() {
    // Equal FID: the higher top-1 wins; then the later step.
    let rows = vec![row(100, "a", Some(5.0), Some(0.8), None, 0.1), row(200, "a", Some(5.0), Some(0.9), None, 0.1)];
    assert_eq!(recommend(&rows).index, Some(1));
    let rows = vec![row(100, "a", Some(5.0), None, None, 0.1), row(200, "a", Some(5.0), None, None, 0.1)];
    let r = recommend(&rows);
    assert_eq!(r.index, Some(1));
    assert_eq!(r.message, "Use step-00000200 (stage a): lowest FID 5 among 2 checkpoints.");

    // No FID: the highest top-1.
    let rows = vec![row(100, "a", None, Some(0.7), Some(0.4), 0.1), row(200, "a", None, Some(0.6), None, 0.1)];
    let r = recommend(&rows);
    assert_eq!(r.index, Some(0));
    assert_eq!(
        r.message,
        "Use step-00000100 (stage a): highest top-1 0.7 among 2 checkpoints (no checkpoint has an FID), IoU 0.4."
    );

    // Nothing evaluated: the newest.
    let rows = vec![row(300, "b", None, None, None, 0.1), row(200, "a", None, None, None, 0.1)];
    let r = recommend(&rows);
    assert_eq!(r.index, Some(0));
    assert_eq!(
        r.message,
        "No checkpoint has been evaluated yet; the newest is step-00000300 (stage b), 2 checkpoints in all."
    );

    let r = recommend(&[]);
    assert_eq!((r.index, r.message.as_str()), (None, "No checkpoints yet."));
}

#[test]
fn recommendation_warns_about_closed_gates() {
    let rows =
        vec![row(400, "base", Some(7.0), Some(0.8), None, 0.0002), row(800, "adapter", Some(9.0), None, None, 0.2)];
    let r = recommend(&rows);
    assert_eq!(r.index, Some(0));
    assert!(r.message.ends_with(" Note: its adapter gates are near zero (mean 0.0002), so it may ignore layouts."));
    // No caveat when no checkpoint has open gates (e.g. a run without adapter).
    let rows = vec![row(400, "base", Some(7.0), Some(0.8), None, 0.0)];
    assert!(!recommend(&rows).message.contains("Note"));
}

// ── gate alerts ─────────────────────────────────────────────────────────────────────────────────────────

fn kinds(alerts: &[wick::eval::GateAlert]) -> Vec<GateAlertKind> {
    alerts.iter().map(|a| a.kind).collect()
}

#[test]
fn gate_collapse_fires_once_after_enough_adapter_steps() {
    let mut monitor = GateMonitor::default();
    let tiny = [1e-4, -2e-4];
    assert!(monitor.observe(100, 100, &tiny).is_empty(), "too early to judge");
    assert!(monitor.observe(150, 199, &tiny).is_empty());
    let alerts = monitor.observe(200, 200, &tiny);
    assert_eq!(kinds(&alerts), vec![GateAlertKind::Collapse]);
    assert_eq!(alerts[0].step, 200);
    assert_eq!(
        alerts[0].message,
        "gate mean 0.00015 < 0.001 after 200 adapter steps: the gates have collapsed toward zero, so layouts have \
         little effect"
    );
    assert!(monitor.is_active(GateAlertKind::Collapse));
    for step in 201..220 {
        assert!(monitor.observe(step, step, &tiny).is_empty(), "no flood while it stays collapsed");
    }
    assert!(monitor.observe(220, 220, &[0.01, 0.02]).is_empty(), "recovery is silent");
    assert!(!monitor.is_active(GateAlertKind::Collapse));
    assert_eq!(kinds(&monitor.observe(230, 230, &tiny)), vec![GateAlertKind::Collapse], "fires again");
    assert!(monitor.observe(240, 240, &[]).is_empty(), "no adapter, no alert");
}

#[test]
fn gate_over_activation_names_the_blocks() {
    // Jumps of the gate mean are not this test's business.
    let mut monitor = GateMonitor::new(GateAlertConfig { jump_threshold: f64::INFINITY, ..GateAlertConfig::default() });
    let alerts = monitor.observe(10, 10, &[0.2, 1.3, -1.5]);
    assert_eq!(kinds(&alerts), vec![GateAlertKind::OverActivation]);
    assert_eq!(
        alerts[0].message,
        "gates of blocks 1 (1.3), 2 (-1.5) are beyond |gate| ≤ 1: the adapter may overpower the base model"
    );
    assert!(monitor.observe(20, 20, &[0.2, 1.4, -1.5]).is_empty(), "still over: silent");
    assert!(monitor.observe(30, 30, &[0.2, 0.9, -0.95]).is_empty());
    let alerts = monitor.observe(40, 40, &[0.2, 0.9, 1.01]);
    assert_eq!(
        alerts[0].message,
        "gate of block 2 (1.01) is beyond |gate| ≤ 1: the adapter may overpower the base model"
    );
    let mut monitor = GateMonitor::default();
    let alerts = monitor.observe(10, 10, &[0.2, f64::NAN]);
    assert_eq!(kinds(&alerts), vec![GateAlertKind::OverActivation], "a NaN gate is out of bounds");
    assert!(alerts[0].message.contains("block 1 (NaN)"), "{}", alerts[0].message);
}

#[test]
fn gate_sudden_convergence_looks_at_jumps_within_the_window() {
    let config = GateAlertConfig { jump_window: 3, ..GateAlertConfig::default() };
    let mut monitor = GateMonitor::new(config.clone());
    let script = |monitor: &mut GateMonitor, step: u64, mean: f64| kinds(&monitor.observe(step, step, &[mean, -mean]));
    assert!(script(&mut monitor, 10, 0.0).is_empty());
    assert!(script(&mut monitor, 20, 0.01).is_empty());
    assert!(script(&mut monitor, 30, 0.04).is_empty(), "slow growth");
    let alerts = monitor.observe(40, 40, &[0.1, -0.1]);
    assert_eq!(kinds(&alerts), vec![GateAlertKind::SuddenConvergence]);
    assert_eq!(
        alerts[0].message,
        "gate mean jumped by 0.06 (0.04 → 0.1) between steps 30 and 40: the adapter may have suddenly converged \
         (informational)"
    );
    assert!(script(&mut monitor, 50, 0.1).is_empty(), "the jump is still in the window: silent");
    assert!(script(&mut monitor, 60, 0.1).is_empty());
    assert!(!monitor.is_active(GateAlertKind::SuddenConvergence), "the window [0.1, 0.1, 0.1] has no jump");
    assert_eq!(script(&mut monitor, 70, 0.2), vec![GateAlertKind::SuddenConvergence], "a new jump");
    assert_eq!(script(&mut monitor, 80, 0.1), Vec::<GateAlertKind>::new(), "still active: silent");

    let mut off = GateMonitor::new(GateAlertConfig { jump_window: 1, ..config });
    assert!(script(&mut off, 10, 0.0).is_empty());
    assert!(script(&mut off, 20, 0.5).is_empty(), "a window of 1 point has no jumps");
}

#[test]
fn gate_monitor_resumes_exactly_from_json() {
    let script: Vec<(u64, Vec<f64>)> = (0..40u64)
        .map(|i| {
            let g = match i {
                0..=24 => 1e-4,
                25..=29 => 0.3,
                _ => 1.2,
            };
            (i * 10, vec![g, -g * 0.5])
        })
        .collect();
    let run = |monitor: &mut GateMonitor, part: &[(u64, Vec<f64>)]| -> Vec<(GateAlertKind, u64)> {
        part.iter().flat_map(|(step, g)| monitor.observe(*step, *step, g)).map(|a| (a.kind, a.step)).collect()
    };
    let mut straight = GateMonitor::default();
    let expected = run(&mut straight, &script);
    assert_eq!(
        expected,
        vec![
            (GateAlertKind::Collapse, 200),
            (GateAlertKind::SuddenConvergence, 250),
            (GateAlertKind::OverActivation, 300),
        ]
    );
    let mut first = GateMonitor::default();
    let mut got = run(&mut first, &script[..22]);
    let mut resumed: GateMonitor = serde_json::from_str(&serde_json::to_string(&first).unwrap()).unwrap();
    got.extend(run(&mut resumed, &script[22..]));
    assert_eq!(got, expected);
    assert_eq!(resumed, straight);
}

#[test]
fn gate_alert_config_defaults_fill_missing_fields() {
    let config: GateAlertConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(config, GateAlertConfig::default());
    assert_eq!((config.collapse_threshold, config.collapse_after_steps, config.over_activation), (1e-3, 200, 1.0));
    assert_eq!((config.jump_window, config.jump_threshold), (10, 0.05));
    let config: GateAlertConfig = serde_json::from_str(r#"{"collapse_after_steps": 50}"#).unwrap();
    assert_eq!(config.collapse_after_steps, 50);
    assert!(serde_json::from_str::<GateAlertConfig>(r#"{"colapse_after_steps": 50}"#).is_err(), "typo refused");
}

// ── formatting ──────────────────────────────────────────────────────────────────────────────────────────

#[test]
fn values_and_ordinals_read_naturally() {
    let cases = [(12.3, "12.3"), (4.0, "4"), (0.9133, "0.9133"), (0.91334, "0.9133"), (1234.56, "1235")];
    for (v, text) in cases {
        assert_eq!(fmt_value(v), text);
    }
    assert_eq!(fmt_value(0.0), "0");
    assert_eq!(fmt_value(-1.5), "-1.5");
    assert_eq!(fmt_value(1.5e-5), "1.5e-5");
    assert_eq!(fmt_value(f64::NAN), "NaN");
    let ordinals: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111].map(ordinal).into();
    assert_eq!(ordinals, ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]);
}
