//! Integration tests of `wick::model` against its public API.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use wick::config::ModelPreset;
use wick::model::{
    build_model, flow_matching_loss, is_adapter_param, load_model, param_count, param_shapes, predict_file,
    randomize_zero_init, spec_from_weights, Denoiser, ModelSpec,
};

const PARAMS_TINY: &str = include_str!("data/params_tiny.txt");

fn tiny() -> ModelSpec {
    ModelSpec::from_preset(ModelPreset::Tiny, true)
}

/// A random batch: x, t, y, boxes, box_classes (boxes sorted corners, some null slots).
struct Batch {
    x: Tensor,
    t: Tensor,
    eps: Tensor,
    y: Tensor,
    boxes: Tensor,
    box_classes: Tensor,
}

fn batch(spec: ModelSpec, b: usize, seed: u64) -> Batch {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = b * 3 * spec.image_size * spec.image_size;
    let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| StandardNormal.sample(&mut rng)).collect() };
    let x = normal(n);
    let eps = normal(n);
    let shape = (b, 3, spec.image_size, spec.image_size);
    let t: Vec<f32> = (0..b).map(|_| rng.random_range(0.0..1.0)).collect();
    let y: Vec<u32> = (0..b).map(|_| rng.random_range(0..=spec.null_class())).collect();
    let mut boxes = Vec::new();
    for _ in 0..b * spec.slots {
        let (a, c): (f32, f32) = (rng.random_range(0.0..1.0), rng.random_range(0.0..1.0));
        let (d, e): (f32, f32) = (rng.random_range(0.0..1.0), rng.random_range(0.0..1.0));
        boxes.extend([a.min(c), d.min(e), a.max(c), d.max(e)]);
    }
    let box_classes: Vec<u32> = (0..b * spec.slots).map(|_| rng.random_range(0..=spec.null_class())).collect();
    Batch {
        x: Tensor::from_vec(x, shape, &dev).unwrap(),
        eps: Tensor::from_vec(eps, shape, &dev).unwrap(),
        t: Tensor::from_vec(t, b, &dev).unwrap(),
        y: Tensor::from_vec(y, b, &dev).unwrap(),
        boxes: Tensor::from_vec(boxes, (b, spec.slots, 4), &dev).unwrap(),
        box_classes: Tensor::from_vec(box_classes, (b, spec.slots), &dev).unwrap(),
    }
}

fn forward(model: &Denoiser, d: &Batch, gate_scale: f64) -> Tensor {
    model.forward_with_gate_scale(&d.x, &d.t, &d.y, &d.boxes, &d.box_classes, gate_scale).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<_> = varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[test]
fn parameter_counts_of_presets() {
    for (preset, count) in [(ModelPreset::Tiny, 226_802), (ModelPreset::Small, 896_788), (ModelPreset::Base, 2_298_294)]
    {
        let spec = ModelSpec::from_preset(preset, true);
        assert_eq!(param_count(spec), count, "{preset:?}");
        let (varmap, _) = build_model(spec, &Device::Cpu, 0).unwrap();
        let allocated: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(allocated, count, "{preset:?} allocated");
    }
    let no_adapter = ModelSpec::from_preset(ModelPreset::Tiny, false);
    assert!(param_count(no_adapter) < 226_802);
    assert!(param_shapes(no_adapter).iter().all(|(n, _)| !is_adapter_param(n)));
}

#[test]
fn tiny_names_and_shapes_match_reference() {
    let mut expected: Vec<(String, Vec<usize>)> = PARAMS_TINY
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, shape) = l.split_once(' ').unwrap();
            let dims = shape.trim().trim_start_matches('[').trim_end_matches(']');
            (name.to_string(), dims.split(',').map(|d| d.trim().parse().unwrap()).collect())
        })
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 50);
    assert_eq!(param_shapes(tiny()), expected);
    // The built VarMap holds exactly these.
    let (varmap, _) = build_model(tiny(), &Device::Cpu, 0).unwrap();
    let built: Vec<(String, Vec<usize>)> =
        sorted_vars(&varmap).into_iter().map(|(n, v)| (n, v.dims().to_vec())).collect();
    assert_eq!(built, expected);
}

#[test]
fn adapter_param_names() {
    assert!(is_adapter_param("blocks.0.adapter_gate"));
    assert!(is_adapter_param("blocks.12.adapter_attn.kv.weight"));
    assert!(!is_adapter_param("blocks.0.attn.qkv.weight"));
    assert!(!is_adapter_param("layout_class_embed.weight"));
    assert!(!is_adapter_param("adapter_gate"));
    let adapter: Vec<_> = param_shapes(tiny()).into_iter().filter(|(n, _)| is_adapter_param(n)).collect();
    assert_eq!(adapter.len(), 2 * 7);
}

#[test]
fn init_follows_reference() {
    let (varmap, model) = build_model(tiny(), &Device::Cpu, 5).unwrap();
    assert_eq!(model.gate_values().unwrap(), vec![0.0, 0.0]);
    for (name, var) in sorted_vars(&varmap) {
        let v = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let zero = name.contains(".ada.") || name.starts_with("final_") || name.ends_with("adapter_gate");
        if zero {
            assert_eq!(max, 0.0, "{name} should be zero");
        } else if name.ends_with("embed.weight") && !name.starts_with("patch") {
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
            assert!(mean.abs() < 0.2 && (var - 1.0).abs() < 0.3, "{name}: mean {mean}, var {var}");
        } else {
            let fan_in = varmap.data().lock().unwrap()[&name.replace(".bias", ".weight")].dims()[1];
            let bound = 1.0 / (fan_in as f32).sqrt();
            assert!(max <= bound && max > 0.8 * bound, "{name}: max {max}, bound {bound}");
        }
    }
}

#[test]
fn build_model_is_deterministic() {
    let (a, _) = build_model(tiny(), &Device::Cpu, 11).unwrap();
    let (b, _) = build_model(tiny(), &Device::Cpu, 11).unwrap();
    let (c, _) = build_model(tiny(), &Device::Cpu, 12).unwrap();
    let (mut same_ab, mut same_ac) = (true, true);
    for ((na, va), ((nb, vb), (_, vc))) in
        sorted_vars(&a).iter().zip(sorted_vars(&b).iter().zip(sorted_vars(&c).iter()))
    {
        assert_eq!(na, nb);
        same_ab &= max_abs_diff(va, vb) == 0.0;
        same_ac &= max_abs_diff(va, vc) == 0.0;
    }
    assert!(same_ab, "same seed must give identical weights");
    assert!(!same_ac, "different seeds must give different weights");
}

#[test]
fn forward_shape_and_zero_init_output() {
    let spec = tiny();
    let (_, model) = build_model(spec, &Device::Cpu, 0).unwrap();
    let d = batch(spec, 3, 1);
    let v = forward(&model, &d, 1.0);
    assert_eq!(v.dims(), &[3, 3, 32, 32]);
    // adaLN-Zero: a fresh model predicts exactly zero, so the loss is mean((eps - x0)²).
    assert_eq!(v.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let loss = flow_matching_loss(&model, &d.x, &d.t, &d.eps, &d.y, &d.boxes, &d.box_classes).unwrap();
    let expected = (&d.eps - &d.x).unwrap().sqr().unwrap().mean_all().unwrap();
    let (loss, expected) = (loss.to_scalar::<f32>().unwrap(), expected.to_scalar::<f32>().unwrap());
    assert!((loss - expected).abs() < 1e-6 * expected, "{loss} vs {expected}");
}

#[test]
fn forward_rejects_bad_inputs() {
    let spec = tiny();
    let (_, model) = build_model(spec, &Device::Cpu, 0).unwrap();
    let d = batch(spec, 2, 1);
    let y64 = d.y.to_dtype(DType::I64).unwrap();
    let err = model.forward(&d.x, &d.t, &y64, &d.boxes, &d.box_classes).unwrap_err().to_string();
    assert!(err.contains("`y`") && err.contains("dtype"), "{err}");
    let boxes = d.boxes.narrow(1, 0, 3).unwrap();
    let err = model.forward(&d.x, &d.t, &d.y, &boxes, &d.box_classes).unwrap_err().to_string();
    assert!(err.contains("`boxes`") && err.contains("shape"), "{err}");
}

/// Checks every var of `varmap` has a gradient in `grads` that is not all zeros.
fn assert_all_grads_nonzero(varmap: &VarMap, grads: &candle_core::backprop::GradStore) {
    let mut bad = Vec::new();
    for (name, var) in sorted_vars(varmap) {
        match grads.get(var.as_tensor()) {
            None => bad.push(format!("{name}: no gradient")),
            Some(g) => {
                let max = g.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                if max == 0.0 || !max.is_finite() {
                    bad.push(format!("{name}: gradient max |g| = {max}"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "vars without a usable gradient:\n{}", bad.join("\n"));
}

#[test]
fn every_var_gets_a_gradient_when_all_paths_are_live() {
    let spec = tiny();
    let (varmap, model) = build_model(spec, &Device::Cpu, 2).unwrap();
    randomize_zero_init(spec, &varmap, 3).unwrap();
    let d = batch(spec, 4, 4);
    let loss = flow_matching_loss(&model, &d.x, &d.t, &d.eps, &d.y, &d.boxes, &d.box_classes).unwrap();
    let grads = loss.backward().unwrap();
    assert_all_grads_nonzero(&varmap, &grads);
}

#[test]
fn every_var_gets_a_gradient_after_a_few_sgd_steps() {
    // From the real (zero-initialised) start: zero layers mask gradients at first, a few steps unmask them.
    let spec = tiny();
    let (varmap, model) = build_model(spec, &Device::Cpu, 2).unwrap();
    let vars = sorted_vars(&varmap);
    let d = batch(spec, 4, 5);
    let mut last = None;
    for _ in 0..4 {
        let loss = flow_matching_loss(&model, &d.x, &d.t, &d.eps, &d.y, &d.boxes, &d.box_classes).unwrap();
        let grads = loss.backward().unwrap();
        for (_, var) in &vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - (g * 0.1).unwrap()).unwrap()).unwrap();
            }
        }
        last = Some(grads);
    }
    assert!(model.gate_values().unwrap().iter().all(|g| *g != 0.0));
    assert_all_grads_nonzero(&varmap, last.as_ref().unwrap());
}

/// Saves `varmap` to `dir/model.safetensors`, keeping only the names `keep` accepts.
fn save_filtered(varmap: &VarMap, dir: &Path, keep: impl Fn(&str) -> bool) {
    let tensors: HashMap<String, Tensor> =
        sorted_vars(varmap).into_iter().filter(|(n, _)| keep(n)).map(|(n, v)| (n, v.as_tensor().clone())).collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

#[test]
fn gate_scale_zero_equals_model_without_adapter() {
    let spec = tiny();
    let (mut varmap, model) = build_model(spec, &Device::Cpu, 8).unwrap();
    randomize_zero_init(spec, &varmap, 9).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_filtered(&varmap, dir.path(), |n| !is_adapter_param(n));
    let base_spec = ModelSpec { adapter: false, ..spec };
    let (_, base) = load_model(base_spec, dir.path(), &Device::Cpu).unwrap();
    assert!(base.gate_values().unwrap().is_empty());
    let d = batch(spec, 3, 10);
    let without = forward(&base, &d, 1.0);
    assert_eq!(max_abs_diff(&forward(&model, &d, 0.0), &without), 0.0);
    assert!(max_abs_diff(&forward(&model, &d, 1.0), &without) > 1e-3, "the adapter must contribute");

    // gate_scale multiplies the raw gates.
    let half = forward(&model, &d, 0.5);
    let gates = model.gate_values().unwrap();
    for (i, g) in gates.iter().enumerate() {
        let value = Tensor::from_vec(vec![g * 0.5], 1, &Device::Cpu).unwrap();
        varmap.set_one(format!("blocks.{i}.adapter_gate"), value).unwrap();
    }
    assert_eq!(max_abs_diff(&forward(&model, &d, 1.0), &half), 0.0);
}

#[test]
fn load_model_is_strict_and_names_the_tensor() {
    let spec = tiny();
    let (varmap, _) = build_model(spec, &Device::Cpu, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();

    save_filtered(&varmap, dir.path(), |n| n != "blocks.1.mlp.0.bias");
    let err = format!("{:#}", load_model(spec, dir.path(), &Device::Cpu).err().unwrap());
    assert!(err.contains("missing tensor blocks.1.mlp.0.bias"), "{err}");

    let mut tensors: HashMap<String, Tensor> =
        sorted_vars(&varmap).into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    tensors.insert("extra.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let err = format!("{:#}", load_model(spec, dir.path(), &Device::Cpu).err().unwrap());
    assert!(err.contains("unexpected tensor extra.weight"), "{err}");

    tensors.remove("extra.weight");
    tensors.insert("final_ada.bias".into(), Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let err = format!("{:#}", load_model(spec, dir.path(), &Device::Cpu).err().unwrap());
    assert!(err.contains("final_ada.bias has shape [7]"), "{err}");

    // A spec whose architecture differs is refused too.
    save_filtered(&varmap, dir.path(), |_| true);
    let small = ModelSpec::from_preset(ModelPreset::Small, true);
    assert!(load_model(small, dir.path(), &Device::Cpu).is_err());
}

#[test]
fn spec_is_recognised_from_weights() {
    let dir = tempfile::tempdir().unwrap();
    for preset in [ModelPreset::Tiny, ModelPreset::Small, ModelPreset::Base] {
        for adapter in [true, false] {
            let spec = ModelSpec::from_preset(preset, adapter);
            let (varmap, _) = build_model(spec, &Device::Cpu, 0).unwrap();
            varmap.save(dir.path().join("model.safetensors")).unwrap();
            assert_eq!(spec_from_weights(dir.path()).unwrap(), spec);
            assert_eq!(spec_from_weights(&dir.path().join("model.safetensors")).unwrap(), spec);
        }
    }
}

#[test]
fn predict_file_round_trip() {
    let spec = tiny();
    let (varmap, model) = build_model(spec, &Device::Cpu, 21).unwrap();
    randomize_zero_init(spec, &varmap, 22).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("step-1");
    std::fs::create_dir(&ckpt).unwrap();
    varmap.save(ckpt.join("model.safetensors")).unwrap();

    let d = batch(spec, 3, 23);
    let inputs = HashMap::from([
        ("x".to_string(), d.x.clone()),
        ("t".to_string(), d.t.clone()),
        ("y".to_string(), d.y.to_dtype(DType::I64).unwrap()),
        ("boxes".to_string(), d.boxes.clone()),
        ("box_classes".to_string(), d.box_classes.to_dtype(DType::I64).unwrap()),
    ]);
    let input = dir.path().join("in.safetensors");
    candle_core::safetensors::save(&inputs, &input).unwrap();
    let expected = forward(&model, &d, 1.0);
    for checkpoint in [ckpt.clone(), ckpt.join("model.safetensors")] {
        let output = dir.path().join("out.safetensors");
        predict_file(&checkpoint, &input, &output, &Device::Cpu).unwrap();
        let v = candle_core::safetensors::load(&output, &Device::Cpu).unwrap().remove("v").unwrap();
        assert_eq!(v.dtype(), DType::F32);
        assert_eq!(max_abs_diff(&v, &expected), 0.0);
    }

    // A class outside 0..=null is refused with the input's name.
    let mut bad = inputs.clone();
    bad.insert("y".into(), Tensor::from_vec(vec![0i64, 9, 1], 3, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&bad, &input).unwrap();
    let err =
        format!("{:#}", predict_file(&ckpt, &input, &dir.path().join("o.safetensors"), &Device::Cpu).unwrap_err());
    assert!(err.contains("`y`") && err.contains('9'), "{err}");
}

#[test]
fn forward_and_backward_are_bitwise_repeatable() {
    // The fused kernels run on several threads; results must not depend on their timing.
    let spec = tiny();
    let (varmap, model) = build_model(spec, &Device::Cpu, 31).unwrap();
    randomize_zero_init(spec, &varmap, 32).unwrap();
    let d = batch(spec, 8, 33);
    let run = || {
        let loss = flow_matching_loss(&model, &d.x, &d.t, &d.eps, &d.y, &d.boxes, &d.box_classes).unwrap();
        (loss.to_scalar::<f32>().unwrap(), loss.backward().unwrap())
    };
    let (loss_a, grads_a) = run();
    for _ in 0..3 {
        let (loss_b, grads_b) = run();
        assert_eq!(loss_a.to_bits(), loss_b.to_bits());
        for (name, var) in sorted_vars(&varmap) {
            let (a, b) = (grads_a.get(var.as_tensor()).unwrap(), grads_b.get(var.as_tensor()).unwrap());
            assert_eq!(max_abs_diff(a, b), 0.0, "{name}");
        }
    }
}
