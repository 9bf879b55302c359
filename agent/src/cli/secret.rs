//! `bramble secret create|list|rm` (being written).

#[derive(clap::Subcommand, Debug)]
pub(crate) enum SecretCommand {}

pub(crate) async fn run(_: SecretCommand) -> anyhow::Result<()> {
    anyhow::bail!("not available in this build")
}
