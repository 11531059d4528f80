//! Learning-rate schedule: linear warmup, then cosine decay to `end_lr × lr`.

/// Learning rate for optimizer step `step` (0-based) of `total`.
pub fn lr_at(step: usize, total: usize, base: f64, warmup: f64, end_mult: f64) -> f64 {
    let warm = (warmup * total as f64).round() as usize;
    if step < warm {
        return base * (step + 1) as f64 / warm as f64;
    }
    let span = total.saturating_sub(warm).max(1);
    let progress = ((step - warm) as f64 / span as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    base * (end_mult + (1.0 - end_mult) * cosine)
}

#[cfg(test)]
mod tests {
    use super::lr_at;

    #[test]
    fn warmup_then_cosine_to_end() {
        let (base, total) = (1.0, 100);
        assert!((lr_at(0, total, base, 0.1, 0.1) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, total, base, 0.1, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, total, base, 0.1, 0.1) - 1.0).abs() < 1e-12);
        let mid = lr_at(55, total, base, 0.1, 0.1);
        assert!(
            (mid - 0.55).abs() < 1e-9,
            "halfway through the decay: {mid}"
        );
        let last = lr_at(99, total, base, 0.1, 0.1);
        assert!(last > 0.1 && last < 0.11, "{last}");
        // Monotone after warmup.
        for s in 10..99 {
            assert!(lr_at(s + 1, total, base, 0.1, 0.1) <= lr_at(s, total, base, 0.1, 0.1));
        }
    }

    #[test]
    fn no_warmup() {
        assert_eq!(lr_at(0, 10, 2.0, 0.0, 0.5), 2.0);
    }
}
