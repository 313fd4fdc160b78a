//! `kadalu-operator`: runs the controller, or prints the CRD.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Kubernetes operator for kadalu pools")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the KadaluStorage CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.cmd {
        Cmd::Crd => {
            print!("{}", kadalu_operator::crd::crd_yaml()?);
        }
    }
    Ok(())
}
