//! `bramble doctor` (being written).

#[derive(clap::Args, Debug)]
pub(crate) struct DoctorArgs {}

pub(crate) async fn run(_: &DoctorArgs) -> anyhow::Result<()> {
    anyhow::bail!("bramble doctor is not available in this build")
}
