//! `cargo xtask demo`: the end-to-end demo (placeholder).

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("not yet written")
}
