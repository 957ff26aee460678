//! `herald bench`: the load generator (being written).

use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
