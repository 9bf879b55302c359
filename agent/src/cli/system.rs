//! `bramble install` / `bramble uninstall` (being written).

#[derive(clap::Args, Debug)]
pub(crate) struct InstallArgs {}

#[derive(clap::Args, Debug)]
pub(crate) struct UninstallArgs {}

pub(crate) fn install(_: &InstallArgs) -> anyhow::Result<()> {
    anyhow::bail!("bramble install is not available in this build")
}

pub(crate) fn uninstall(_: &UninstallArgs) -> anyhow::Result<()> {
    anyhow::bail!("bramble uninstall is not available in this build")
}
