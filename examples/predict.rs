//! Stand-in for `wick predict` until the CLI wires it: `predict [predict] --checkpoint DIR --input IN --output OUT`.
//! Also `predict save PRESET DIR SEED`: saves a freshly built model with every zero-initialised parameter made
//! non-zero (for parity checks against the PyTorch reference).

use std::path::PathBuf;

use anyhow::{bail, Context};
use wick::config::ModelPreset;
use wick::model::{build_model, predict_file, randomize_zero_init, ModelSpec};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("save") {
        let [_, preset, dir, seed] = &args[..] else { bail!("usage: predict save PRESET DIR SEED") };
        let preset = match preset.as_str() {
            "tiny" => ModelPreset::Tiny,
            "small" => ModelPreset::Small,
            "base" => ModelPreset::Base,
            other => bail!("unknown preset {other}"),
        };
        let seed: u64 = seed.parse().context("SEED")?;
        let spec = ModelSpec::from_preset(preset, true);
        let (varmap, _) = build_model(spec, &candle_core::Device::Cpu, seed)?;
        randomize_zero_init(spec, &varmap, seed + 1)?;
        std::fs::create_dir_all(dir)?;
        varmap.save(PathBuf::from(dir).join("model.safetensors"))?;
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("predict") {
        args.remove(0);
    }
    let (mut checkpoint, mut input, mut output) = (None, None, None);
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--checkpoint" => checkpoint = Some(PathBuf::from(value)),
            "--input" => input = Some(PathBuf::from(value)),
            "--output" => output = Some(PathBuf::from(value)),
            other => bail!("unknown argument {other}"),
        }
    }
    let (Some(checkpoint), Some(input), Some(output)) = (checkpoint, input, output) else {
        bail!("usage: predict --checkpoint DIR --input IN --output OUT")
    };
    predict_file(&checkpoint, &input, &output)
}
