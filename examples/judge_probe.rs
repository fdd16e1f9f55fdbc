//! Times the judge's training steps and reports accuracy after a short run.
fn main() -> anyhow::Result<()> {
    let steps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let config = wick::eval::judge::JudgeTrainConfig { steps, heldout: 500, ..Default::default() };
    let start = std::time::Instant::now();
    let (_, _, report) = wick::eval::judge::train_judge(&config, &candle_core::Device::Cpu, |step, loss| {
        if step % 50 == 0 {
            eprintln!("step {step} loss {loss:.4} ({:.2} s/step)", start.elapsed().as_secs_f64() / step as f64);
        }
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
