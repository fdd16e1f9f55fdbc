//! The built-in tasks, each written against the public [`crate::task`] API only:
//!
//! - [`shapes`]: the DiT denoiser with its gated layout adapter on procedural shapes or an image folder,
//!   judged by FID / top-k / IoU, samples as image grids.
//! - [`chars`]: a character-level transformer language model on a text file or built-in integer sums,
//!   judged by held-out loss, bits per character and exact-match of greedy completions, samples as text.

pub mod chars;
pub mod shapes;
