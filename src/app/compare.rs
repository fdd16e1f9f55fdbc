//! The Compare panel's logic: which checkpoints (or gate scales), the sampler settings, the grid sampled on a
//! worker with progress, the decoded image, the cell geometry and the A/B difference image.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, unbounded, Receiver};

use crate::eval::compare::{compare_grid, CompareRequest};
use crate::eval::grid::{GridDescription, RenderedGrid};
use crate::eval::sampler::SamplerConfig;

/// Most checkpoints (columns) a comparison takes.
pub const MAX_CHECKPOINTS: usize = 4;

/// What the user chose to compare and how to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareSettings {
    /// Checkpoint directories, one column each (2–4), or one with several gate scales.
    pub checkpoints: Vec<PathBuf>,
    /// Gate scales as typed, e.g. `0,0.5,1` (used with a single checkpoint).
    pub gate_scales_text: String,
    /// Euler steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// Guidance also drops the layout in its unconditional branch.
    pub guide_layout: bool,
    /// The t interval (1 = noise, 0 = image) where guidance applies.
    pub guidance_interval: [f64; 2],
    /// Sample with the EMA weights when present.
    pub use_ema: bool,
    /// Seed of the fixed noise and layouts.
    pub seed: u64,
    /// Rows (fixed inputs).
    pub rows: usize,
    /// Pixels per image pixel.
    pub scale: u32,
    /// A first column of the real held-out images the rows' layouts come from.
    pub real_images: bool,
}

impl Default for CompareSettings {
    fn default() -> Self {
        Self {
            checkpoints: Vec::new(),
            gate_scales_text: "0,0.5,1".to_string(),
            steps: 20,
            // The demo's evaluation sampler.
            guidance: 6.0,
            guide_layout: true,
            guidance_interval: [0.2, 0.8],
            use_ema: true,
            seed: 0,
            rows: 4,
            scale: 3,
            real_images: false,
        }
    }
}

impl CompareSettings {
    /// Samples the way `eval`'s evaluations do (sampler and seed), so the columns show what the run's evaluations
    /// scored.
    pub fn use_evaluation_of(&mut self, eval: &crate::config::EvalConfig) {
        let sampler = &eval.sampler;
        (self.steps, self.guidance, self.guide_layout, self.guidance_interval, self.use_ema) =
            (sampler.steps, sampler.guidance, sampler.guide_layout, sampler.guidance_interval, sampler.use_ema);
        self.seed = eval.seed;
    }
}

/// Parses `0, 0.5,1` into gate scales (finite, ≥ 0).
pub fn parse_gate_scales(text: &str) -> Result<Vec<f64>, String> {
    let mut scales = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let value: f64 = part.parse().map_err(|_| format!("gate scale `{part}` is not a number"))?;
        if !value.is_finite() || value < 0.0 {
            return Err(format!("gate scale `{part}` must be a finite number ≥ 0"));
        }
        scales.push(value);
    }
    if scales.is_empty() {
        return Err("give at least one gate scale, e.g. 0,0.5,1".to_string());
    }
    Ok(scales)
}

impl CompareSettings {
    /// The request for [`compare_grid`], or why the settings cannot run.
    pub fn request(&self) -> Result<CompareRequest, String> {
        let gate_scales = match self.checkpoints.len() {
            0 => return Err("choose a checkpoint first".to_string()),
            1 => parse_gate_scales(&self.gate_scales_text)?,
            n if n > MAX_CHECKPOINTS => {
                return Err(format!("compare at most {MAX_CHECKPOINTS} checkpoints ({n} chosen)"))
            }
            _ => Vec::new(),
        };
        if self.steps == 0 || self.rows == 0 {
            return Err("steps and rows must be > 0".to_string());
        }
        Ok(CompareRequest {
            checkpoints: self.checkpoints.clone(),
            gate_scales,
            seed: self.seed,
            count: self.rows,
            sampler: SamplerConfig {
                steps: self.steps,
                guidance: self.guidance,
                guide_layout: self.guide_layout,
                guidance_interval: self.guidance_interval,
                use_ema: self.use_ema,
                ..SamplerConfig::default()
            },
            scale: self.scale.max(1),
            real_images: self.real_images,
        })
    }
}

/// Where the cells of a grid image lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridGeometry {
    /// Columns.
    pub columns: usize,
    /// Rows.
    pub rows: usize,
    /// Side of a cell in pixels.
    pub cell_px: usize,
    /// Pixels between cells (and around them).
    pub gap_px: usize,
    /// Where the cells start (left of them the row labels, above them the column titles).
    pub origin_px: [usize; 2],
}

impl GridGeometry {
    /// The geometry of a `width_px`-wide grid described by `description`.
    pub fn of(description: &GridDescription, width_px: usize) -> Self {
        let columns = description.columns.len().max(1);
        let gap_px = description.gap_px as usize;
        let origin_px = description.origin_px.map(|v| v as usize);
        let cell_px = width_px.saturating_sub(origin_px[0] + (columns + 1) * gap_px) / columns;
        Self { columns, rows: description.rows.len(), cell_px, gap_px, origin_px }
    }

    /// Top-left pixel of cell (column, row).
    pub fn cell_origin(&self, column: usize, row: usize) -> [usize; 2] {
        let pitch = self.cell_px + self.gap_px;
        [self.origin_px[0] + self.gap_px + column * pitch, self.origin_px[1] + self.gap_px + row * pitch]
    }

    /// The cell under pixel (x, y), if any.
    pub fn cell_at(&self, x: f32, y: f32) -> Option<(usize, usize)> {
        if x < 0.0 || y < 0.0 {
            return None;
        }
        let pitch = (self.cell_px + self.gap_px) as f32;
        let column = ((x - (self.origin_px[0] + self.gap_px) as f32) / pitch).floor();
        let row = ((y - (self.origin_px[1] + self.gap_px) as f32) / pitch).floor();
        if column < 0.0 || row < 0.0 || column as usize >= self.columns || row as usize >= self.rows {
            return None;
        }
        Some((column as usize, row as usize))
    }
}

/// Crops cell (column, row) out of the grid.
pub fn crop_cell(image: &egui::ColorImage, geometry: &GridGeometry, column: usize, row: usize) -> egui::ColorImage {
    let [x0, y0] = geometry.cell_origin(column, row);
    let side = geometry.cell_px;
    let mut pixels = Vec::with_capacity(side * side);
    for y in 0..side {
        for x in 0..side {
            pixels.push(pixel(image, x0 + x, y0 + y));
        }
    }
    egui::ColorImage::new([side, side], pixels)
}

/// Column `column` of the grid (every row, below the titles), as an image one cell wide.
pub fn crop_column(image: &egui::ColorImage, geometry: &GridGeometry, column: usize) -> egui::ColorImage {
    let [x0, _] = geometry.cell_origin(column, 0);
    let top = geometry.origin_px[1];
    let width = geometry.cell_px;
    let height = image.size[1].saturating_sub(top);
    let mut pixels = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            pixels.push(pixel(image, x0 + x, top + y));
        }
    }
    egui::ColorImage::new([width, height], pixels)
}

/// |A − B| per pixel and channel of columns `a` and `b`, one cell wide and as tall as the grid.
pub fn difference_image(image: &egui::ColorImage, geometry: &GridGeometry, a: usize, b: usize) -> egui::ColorImage {
    let left = crop_column(image, geometry, a);
    let right = crop_column(image, geometry, b);
    let pixels = left
        .pixels
        .iter()
        .zip(&right.pixels)
        .map(|(p, q)| egui::Color32::from_rgb(p.r().abs_diff(q.r()), p.g().abs_diff(q.g()), p.b().abs_diff(q.b())))
        .collect();
    egui::ColorImage::new(left.size, pixels)
}

fn pixel(image: &egui::ColorImage, x: usize, y: usize) -> egui::Color32 {
    if x < image.size[0] && y < image.size[1] {
        image.pixels[y * image.size[0] + x]
    } else {
        egui::Color32::BLACK
    }
}

/// A finished comparison.
pub struct CompareResult {
    /// The labelled PNG of [`compare_grid`] (what *Save as PNG* writes).
    pub png: Vec<u8>,
    /// Column titles and row requests.
    pub description: GridDescription,
    /// The grid as shown: cells and row labels (the column titles are text above it).
    pub image: egui::ColorImage,
    /// Where its cells are.
    pub geometry: GridGeometry,
}

impl CompareResult {
    /// The window's view of a rendered grid: the image below its title strip (the panel writes the column
    /// titles itself, as text), with the row labels at the left.
    pub fn of(grid: RenderedGrid) -> Self {
        let [width, height] = [grid.image.width() as usize, grid.image.height() as usize];
        let top = (grid.description.origin_px[1] as usize).min(height);
        let rows = grid.image.as_raw().get(top * width * 3..).unwrap_or_default();
        let image = egui::ColorImage::from_rgb([width, height - top], rows);
        let mut geometry = GridGeometry::of(&grid.description, width);
        geometry.origin_px[1] = 0;
        Self { png: grid.png, description: grid.description, image, geometry }
    }
}

/// What a comparison gave: an image grid, or text samples side by side.
pub enum CompareOutcome {
    /// Sampled images.
    Grid(CompareResult),
    /// The checkpoints' saved text samples.
    Text(crate::eval::compare::TextComparison),
}

/// A comparison being sampled.
pub struct CompareJob {
    done: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    result: Receiver<Result<CompareOutcome, String>>,
}

impl CompareJob {
    /// Starts sampling `request` on a worker; it wakes `ctx` after each column and at the end.
    pub fn start(request: CompareRequest, ctx: &egui::Context) -> Result<Self, String> {
        let done = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(request.checkpoints.len().max(request.gate_scales.len())));
        let (tx, rx) = bounded(1);
        let (d, t, ctx) = (done.clone(), total.clone(), ctx.clone());
        std::thread::Builder::new()
            .name("compare".into())
            .spawn(move || {
                // A text task's checkpoints carry their samples: they are read, not sampled again.
                match crate::eval::compare::text_comparison(&request.checkpoints) {
                    Ok(Some(table)) => {
                        let _ = tx.send(Ok(CompareOutcome::Text(table)));
                        ctx.request_repaint();
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = tx.send(Err(format!("comparison failed: {e:#}")));
                        ctx.request_repaint();
                        return;
                    }
                }
                let device = match crate::train::select_device("auto") {
                    Ok(device) => device,
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                        ctx.request_repaint();
                        return;
                    }
                };
                let result = compare_grid(&request, &device, |n, of| {
                    d.store(n, Ordering::Relaxed);
                    t.store(of, Ordering::Relaxed);
                    ctx.request_repaint();
                })
                .map(|grid| CompareOutcome::Grid(CompareResult::of(grid)))
                .map_err(|e| format!("comparison failed: {e:#}"));
                let _ = tx.send(result);
                ctx.request_repaint();
            })
            .map_err(|e| format!("cannot start the comparison: {e}"))?;
        Ok(Self { done, total, result: rx })
    }

    /// (columns sampled, columns in all).
    pub fn progress(&self) -> (usize, usize) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }
}

/// A run's id and its sealed checkpoints: (name, directory).
pub type RunCheckpoints = (String, Vec<(String, PathBuf)>);

/// State of the Compare panel.
#[derive(Default)]
pub struct CompareState {
    /// What to compare.
    pub settings: CompareSettings,
    /// The running comparison.
    pub job: Option<CompareJob>,
    /// The last result.
    pub result: Option<CompareResult>,
    /// The last text comparison (a text task's checkpoints).
    pub text: Option<crate::eval::compare::TextComparison>,
    /// Why the last comparison failed.
    pub error: Option<String>,
    /// The zoomed cell (column, row).
    pub zoom: Option<(usize, usize)>,
    /// A/B flicker on.
    pub flicker: bool,
    /// Show |A − B| next to the grid.
    pub show_difference: bool,
    /// Column A of the flicker and difference.
    pub column_a: usize,
    /// Column B of the flicker and difference.
    pub column_b: usize,
    /// Textures made from the result (grid, difference for (a, b), zoomed cell, flicker columns).
    pub textures: CompareTextures,
    /// Checkpoints of every listed run, for the picker: (run id, [(checkpoint name, directory)]).
    pub available: Vec<RunCheckpoints>,
    available_for: Vec<(PathBuf, f64)>,
    available_rx: Option<Receiver<Vec<RunCheckpoints>>>,
}

/// Textures of the Compare panel (runtime only; remade when the result or the chosen columns change).
#[derive(Default)]
pub struct CompareTextures {
    /// The whole grid.
    pub grid: Option<egui::TextureHandle>,
    /// |A − B| and the (a, b) it was made for.
    pub difference: Option<((usize, usize), egui::TextureHandle)>,
    /// Columns A and B and the (a, b) they were made for.
    pub flicker: Option<((usize, usize), [egui::TextureHandle; 2])>,
    /// The zoomed cell and its (column, row).
    pub zoom: Option<((usize, usize), egui::TextureHandle)>,
}

impl CompareState {
    /// Starts sampling the current settings.
    pub fn generate(&mut self, ctx: &egui::Context) -> Result<(), String> {
        if self.job.is_some() {
            return Err("a comparison is already being sampled".to_string());
        }
        let request = self.settings.request()?;
        self.error = None;
        self.job = Some(CompareJob::start(request, ctx)?);
        Ok(())
    }

    /// Takes the worker's results.
    pub fn poll(&mut self) {
        if let Some(job) = &self.job {
            if let Ok(result) = job.result.try_recv() {
                self.job = None;
                match result {
                    Ok(CompareOutcome::Text(table)) => {
                        self.result = None;
                        self.text = Some(table);
                    }
                    Ok(CompareOutcome::Grid(result)) => {
                        self.text = None;
                        let columns = result.geometry.columns;
                        self.column_a = 0;
                        self.column_b = columns.saturating_sub(1).min(1);
                        self.zoom = None;
                        self.textures = CompareTextures::default();
                        self.result = Some(result);
                    }
                    Err(why) => self.error = Some(why),
                }
            }
        }
        if let Some(rx) = &self.available_rx {
            if let Ok(list) = rx.try_recv() {
                self.available = list;
                self.available_rx = None;
            }
        }
    }

    /// Lists the checkpoints of `runs` (each with the version of its state.json) on a worker when a run was
    /// added, removed or changed on disk.
    pub fn refresh_available(&mut self, runs: Vec<(PathBuf, f64)>, ctx: &egui::Context) {
        if runs == self.available_for || self.available_rx.is_some() {
            return;
        }
        self.available_for = runs.clone();
        let (tx, rx) = unbounded();
        self.available_rx = Some(rx);
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new().name("compare-list".into()).spawn(move || {
            let list = runs
                .iter()
                .filter_map(|(root, _)| {
                    let dir = crate::run::RunDir::open(root).ok()?;
                    let checkpoints =
                        dir.checkpoints().ok()?.into_iter().filter(|c| c.sealed).map(|c| (c.name, c.dir)).collect();
                    Some((dir.id(), checkpoints))
                })
                .collect();
            let _ = tx.send(list);
            ctx.request_repaint();
        });
        if spawned.is_err() {
            self.available_rx = None;
        }
    }

    /// Forgets the listed checkpoints so they are listed again (a run saved a new one).
    pub fn invalidate_available(&mut self) {
        self.available_for.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui::{Color32, ColorImage};

    fn geometry() -> GridGeometry {
        GridGeometry { columns: 2, rows: 1, cell_px: 2, gap_px: 1, origin_px: [0, 0] }
    }

    #[test]
    fn gate_scales_parse_and_reject_nonsense() {
        assert_eq!(parse_gate_scales("0, 0.5,1"), Ok(vec![0.0, 0.5, 1.0]));
        assert!(parse_gate_scales("0,x").unwrap_err().contains("`x`"));
        assert!(parse_gate_scales("-1").is_err());
        assert!(parse_gate_scales(" , ").is_err());
    }

    #[test]
    fn the_difference_image_is_the_absolute_difference_of_two_columns() {
        // Width 1 + 2 + 1 + 2 + 1 = 7, height 1 + 2 + 1 = 4.
        let mut pixels = vec![Color32::BLACK; 7 * 4];
        for y in 1..3 {
            pixels[y * 7 + 1] = Color32::from_rgb(200, 10, 50);
            pixels[y * 7 + 2] = Color32::from_rgb(100, 100, 100);
            pixels[y * 7 + 4] = Color32::from_rgb(50, 30, 50);
            pixels[y * 7 + 5] = Color32::from_rgb(100, 100, 100);
        }
        let image = ColorImage::new([7, 4], pixels);
        let diff = difference_image(&image, &geometry(), 0, 1);
        assert_eq!(diff.size, [2, 4]);
        assert_eq!(diff.pixels[2], Color32::from_rgb(150, 20, 0));
        assert_eq!(diff.pixels[3], Color32::from_rgb(0, 0, 0));
        assert_eq!(diff.pixels[0], Color32::BLACK, "the gaps are equal: no difference");
    }

    #[test]
    fn one_checkpoint_means_one_column_per_gate_scale() {
        let mut settings = CompareSettings::default();
        assert!(settings.request().is_err(), "nothing chosen");
        settings.checkpoints = vec![PathBuf::from("a")];
        assert_eq!(settings.request().map(|r| r.gate_scales), Ok(vec![0.0, 0.5, 1.0]));
        settings.checkpoints.push(PathBuf::from("b"));
        assert_eq!(settings.request().map(|r| r.gate_scales), Ok(vec![]), "several checkpoints: scales unused");
        settings.checkpoints.extend(["c", "d", "e"].map(PathBuf::from));
        assert!(settings.request().unwrap_err().contains("at most 4"));
    }

    #[test]
    fn cells_are_found_under_the_pointer() {
        let g = geometry();
        assert_eq!(g.cell_at(1.5, 1.5), Some((0, 0)));
        assert_eq!(g.cell_at(4.2, 2.0), Some((1, 0)));
        assert_eq!(g.cell_at(7.5, 2.0), None);
        assert_eq!(g.cell_origin(1, 0), [4, 1]);
        let d = GridDescription {
            columns: vec!["a".into(), "b".into()],
            rows: vec![],
            scale: 1,
            gap_px: 1,
            origin_px: [0, 0],
        };
        assert_eq!(GridGeometry::of(&d, 7).cell_px, 2);
        // With labels left of the cells and titles above them, the cells move by the origin.
        let labelled = GridGeometry { origin_px: [10, 5], ..g };
        assert_eq!(labelled.cell_origin(1, 0), [14, 6]);
        assert_eq!(labelled.cell_at(1.5, 1.5), None, "the labels are no cell");
        assert_eq!(labelled.cell_at(14.5, 6.5), Some((1, 0)));
        let d = GridDescription { origin_px: [10, 5], ..d };
        assert_eq!(GridGeometry::of(&d, 17).cell_px, 2);
    }
}
