//! `kubectl-kadalu`: parses the command line, connects with the user's kubeconfig and
//! context, runs one command and exits with the documented code.

use std::io::Write;
use std::process::ExitCode;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use kubectl_kadalu::cli::{self, Command, GlobalOpts};
use kubectl_kadalu::commands;
use kubectl_kadalu::exit::{Error, Result};

/// The operator manifest this plugin version installs by default.
const BUILTIN_MANIFEST: &str = include_str!("../../manifests/operator.yaml");

async fn connect(g: &GlobalOpts) -> Result<Client> {
    let opts = KubeConfigOptions {
        context: g.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &g.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &opts).await
        }
        None => Config::from_kubeconfig(&opts).await,
    }
    .map_err(|e| Error::Config(e.to_string()))?;
    Client::try_from(config).map_err(Error::Api)
}

async fn run(cli: cli::Cli) -> Result<String> {
    let g = &cli.global;
    match &cli.command {
        Command::Completion(a) => {
            let mut cmd = <cli::Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, "kubectl-kadalu", &mut buf);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        Command::StorageAdd(a) if a.dry_run => commands::storage_add(None, g, a).await,
        Command::Install(a) if a.dry_run => {
            let text = manifest(a)?;
            commands::install(None, g, a, &text).await
        }
        other => {
            let c = connect(g).await?;
            match other {
                Command::StorageAdd(a) => commands::storage_add(Some(&c), g, a).await,
                Command::StorageList(a) => commands::storage_list(&c, g, a).await,
                Command::StorageRemove(a) => commands::storage_remove(&c, g, a).await,
                Command::Healinfo(a) => commands::healinfo(&c, g, a).await,
                Command::OptionSet(a) => commands::option_set(&c, g, a).await,
                Command::OptionReset(a) => commands::option_reset(&c, g, a).await,
                Command::Version => commands::version(&c, g).await,
                Command::Install(a) => {
                    let text = manifest(a)?;
                    commands::install(Some(&c), g, a, &text).await
                }
                Command::Logs(a) => commands::logs(&c, g, a).await,
                Command::Completion(_) => Ok(String::new()),
            }
        }
    }
}

fn manifest(a: &cli::InstallArgs) -> Result<String> {
    match &a.manifest {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| Error::Invalid(format!("reading manifest {}: {e}", p.display()))),
        None => Ok(BUILTIN_MANIFEST.to_string()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                kubectl_kadalu::exit::USAGE
            } else {
                0
            });
        }
    };
    if matches!(cli.command, Command::Version) && cli.global.output == cli::Output::Table {
        println!("kubectl-kadalu {}", env!("CARGO_PKG_VERSION"));
    }
    match run(cli).await {
        Ok(out) => {
            let _ = std::io::stdout().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
