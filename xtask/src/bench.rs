//! `cargo xtask bench KIND`: benchmarks (placeholder).

pub fn run(kind: &str) -> anyhow::Result<()> {
    anyhow::bail!("bench {kind:?}: not yet written")
}
