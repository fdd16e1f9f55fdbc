use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let x = Tensor::randn(0f32, 1.0, 1_572_864, &Device::Cpu)?;
    for _ in 0..3 { wick::model::ops::gelu_tanh(&x)?; }
    let t = Instant::now();
    for _ in 0..50 { wick::model::ops::gelu_tanh(&x)?; }
    let s = t.elapsed().as_secs_f64() / 50.0;
    println!("gelu fwd 1.5M: {:.3} ms = {:.2} ns/elem", s * 1e3, s * 1e9 / 1_572_864.0);
    let t = Instant::now();
    for _ in 0..50 { x.gelu()?; }
    let s = t.elapsed().as_secs_f64() / 50.0;
    println!("candle gelu 1.5M: {:.3} ms", s * 1e3);
    Ok(())
}
