//! `bramble list|describe|invoke|logs|rm|scale` (being written).

#[derive(clap::Subcommand, Debug)]
pub(crate) enum FunctionCommand {}

pub(crate) async fn run(_: FunctionCommand) -> anyhow::Result<()> {
    anyhow::bail!("not available in this build")
}
