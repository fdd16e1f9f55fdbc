//! The denoiser, exactly as `shared/reference/dit_reference.py` defines it: a DiT with adaLN-Zero blocks and an
//! optional zero-gated spatial adapter that cross-attends from image tokens to layout tokens (one per box slot).
//!
//! - [`ModelSpec`]: the architecture numbers of a preset; [`param_shapes`], [`param_count`],
//!   [`is_adapter_param`], [`is_layout_param`] describe its parameters (names as the reference's `state_dict`).
//! - [`Denoiser`]: the model on a `VarBuilder`; [`build_model`] makes a fresh, seeded one, [`load_model`] a
//!   saved one (strict), [`spec_from_weights`] recognises the preset of a weights file.
//! - [`flow_matching_loss`]: the rectified-flow objective; [`predict_file`]: `wick predict`.
//!
//! Everything is f32 (a CUDA run may compute its linear layers in bf16: [`with_autocast`]). Checkpoints are the VarMap saved as safetensors under the reference's names, so
//! PyTorch's `load_state_dict(strict=True)` accepts them.
//!
//! Speed: on the CPU the heavy ops run as fused custom ops with their own backward ([`ops`], [`attention`],
//! whole residual branches in `branches`, matrix products straight through gemm in `matmul`);
//! the same maths as basic candle ops runs on other devices. Call [`tune_cpu_runtime`] first thing in `main`.
//! Inside the model, tokens are kept 2-D (`[B·N, W]`) so that no reshape nodes enter the graph.

pub mod attention;
mod branches;
mod cpu;
mod denoiser;
mod features;
mod init;
pub mod judge;
mod layers;
mod loss;
mod matmul;
pub mod ops;
mod precision;
mod predict;
mod runtime;
mod spec;

pub use denoiser::Denoiser;
pub use init::{
    build_model, load_model, randomize_zero_init, sorted_vars, spec_from_weights, weights_file, WEIGHTS_FILE,
};
pub use loss::{flow_matching_loss, object_pixel_weights, weighted_flow_matching_loss};
pub use precision::with_autocast;
pub use predict::predict_file;
pub use runtime::{
    kernel_thread_limit, limit_kernel_threads, matmul_kernel, set_compute_threads, tune_allocator, tune_cpu_runtime,
    CpuTuning,
};
pub use spec::{
    forward_flops_per_image, is_adapter_param, is_layout_param, param_count, param_shapes, train_flops_per_image,
    ModelSpec,
};
