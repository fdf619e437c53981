use clap::Args;

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: ListArgs) -> anyhow::Result<i32> {
    anyhow::bail!("list: being wired")
}
