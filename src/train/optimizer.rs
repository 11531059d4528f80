//! Optimizers for the soft prompt, on the host in float32 (the prompt is at most a few
//! hundred thousand numbers: a device round trip per step costs nothing next to the model).
//!
//! AdamW follows `torch.optim.AdamW` (decoupled weight decay, bias correction, β = (0.9,
//! 0.999), ε = 1e-8). Adafactor follows transformers' `Adafactor` with an explicit learning
//! rate (`scale_parameter=False, relative_step=False, warmup_init=False`): factored second
//! moment for the 2-D prompt, decay rate −0.8, ε = (1e-30, 1e-3), update clipping at RMS 1.

use crate::config::OptimizerKind;

#[derive(Debug, Clone, PartialEq)]
pub enum OptState {
    AdamW { m: Vec<f32>, v: Vec<f32> },
    Adafactor { row: Vec<f32>, col: Vec<f32> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    pub weight_decay: f32,
    /// Steps taken so far.
    pub t: u64,
    pub rows: usize,
    pub cols: usize,
    pub state: OptState,
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const ADAM_EPS: f32 = 1e-8;
const AF_EPS1: f32 = 1e-30;
const AF_DECAY: f32 = -0.8;
const AF_CLIP: f32 = 1.0;

impl Optimizer {
    pub fn new(kind: OptimizerKind, weight_decay: f64, rows: usize, cols: usize) -> Self {
        let state = match kind {
            OptimizerKind::AdamW => OptState::AdamW {
                m: vec![0.0; rows * cols],
                v: vec![0.0; rows * cols],
            },
            OptimizerKind::Adafactor => OptState::Adafactor {
                row: vec![0.0; rows],
                col: vec![0.0; cols],
            },
        };
        Self {
            kind,
            weight_decay: weight_decay as f32,
            t: 0,
            rows,
            cols,
            state,
        }
    }

    /// One update of `p` with gradient `g` at learning rate `lr`.
    pub fn step(&mut self, p: &mut [f32], g: &[f32], lr: f64) {
        self.t += 1;
        let lr = lr as f32;
        let t = self.t as i32;
        match &mut self.state {
            OptState::AdamW { m, v } => {
                let bc1 = 1.0 - BETA1.powi(t);
                let bc2 = 1.0 - BETA2.powi(t);
                let step_size = lr / bc1;
                let bc2_sqrt = bc2.sqrt();
                for i in 0..p.len() {
                    p[i] *= 1.0 - lr * self.weight_decay;
                    m[i] = BETA1 * m[i] + (1.0 - BETA1) * g[i];
                    v[i] = BETA2 * v[i] + (1.0 - BETA2) * g[i] * g[i];
                    let denom = v[i].sqrt() / bc2_sqrt + ADAM_EPS;
                    p[i] -= step_size * m[i] / denom;
                }
            }
            OptState::Adafactor { row, col } => {
                let (r, c) = (self.rows, self.cols);
                let beta2 = 1.0 - (self.t as f32).powf(AF_DECAY);
                // Row and column means of g² + ε₁.
                let mut row_mean = vec![0f32; r];
                let mut col_mean = vec![0f32; c];
                for i in 0..r {
                    for j in 0..c {
                        let u = g[i * c + j] * g[i * c + j] + AF_EPS1;
                        row_mean[i] += u;
                        col_mean[j] += u;
                    }
                }
                for x in &mut row_mean {
                    *x /= c as f32;
                }
                for x in &mut col_mean {
                    *x /= r as f32;
                }
                for i in 0..r {
                    row[i] = beta2 * row[i] + (1.0 - beta2) * row_mean[i];
                }
                for j in 0..c {
                    col[j] = beta2 * col[j] + (1.0 - beta2) * col_mean[j];
                }
                let row_avg = row.iter().sum::<f32>() / r as f32;
                let mut update = vec![0f32; r * c];
                let mut sq = 0f32;
                for i in 0..r {
                    let rf = 1.0 / (row[i] / row_avg).sqrt();
                    for j in 0..c {
                        let cf = 1.0 / col[j].sqrt();
                        let u = rf * cf * g[i * c + j];
                        update[i * c + j] = u;
                        sq += u * u;
                    }
                }
                let rms = (sq / (r * c) as f32).sqrt();
                let scale = lr / (rms / AF_CLIP).max(1.0);
                for i in 0..p.len() {
                    if self.weight_decay != 0.0 {
                        p[i] -= self.weight_decay * lr * p[i];
                    }
                    p[i] -= update[i] * scale;
                }
            }
        }
    }

    /// The state as named float32 vectors (for checkpoints).
    pub fn tensors(&self) -> Vec<(&'static str, Vec<usize>, &[f32])> {
        match &self.state {
            OptState::AdamW { m, v } => vec![
                ("adamw.m", vec![self.rows, self.cols], m.as_slice()),
                ("adamw.v", vec![self.rows, self.cols], v.as_slice()),
            ],
            OptState::Adafactor { row, col } => vec![
                ("adafactor.row", vec![self.rows], row.as_slice()),
                ("adafactor.col", vec![self.cols], col.as_slice()),
            ],
        }
    }
}

/// Global L2 norm.
pub fn l2_norm(g: &[f32]) -> f64 {
    g.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

/// Scales `g` so its norm is at most `max_norm` (as `torch.nn.utils.clip_grad_norm_`).
/// Returns the norm before clipping.
pub fn clip_grad_norm(g: &mut [f32], max_norm: f64) -> f64 {
    let norm = l2_norm(g);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for x in g.iter_mut() {
            *x = (*x as f64 * coef) as f32;
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adamw_first_step_moves_by_lr() {
        // With bias correction the first Adam step is lr·sign(g) (plus decay).
        let mut o = Optimizer::new(OptimizerKind::AdamW, 0.0, 1, 3);
        let mut p = vec![1.0f32, 1.0, 1.0];
        o.step(&mut p, &[0.5, -2.0, 1e-3], 0.01);
        for (x, want) in p.iter().zip([0.99f32, 1.01, 0.99]) {
            assert!((x - want).abs() < 1e-5, "{x} vs {want}");
        }
    }

    #[test]
    fn adamw_decays_weights() {
        let mut o = Optimizer::new(OptimizerKind::AdamW, 0.1, 1, 1);
        let mut p = vec![2.0f32];
        o.step(&mut p, &[0.0], 0.5);
        assert!((p[0] - 2.0 * (1.0 - 0.05)).abs() < 1e-6);
    }

    #[test]
    fn adafactor_descends_a_quadratic() {
        let mut o = Optimizer::new(OptimizerKind::Adafactor, 0.0, 2, 3);
        let mut p = vec![1.0f32, -2.0, 0.5, 3.0, -1.0, 2.0];
        let f = |p: &[f32]| p.iter().map(|x| x * x).sum::<f32>();
        let start = f(&p);
        for _ in 0..50 {
            let g: Vec<f32> = p.iter().map(|x| 2.0 * x).collect();
            o.step(&mut p, &g, 0.05);
        }
        assert!(f(&p) < start * 0.5, "{} -> {}", start, f(&p));
    }

    #[test]
    fn clipping_caps_the_norm() {
        let mut g = vec![3.0f32, 4.0];
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-9);
        assert!((l2_norm(&g) - 1.0).abs() < 1e-5);
        let mut small = vec![0.3f32, 0.4];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }
}
