//! Files other tools write, made as they make them: safetensors files and Trainer checkpoints.

use std::path::Path;

/// A safetensors file as `safetensors.torch.save_file` writes it (the format's own serializer).
pub fn write_safetensors(path: &Path, tensors: &[(&str, Vec<f32>)]) {
    let bytes: Vec<(String, Vec<u8>, usize)> = tensors
        .iter()
        .map(|(name, values)| (name.to_string(), values.iter().flat_map(|v| v.to_le_bytes()).collect(), values.len()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, data, n)| {
            (name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*n], data).unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

/// A Trainer checkpoint as `Trainer._save_checkpoint` leaves it: weights, state, optimizer / scheduler / RNG
/// pickles (here only bytes: Wick never opens them).
pub fn write_hf_checkpoint(dir: &Path, step: u64) {
    std::fs::create_dir_all(dir).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &[("wte.weight", vec![0.5; 12]), ("ln.bias", vec![0.0; 4])]);
    std::fs::write(
        dir.join("trainer_state.json"),
        format!("{{\n  \"global_step\": {step},\n  \"log_history\": []\n}}"),
    )
    .unwrap();
    for pickle in ["optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"] {
        std::fs::write(dir.join(pickle), b"\x80\x04not really a pickle").unwrap();
    }
}
