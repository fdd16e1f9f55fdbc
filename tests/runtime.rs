//! `tune_cpu_runtime` in a process of its own (it sets environment variables, which no other test thread may
//! read at the same time).

#[test]
fn tuning_twice_changes_nothing_the_second_time() {
    let first = wick::model::tune_cpu_runtime();
    let rayon = std::env::var("RAYON_NUM_THREADS").ok();
    let second = wick::model::tune_cpu_runtime();
    // A second call used to take the first call's RAYON_NUM_THREADS for the user's own setting.
    assert_eq!(first, second);
    assert_eq!(std::env::var("RAYON_NUM_THREADS").ok(), rayon);
}
